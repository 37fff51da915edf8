"""The DICOM port under attack (issue 19): oversized PDU headers, half-open sockets, AE titles, the disk reserve.

The node is the real SCP (start_scp / run_scp) on loopback with SQLite; peers are DCMTK's storescu / echoscu, a
pynetdicom requestor and raw sockets. 127.0.0.2 is a second allowed address (loopback has the whole 127/8)."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pynetdicom import AE

from service.config import Config
from service.db.engine import make_engine
from service.db.migrate import upgrade
from service.receive.limits import A_ABORT_INVALID_PARAMETER
from service.receive.scp import run_scp, start_scp
from tests.integration.dicom_net_support import echoscu, node_config, storescu, write_series
from tests.support.net import established_inodes, free_port, sockets_held
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

PEERS = [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 4242},
         {"name": "other", "ae_title": "OTHER", "host": "127.0.0.2", "port": 4242}]
MIB = 1024 * 1024


@dataclass
class Node:
    config: Config
    port: int


def _start(tmp_path: Path, extra: dict[str, Any] | None = None, **node: Any) -> Iterator[Node]:
    port = free_port()
    config = node_config(tmp_path, port=port, peers=PEERS, extra=extra)
    if node:
        config = config.with_node(**node)
    upgrade(config.node.database_url)
    engine = make_engine(config.node.database_url)
    server = start_scp(config, engine)
    try:
        yield Node(config, port)
    finally:
        server.shutdown()
        engine.dispose()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    yield from _start(tmp_path)


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _store_status(path: Path, port: int, *, calling_ae: str = "PACS") -> int | None:
    ds = dcmread(path)
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="BMDNODE")
    if not assoc.is_established:
        return None
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    return int(status.Status) if "Status" in status else None


def _stream_until_closed(sock: socket.socket, header: bytes, limit_s: float = 5.0) -> float:
    """Send ``header`` then zeros as fast as loopback takes them; seconds until the node closed the connection."""
    chunk = bytes(MIB)
    started = time.monotonic()
    try:
        sock.sendall(header)
        while time.monotonic() - started < limit_s:
            sock.sendall(chunk)
    except OSError:
        return time.monotonic() - started
    return float("inf")


def test_a_4_gib_data_pdu_after_association_is_aborted_within_1_s_without_buffering(node: Node) -> None:
    ae = AE(ae_title="PACS")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", node.port, ae_title="BMDNODE")
    assert assoc.is_established
    rss_before = _rss_bytes()
    elapsed = _stream_until_closed(assoc.dul.socket.socket, struct.pack(">BBL", 0x04, 0, 0xFFFFFFFF))
    assert elapsed < 1.0
    assert _rss_bytes() - rss_before < 50 * MIB
    assoc.abort()


def test_a_4_gib_association_request_is_aborted_within_1_s(node: Node) -> None:
    with socket.create_connection(("127.0.0.1", node.port)) as sock:
        rss_before = _rss_bytes()
        sock.sendall(struct.pack(">BBL", 0x01, 0, 0xFFFFFFFF))
        sock.settimeout(1.0)
        assert sock.recv(100) == A_ABORT_INVALID_PARAMETER
        assert sock.recv(100) == b""
        assert _rss_bytes() - rss_before < 50 * MIB


def test_50_half_open_sockets_from_one_address_do_not_lock_out_another(node: Node, tmp_path: Path) -> None:
    files = write_series(tmp_path / "series", 2)
    held: list[socket.socket] = []
    try:
        for _ in range(50):
            sock = socket.create_connection(("127.0.0.1", node.port), source_address=("127.0.0.2", 0))
            sock.sendall(b"\x01\x00\x00")  # 3 bytes of a PDU header, then nothing
            held.append(sock)
        started = time.monotonic()
        result = storescu(files, port=node.port, calling_ae="PACS", timeout_s=30)
        assert result.returncode == 0 and "0xa700" not in result.stderr.lower(), result.stderr
        assert time.monotonic() - started < 5.0
        closed = 0
        for sock in held:  # all but max_connections_per_address (8) were closed right after accept
            sock.settimeout(0.05)
            try:
                closed += sock.recv(10) == b""
            except TimeoutError:
                pass  # still held open by the node
            except ConnectionResetError:
                closed += 1
        assert closed >= 50 - node.config.node.max_connections_per_address
    finally:
        for sock in held:
            sock.close()


def test_a_half_open_socket_is_closed_at_the_association_request_deadline(tmp_path: Path) -> None:
    for node in _start(tmp_path, association_request_timeout_seconds=1.0):
        with socket.create_connection(("127.0.0.1", node.port)) as sock:
            sock.sendall(b"\x01\x00\x00")
            started = time.monotonic()
            sock.settimeout(5.0)
            assert sock.recv(100) == b""
            assert 0.8 < time.monotonic() - started < 2.5


def test_a_wrong_called_ae_title_is_refused(node: Node, tmp_path: Path) -> None:
    echo = echoscu(port=node.port, calling_ae="PACS", called_ae="NOTME")
    assert echo.returncode != 0
    assert "called ae title not recognized" in (echo.stdout + echo.stderr).lower()
    assert storescu(write_series(tmp_path / "s", 1), port=node.port, calling_ae="PACS",
                    called_ae="NOTME").returncode != 0
    assert echoscu(port=node.port, calling_ae="PACS").returncode == 0


def test_the_called_ae_check_can_be_switched_off(tmp_path: Path) -> None:
    for node in _start(tmp_path, check_called_ae=False):
        assert echoscu(port=node.port, calling_ae="PACS", called_ae="NOTME").returncode == 0


def test_the_calling_ae_title_must_match_exactly(node: Node, tmp_path: Path) -> None:
    (path,) = write_series(tmp_path / "s", 1)
    assert _store_status(path, node.port, calling_ae=" PACS") is None
    assert _store_status(path, node.port, calling_ae="PACS") == 0


def test_disk_under_the_configured_reserve_answers_a700(tmp_path: Path) -> None:
    free_mb = shutil.disk_usage(tmp_path).free // MIB
    for node in _start(tmp_path, extra={"storage": {"min_free_mb": free_mb + 1024}}):
        (path,) = write_series(tmp_path / "s", 1)
        assert _store_status(path, node.port) == 0xA700
        assert not list((tmp_path / "storage").rglob("*.dcm"))


def _node_side_owners(port: int) -> list[int]:
    """The pid of the process holding the node's end of each established connection to ``port`` (this process or
    one of its receiver processes)."""
    inodes = established_inodes(port)
    pids = [os.getpid(), *(int(child.pid) for child in multiprocessing.active_children() if child.pid)]
    return [pid for pid in pids for _ in range(sockets_held(pid, inodes))]


def run_scp_until_ready(config: Config, engine: Any, stop: threading.Event) -> threading.Thread:
    """``run_scp`` in a thread, returned once every receiver process accepts connections."""
    ready = threading.Event()
    thread = threading.Thread(target=run_scp, args=(config, engine, stop, ready), daemon=True)
    thread.start()
    assert ready.wait(60), "the receiver processes did not start"
    return thread


def test_every_receiver_process_takes_its_share_and_enforces_the_pdu_limit(tmp_path: Path) -> None:
    """Three connections open at once land on three processes (each process with more open connections than the
    least busy one leaves a new connection to it), and each process aborts a 4 GiB PDU."""
    port = free_port()
    config = node_config(tmp_path, port=port, peers=PEERS).with_node(receive_processes=3)
    upgrade(config.node.database_url)
    engine = make_engine(config.node.database_url)
    stop = threading.Event()
    thread = run_scp_until_ready(config, engine, stop)
    sockets: list[socket.socket] = []
    try:
        for _ in range(3):
            sockets.append(socket.create_connection(("127.0.0.1", port)))
            time.sleep(0.2)
        wait_until(lambda: len(_node_side_owners(port)) == 3, "the node's end of 3 connections", timeout_s=10)
        owners = _node_side_owners(port)
        assert len(set(owners)) == 3, owners
        for sock in sockets:
            sock.sendall(struct.pack(">BBL", 0x01, 0, 0xFFFFFFFF))
            sock.settimeout(5.0)
            assert sock.recv(100) == A_ABORT_INVALID_PARAMETER
    finally:
        for sock in sockets:
            sock.close()
        stop.set()
        thread.join(timeout=60)
        engine.dispose()


def _ended(assoc: Any) -> bool:
    return not assoc.is_established


def test_an_idle_established_association_is_aborted_at_the_idle_timeout(tmp_path: Path) -> None:
    for node in _start(tmp_path, idle_timeout_seconds=1.0):
        ae = AE(ae_title="PACS")
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", node.port, ae_title="BMDNODE")
        assert assoc.is_established
        started = time.monotonic()
        wait_until(partial(_ended, assoc), "the node to end the idle association", timeout_s=10.0)
        assert 0.8 < time.monotonic() - started < 4.0
        assert assoc.is_aborted
