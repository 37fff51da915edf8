"""The transport guards of the DICOM port (service/receive/limits.py) on a real socket pair: PDU length checked in
the 6-byte header before any body is read, read deadlines, raw AE titles, connection slots."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from service.receive.limits import A_ABORT_INVALID_PARAMETER, ConnectionSlots, GuardedSocket
from service.receive.settings import NetworkLimits


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    node_side, peer_side = socket.socketpair()
    yield node_side, peer_side
    node_side.close()
    peer_side.close()


def _guarded(sock: socket.socket, **limits: float) -> GuardedSocket:
    guarded = GuardedSocket.__new__(GuardedSocket)  # the recv path only needs the socket and the limits
    guarded.socket = sock
    guarded.guard(NetworkLimits(**limits), "192.0.2.7")  # type: ignore[arg-type]
    return guarded


def _read_until_eof(sock: socket.socket, timeout_s: float = 2.0) -> bytes:
    sock.settimeout(timeout_s)
    out = b""
    while chunk := sock.recv(4096):
        out += chunk
    return out


def _associate_rq_body(called: bytes, calling: bytes) -> bytes:
    return b"\x00\x01\x00\x00" + called.ljust(16) + calling.ljust(16) + bytes(32)


@pytest.mark.parametrize(("pdu_type", "length"), [(0x04, 0xFFFFFFFF), (0x01, 0xFFFFFFFF), (0x01, 100_000),
                                                   (0x04, 2 * 1024 * 1024)])
def test_an_oversized_pdu_header_is_aborted_before_its_body_is_read(
        pair: tuple[socket.socket, socket.socket], pdu_type: int, length: int) -> None:
    node_side, peer_side = pair
    guarded = _guarded(node_side)
    peer_side.sendall(struct.pack(">BBL", pdu_type, 0, length) + b"x" * 1000)
    started = time.monotonic()
    assert guarded.recv(6) == bytearray()  # pynetdicom reads this as "transport connection closed"
    assert _read_until_eof(peer_side) == A_ABORT_INVALID_PARAMETER
    assert time.monotonic() - started < 1.0


def test_pdus_within_the_limits_pass_and_the_raw_ae_titles_are_kept(pair: tuple[socket.socket, socket.socket]) -> None:
    node_side, peer_side = pair
    guarded = _guarded(node_side)
    body = _associate_rq_body(b"BMDNODE", b" TESTSCU")
    peer_side.sendall(struct.pack(">BBL", 0x01, 0, len(body)) + body)
    header = guarded.recv(6)
    assert bytes(guarded.recv(struct.unpack(">BBL", header)[2])) == body
    assert (guarded.raw_called_ae, guarded.raw_calling_ae) == ("BMDNODE", " TESTSCU")
    data = struct.pack(">BBL", 0x04, 0, 1024 * 1024 + 6) + bytes(1024 * 1024 + 6)  # a full 1 MiB PDV
    threading.Thread(target=peer_side.sendall, args=(data,), daemon=True).start()
    assert len(guarded.recv(6)) == 6
    assert len(guarded.recv(1024 * 1024 + 6)) == 1024 * 1024 + 6


def test_a_half_sent_association_request_is_closed_at_its_deadline(pair: tuple[socket.socket, socket.socket]) -> None:
    node_side, peer_side = pair
    guarded = _guarded(node_side, association_request_timeout_seconds=0.5)
    peer_side.sendall(b"\x01\x00\x00")
    started = time.monotonic()
    assert len(guarded.recv(6)) < 6
    assert 0.4 < time.monotonic() - started < 1.5
    assert _read_until_eof(peer_side) == b""


def test_the_deadline_counts_from_accept_not_from_each_read(pair: tuple[socket.socket, socket.socket]) -> None:
    node_side, peer_side = pair
    guarded = _guarded(node_side, association_request_timeout_seconds=1.0)

    def drip() -> None:  # one byte every 0.3 s: each read makes progress, the whole request never arrives in time
        for byte in struct.pack(">BBL", 0x01, 0, 68) + bytes(68):
            try:
                peer_side.send(bytes([byte]))
            except OSError:
                return
            time.sleep(0.3)

    threading.Thread(target=drip, daemon=True).start()
    started = time.monotonic()
    header = guarded.recv(6)
    body = guarded.recv(68) if len(header) == 6 else bytearray()
    assert len(header) + len(body) < 74
    assert time.monotonic() - started < 1.6


def test_connection_slots_per_address_and_in_all() -> None:
    slots = ConnectionSlots(per_address=2, total=3)
    assert slots.acquire("10.0.0.1") and slots.acquire("10.0.0.1")
    assert not slots.acquire("10.0.0.1")
    assert slots.acquire("10.0.0.2")
    assert not slots.acquire("10.0.0.3")  # the overall cap
    slots.release("10.0.0.1")
    assert slots.acquire("10.0.0.3")
    assert slots.open_count() == 3 and slots.open_count("10.0.0.1") == 1
