"""Limits of the DICOM port, enforced in the transport before pynetdicom buffers anything (every receiver process).

* ``ConnectionSlots``: at most ``max_connections_per_address`` open connections from one IP address and
  ``max_connections`` in all, counted from accept() (the check runs in the accept loop, after accept) until the
  association's thread ends. A refused connection is closed at once, before any byte of it is read. The counts are
  per receiver process: each process enforces the limits on the connections the kernel gives it.
* ``GuardedSocket`` (pynetdicom's association socket, via ``BulkRecvSocket``): pynetdicom reads every PDU as a
  6-byte header, then ``recv(length)``. The header is checked as it arrives: a P-DATA-TF longer than
  ``max_pdu_bytes`` (the Maximum Length we announce, plus the PDV item headers) or any other PDU longer than
  ``max_request_pdu_bytes`` is answered with A-ABORT (service-provider, invalid PDU parameter value) and the
  connection is shut down; nothing of its body is read or allocated. Reads have deadlines: until the whole first PDU
  (the A-ASSOCIATE-RQ) has arrived, ``association_request_timeout_seconds`` from accept() in all; after it, a PDU
  that has started may stall at most ``idle_timeout_seconds`` between two reads. pynetdicom's own timers cover the
  silent cases: ARTIM (acse_timeout, = the association request deadline) for a connection that sends nothing, and
  ``network_timeout`` (= idle timeout) for an established association with no PDU.
* The raw AE titles of the A-ASSOCIATE-RQ are kept (pynetdicom strips leading spaces too), so that the calling AE
  title is matched exactly (service/receive/scp.py).
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from collections import Counter
from typing import Any, cast

from pynetdicom.association import Association

from service.receive.latency import BulkRecvSocket, LowLatencyRequestHandler, QueueWaitAssociation
from service.receive.settings import NetworkLimits
from service.receive.tls import fingerprint, handshake

logger = logging.getLogger(__name__)

PDU_HEADER_BYTES = 6
A_ASSOCIATE_RQ, P_DATA_TF = 0x01, 0x04
PDV_HEADERS_SLACK_BYTES = 64
"""A P-DATA-TF's length counts its PDV items' 4-byte length fields and 2-byte headers on top of the data."""
# A-ABORT PDU: type 07, reserved, length 4, reserved, reserved, source 2 (service-provider), reason 6 (invalid PDU
# parameter value) (PS3.8 9.3.8).
A_ABORT_INVALID_PARAMETER = bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 2, 6])
AE_TITLE_BYTES = 16
CALLED_AE_OFFSET, CALLING_AE_OFFSET = 4, 20
"""Offsets of the AE titles in an A-ASSOCIATE-RQ body (after the 6-byte header: version 2 bytes, reserved 2)."""


def raw_ae_title(field: bytes) -> str:
    """An AE title field as sent: trailing padding (spaces, NULs) removed, leading spaces kept."""
    return field.decode("ascii", errors="replace").rstrip(" \x00")


class ConnectionSlots:
    """Open connections per address and in all (thread-safe)."""

    def __init__(self, per_address: int, total: int) -> None:
        self.per_address = per_address
        self.total = total
        self._open: Counter[str] = Counter()
        self._lock = threading.Lock()

    def acquire(self, address: str) -> bool:
        with self._lock:
            if self._open[address] >= self.per_address:
                reason = f"{self.per_address} connections from this address already open"
            elif sum(self._open.values()) >= self.total:
                reason = f"{self.total} connections already open"
            else:
                self._open[address] += 1
                return True
        logger.warning("connection from %s refused: %s", address, reason)
        return False

    def release(self, address: str) -> None:
        with self._lock:
            self._open[address] -= 1
            if self._open[address] <= 0:
                del self._open[address]

    def open_count(self, address: str | None = None) -> int:
        with self._lock:
            return self._open[address] if address is not None else sum(self._open.values())


class GuardedSocket(BulkRecvSocket):
    """The association socket with the PDU length check and the read deadlines (module doc)."""

    limits: NetworkLimits
    accepted_monotonic: float
    peer_address: str
    expect_header: bool
    first_pdu_read: bool
    first_pdu_type: int
    raw_called_ae: str | None
    raw_calling_ae: str | None
    tls_fingerprint: str | None = None
    """SHA-256 of the client's TLS certificate, when one was required (service/receive/tls.py)."""

    def guard(self, limits: NetworkLimits, peer_address: str, accepted_monotonic: float | None = None) -> None:
        self.limits = limits
        self.peer_address = peer_address
        self.accepted_monotonic = time.monotonic() if accepted_monotonic is None else accepted_monotonic
        self.expect_header = True
        self.first_pdu_read = False
        self.first_pdu_type = 0
        self.raw_called_ae = None
        self.raw_calling_ae = None

    def _read_timeout(self) -> float:
        if self.first_pdu_read:
            return self.limits.idle_timeout_seconds
        return self.accepted_monotonic + self.limits.association_request_timeout_seconds - time.monotonic()

    def _read(self, nr_bytes: int) -> bytearray:
        """Up to ``nr_bytes``; fewer when the peer closed or the deadline passed (pynetdicom then ends it)."""
        sock = cast(socket.socket, self.socket)
        buffer = bytearray(nr_bytes)
        view = memoryview(buffer)
        read = 0
        while read < nr_bytes:
            timeout = self._read_timeout()
            try:
                if timeout <= 0:
                    raise TimeoutError
                sock.settimeout(timeout)
                n = sock.recv_into(view[read:], nr_bytes - read)
            except TimeoutError:
                phase = "association request" if not self.first_pdu_read else "PDU"
                logger.warning("connection from %s closed: %s not received in time", self.peer_address, phase)
                self._shut(abort=False)
                n = 0
            except OSError:
                n = 0
            if not n:
                del view
                return buffer[:read]
            read += n
        return buffer

    def _shut(self, *, abort: bool) -> None:
        sock = cast(socket.socket, self.socket)
        try:
            if abort:
                sock.settimeout(1.0)
                sock.sendall(A_ABORT_INVALID_PARAMETER)
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _check_header(self, header: bytearray) -> bool:
        pdu_type, _, length = struct.unpack(">BBL", header)
        limit = (self.limits.max_pdu_bytes + PDV_HEADERS_SLACK_BYTES if pdu_type == P_DATA_TF
                 else self.limits.max_request_pdu_bytes)
        if length <= limit:
            self.first_pdu_type = self.first_pdu_type or pdu_type
            return True
        logger.warning("association from %s aborted: PDU type 0x%02X of %d bytes, over the limit of %d",
                       self.peer_address, pdu_type, length, limit)
        self._shut(abort=True)
        return False

    def recv(self, nr_bytes: int) -> bytearray:
        if self.expect_header and nr_bytes == PDU_HEADER_BYTES:
            header = self._read(nr_bytes)
            if len(header) < PDU_HEADER_BYTES or not self._check_header(header):
                return bytearray()  # pynetdicom: transport connection closed (Evt17), nothing more is read
            self.expect_header = False
            return header
        body = self._read(nr_bytes)
        self.expect_header = True
        if not self.first_pdu_read:
            self.first_pdu_read = True
            if self.first_pdu_type == A_ASSOCIATE_RQ and len(body) >= CALLING_AE_OFFSET + AE_TITLE_BYTES:
                self.raw_called_ae = raw_ae_title(bytes(body[CALLED_AE_OFFSET:CALLED_AE_OFFSET + AE_TITLE_BYTES]))
                self.raw_calling_ae = raw_ae_title(bytes(body[CALLING_AE_OFFSET:CALLING_AE_OFFSET + AE_TITLE_BYTES]))
        return body


class GuardedAssociation(QueueWaitAssociation):
    """Gives its connection slot back when its thread ends."""

    slot_release: Any = None

    def run(self) -> None:
        try:
            super().run()
        finally:
            release, self.slot_release = self.slot_release, None
            if release is not None:
                release()


class GuardedRequestHandler(LowLatencyRequestHandler):
    """The low-latency handler whose associations have the guarded socket, the node's timeouts and a slot
    (taken by the server's ``verify_request``) that their thread gives back."""

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        limits = cast(NetworkLimits, getattr(self.server, "limits", NetworkLimits()))
        address = str(self.client_address[0])
        assoc.__class__ = GuardedAssociation
        cast(GuardedAssociation, assoc).slot_release = self._release
        assoc.dul.socket.__class__ = GuardedSocket
        guarded = cast(GuardedSocket, assoc.dul.socket)
        guarded.guard(limits, address, getattr(self, "accepted_monotonic", None))
        guarded.tls_fingerprint = getattr(self, "tls_fingerprint", None)
        assoc.acse_timeout = limits.association_request_timeout_seconds
        assoc.network_timeout = limits.idle_timeout_seconds
        assoc.dimse_timeout = limits.dimse_timeout_seconds
        return assoc

    def _release(self) -> None:
        slots = getattr(self.server, "slots", None)
        if slots is not None:
            slots.release(str(self.client_address[0]))

    def _start_tls(self, context: Any) -> bool:
        """TLS handshake in this connection's thread, under the association request deadline; with
        ``require_client_certificate`` the certificate must be tied to a peer at this address."""
        limits = cast(NetworkLimits, getattr(self.server, "limits", NetworkLimits()))
        address = str(self.client_address[0])
        tls = handshake(self.request, context, limits.association_request_timeout_seconds, address)
        if tls is None:
            return False
        tied = getattr(self.server, "tls_fingerprints", None)
        if tied is not None:
            print_ = fingerprint(tls)
            if print_ is None or print_ not in tied.get(address, ()):
                logger.warning("TLS connection from %s refused: client certificate tied to no peer at that address",
                               address)
                tls.close()
                return False
            self.tls_fingerprint = print_
        self.request = tls
        return True

    def handle(self) -> None:
        self.accepted_monotonic = time.monotonic()
        context = getattr(self.server, "tls_context", None)
        if context is not None and not self._start_tls(context):
            self._release()
            return
        try:
            super().handle()
        except BaseException:
            self._release()  # the association thread never started: give the slot back here
            raise
