"""Limits of the DICOM port, enforced in the transport before pynetdicom buffers anything (every receiver process).

* ``ConnectionSlots``: at most ``max_connections_per_address`` open connections from one IP address and
  ``max_connections`` in all, counted from accept() (the check runs in the accept loop, after accept) until the
  connection is closed or the association's thread ends; and at most ``max_associations_per_peer`` (or the
  peer's ``max_associations``) associations of one ``[[peers]]`` entry, taken once its A-ASSOCIATE-RQ names it
  (service/receive/admission.py). A refused connection is closed at once, before any byte of it is read. The counts
  are shared by all receiver processes (service/receive/shared_limits.py), so the caps hold for the port, not per
  process.
* ``AssociationOutcome``: what became of each connection, counted once for /metrics (accepted, rejected with its
  reason; an accepted association the node ends for a limit also counts as aborted).
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
import queue
import socket
import struct
import threading
import time
from collections.abc import Mapping
from typing import Any, cast

from pynetdicom.association import Association

from service.receive.latency import BulkRecvSocket, LowLatencyRequestHandler, QueueWaitAssociation
from service.receive.settings import NetworkLimits
from service.receive.shared_limits import ABORTED, ACCEPTED, REJECTED, SharedReceiveState
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


TRANSPORT_CLOSED = object()
"""Put on the DUL's queue for the association thread when the connection closes before its A-ASSOCIATE-RQ."""


def raw_ae_title(field: bytes) -> str:
    """An AE title field as sent: trailing padding (spaces, NULs) removed, leading spaces kept."""
    return field.decode("ascii", errors="replace").rstrip(" \x00")


class ConnectionSlots:
    """This process's row of the shared caps (thread- and process-safe); on its own (``shared`` None) a state of
    one process. Refusals are logged and counted."""

    def __init__(self, per_address: int, total: int, peer_caps: Mapping[str, int] | None = None, *,
                 shared: SharedReceiveState | None = None, row: int = 0) -> None:
        self.state = shared or SharedReceiveState(rows=1, per_address=per_address, total=total, peer_caps=peer_caps)
        self.row = row
        self.per_address, self.total = self.state.per_address, self.state.total

    def acquire(self, address: str) -> bool:
        reason = self.state.acquire_connection(self.row, address)
        if reason is None:
            return True
        limit = self.per_address if reason == "too_many_per_address" else self.total
        where = "from this address" if reason == "too_many_per_address" else "in all"
        logger.warning("connection from %s refused: %d connections %s already open", address, limit, where)
        self.count(REJECTED, reason)
        return False

    def release(self, address: str) -> None:
        self.state.release_connection(self.row, address)

    def acquire_peer(self, peer: str) -> bool:
        return self.state.acquire_peer(self.row, peer)

    def release_peer(self, peer: str) -> None:
        self.state.release_peer(self.row, peer)

    def open_count(self, address: str | None = None) -> int:
        """Open connections over all processes sharing the state."""
        return self.state.open_connections(address)

    def count(self, outcome: str, reason: str) -> None:
        self.state.count(outcome, reason)


class AssociationOutcome:
    """What became of one connection, counted once: accepted (``accepted_as``: peer or echo_only) or rejected with
    a reason; an accepted association the node ends for a limit counts as aborted too. Holds the association's
    peer slot (taken in EVT_REQUESTED) and its connection slot (``release_connection``), given back once the
    transport is closed (``transport_closed``) or the association's thread ends (``finish``), whichever is first:
    pynetdicom keeps the thread of a connection closed before its A-ASSOCIATE-RQ until the request deadline."""

    def __init__(self, slots: ConnectionSlots | None, release_connection: Any = None) -> None:
        self.slots = slots
        self.release_connection = release_connection
        self.accepted_as = "peer"
        self.peer: str | None = None
        self.outcome: str | None = None
        self.aborted = False
        self.woken = False
        self._lock = threading.Lock()

    def _count(self, outcome: str, reason: str) -> None:
        if self.slots is not None:
            self.slots.count(outcome, reason)

    def accept(self) -> None:
        with self._lock:
            if self.outcome is not None:
                return
            self.outcome = ACCEPTED
        self._count(ACCEPTED, self.accepted_as)

    def reject(self, reason: str) -> None:
        with self._lock:
            if self.outcome is not None:
                return
            self.outcome = REJECTED
        self._count(REJECTED, reason)

    def limit(self, before: str, after: str) -> None:
        """The node ends the connection for a limit: rejected (``before``) or, once accepted, aborted (``after``)."""
        with self._lock:
            if self.outcome == ACCEPTED and not self.aborted:
                self.aborted = True
                reason: tuple[str, str] | None = (ABORTED, after)
            elif self.outcome is None:
                self.outcome = REJECTED
                reason = (REJECTED, before)
            else:
                reason = None
        if reason is not None:
            self._count(*reason)

    def finish(self) -> None:
        """The association's thread ends: a connection that never got an answer counts as request_timeout (no
        complete A-ASSOCIATE-RQ in time, or the peer closed before one)."""
        if self.outcome is None:
            self.reject("request_timeout")
        self.transport_closed()

    def transport_closed(self) -> None:
        """Give the peer and connection slots back (once)."""
        with self._lock:
            peer, self.peer = self.peer, None
            release, self.release_connection = self.release_connection, None
        if peer is not None and self.slots is not None:
            self.slots.release_peer(peer)
        if release is not None:
            release()


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
    outcome: AssociationOutcome | None = None
    _timeout_set: float | None = None

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
                if timeout != self._timeout_set:  # after the first PDU it stays the idle timeout: set once
                    sock.settimeout(timeout)
                    self._timeout_set = timeout
                n = sock.recv_into(view[read:], nr_bytes - read)
            except TimeoutError:
                phase = "association request" if not self.first_pdu_read else "PDU"
                logger.warning("connection from %s closed: %s not received in time", self.peer_address, phase)
                if self.outcome is not None:
                    self.outcome.limit("request_timeout", "idle_timeout")
                self._shut(abort=False)
                n = 0
            except OSError:
                n = 0
            if not n:
                self._closed()  # by the peer, or above
                del view
                return buffer[:read]
            read += n
        return buffer

    def _closed(self) -> None:
        """The connection is over: its slots go back now; before the A-ASSOCIATE-RQ the association thread is
        woken (GuardedAssociation.run) instead of waiting out the request deadline."""
        if self.outcome is None:
            return
        self.outcome.transport_closed()
        if not self.first_pdu_read and not self.outcome.woken:
            self.outcome.woken = True
            self.assoc.dul.to_user_queue.put(cast(Any, TRANSPORT_CLOSED))

    def _shut(self, *, abort: bool) -> None:
        self._closed()
        sock = cast(socket.socket, self.socket)
        try:
            if abort:
                sock.settimeout(1.0)
                self._timeout_set = 1.0
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
        if self.outcome is not None:
            self.outcome.limit("pdu_too_large", "pdu_too_large")
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
    """Counts its outcome and gives its peer and connection slots back (if its socket has not) when its thread
    ends."""

    outcome: AssociationOutcome | None = None

    def run(self) -> None:
        try:
            # the thread's target is pynetdicom's run_reactor (bound before the class was swapped); it finds the DUL
            # started and the A-ASSOCIATE-RQ waiting
            if not self.is_acceptor or self._started_dul or self._first_request_arrived():
                super().run()
        finally:
            if self.outcome is not None:
                self.outcome.finish()

    def _peer_finished(self) -> bool:
        idle = self.dul.idle_timer_expired()
        finished = super()._peer_finished()
        if finished and idle and self.is_aborted and self.outcome is not None:
            self.outcome.limit("request_timeout", "idle_timeout")  # pynetdicom's network timeout aborted it
        return finished

    def _first_request_arrived(self) -> bool:
        """pynetdicom's wait for the A-ASSOCIATE-RQ, except that a connection closed before it ends the thread at
        once: pynetdicom waits out the request deadline, so a connect-and-close loop would pile up threads."""
        self.dul.start()
        self._started_dul = True
        self._dul_ready.wait()
        try:
            primitive = self.dul.to_user_queue.get(timeout=self.acse_timeout)
        except queue.Empty:
            primitive = None
        if primitive is not None and primitive is not TRANSPORT_CLOSED:
            self.dul.to_user_queue.put(primitive)  # pynetdicom's reactor takes it from here
            return True
        self.kill()
        sock = self.dul.socket
        if self._server is not None and sock is not None and sock.socket is not None:
            self._server.shutdown_request(sock.socket)
        return False


class GuardedRequestHandler(LowLatencyRequestHandler):
    """The low-latency handler whose associations have the guarded socket, the node's timeouts and a slot
    (taken by the server's ``verify_request``) that their thread gives back."""

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        limits = cast(NetworkLimits, getattr(self.server, "limits", NetworkLimits()))
        address = str(self.client_address[0])
        assoc.__class__ = GuardedAssociation
        outcome = AssociationOutcome(getattr(self.server, "slots", None), self._release)
        cast(GuardedAssociation, assoc).outcome = outcome
        assoc.dul.socket.__class__ = GuardedSocket
        guarded = cast(GuardedSocket, assoc.dul.socket)
        guarded.guard(limits, address, getattr(self, "accepted_monotonic", None))
        guarded.outcome = outcome
        guarded.tls_fingerprint = getattr(self, "tls_fingerprint", None)
        assoc.acse_timeout = limits.association_request_timeout_seconds
        assoc.network_timeout = limits.idle_timeout_seconds
        assoc.dimse_timeout = limits.dimse_timeout_seconds
        return assoc

    def _release(self) -> None:
        slots = getattr(self.server, "slots", None)
        if slots is not None:
            slots.release(str(self.client_address[0]))

    def _count_rejected(self, reason: str) -> None:
        slots = getattr(self.server, "slots", None)
        if slots is not None:
            slots.count(REJECTED, reason)

    def _start_tls(self, context: Any) -> bool:
        """TLS handshake in this connection's thread, under the association request deadline; with
        ``require_client_certificate`` the certificate must be tied to a peer at this address."""
        limits = cast(NetworkLimits, getattr(self.server, "limits", NetworkLimits()))
        address = str(self.client_address[0])
        tls = handshake(self.request, context, limits.association_request_timeout_seconds, address)
        if tls is None:
            self._count_rejected("tls_handshake_failed")
            return False
        tied = getattr(self.server, "tls_fingerprints", None)
        if tied is not None:
            print_ = fingerprint(tls)
            if print_ is None or print_ not in tied.get(address, ()):
                logger.warning("TLS connection from %s refused: client certificate tied to no peer at that address",
                               address)
                tls.close()
                self._count_rejected("client_certificate_refused")
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
