"""The DICOM port's caps hold over all receiver processes (issue 19), and their association counters reach
/metrics (issue 20 pt 2).

The node is the real ``run_scp`` with ``receive_processes = 2`` (this process's SCP plus one spawned receiver
process accepting from the same listening socket; a process with more open connections leaves new ones to the
other). Peers are
DCMTK's storescu / echoscu, pynetdicom requestors and raw half-open sockets; 127.0.0.2 is a second allowed address
(loopback has the whole 127/8). /metrics is the node's collector rendered in the exposition format and read back
with prometheus_client's parser."""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pynetdicom import AE
from pynetdicom.association import Association

from service.config import Config
from service.db.engine import make_engine
from service.db.migrate import upgrade
from service.receive.limits import A_ABORT_INVALID_PARAMETER
from service.receive.scp import start_scp
from service.receive.shared_limits import publish, published
from service.web.association_metrics import AssociationCollector
from tests.integration.dicom_net_support import echoscu, node_config, storescu, write_series
from tests.integration.test_port_limits import _stream_until_closed, run_scp_until_ready
from tests.support.net import free_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

PER_ADDRESS = 4
PACS_MAX_ASSOCIATIONS = 2
PEERS = [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 4242,
          "max_associations": PACS_MAX_ASSOCIATIONS},
         {"name": "other", "ae_title": "OTHER", "host": "127.0.0.2", "port": 4242}]
VERIFICATION = "1.2.840.10008.1.1"


@dataclass
class Node:
    config: Config
    port: int
    tmp_path: Path


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    tmp_path = tmp_path_factory.mktemp("shared_limits")
    port = free_port()
    config = node_config(tmp_path, port=port, peers=PEERS).with_node(
        receive_processes=2, max_connections_per_address=PER_ADDRESS, association_request_timeout_seconds=60.0)
    upgrade(config.node.database_url)
    engine = make_engine(config.node.database_url)
    stop = threading.Event()
    thread = run_scp_until_ready(config, engine, stop)
    try:
        yield Node(config, port, tmp_path)
    finally:
        stop.set()
        thread.join(timeout=60)
        engine.dispose()


def _metrics() -> dict[tuple[str, str], float]:
    """bmd_node_associations_total by (outcome, reason), as Prometheus would read it."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AssociationCollector())
    text = generate_latest(registry).decode()
    (family,) = [f for f in text_string_to_metric_families(text) if f.name == "bmd_node_associations"]
    assert family.type == "counter"
    return {(s.labels["outcome"], s.labels["reason"]): s.value for s in family.samples
            if s.name == "bmd_node_associations_total"}


def _changes(before: dict[tuple[str, str], float]) -> dict[tuple[str, str], float]:
    return {key: value - before[key] for key, value in _metrics().items() if value != before[key]}


def _half_open(port: int, count: int, source: str = "127.0.0.2") -> list[socket.socket]:
    held = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), source_address=(source, 0))
        sock.sendall(b"\x01\x00\x00")  # 3 bytes of a PDU header, then nothing
        held.append(sock)
    return held


def _closed_by_node(sock: socket.socket, wait_s: float = 0.3) -> bool:
    sock.settimeout(wait_s)
    try:
        return sock.recv(10) == b""
    except TimeoutError:
        return False  # still held open by the node
    except ConnectionResetError:
        return True


def _split(sockets: list[socket.socket]) -> tuple[list[socket.socket], list[socket.socket]]:
    """(held by the node, closed by the node)."""
    closed = [s for s in sockets if _closed_by_node(s)]
    return [s for s in sockets if s not in closed], closed


def _close_all(sockets: list[socket.socket], address: str = "127.0.0.2") -> None:
    for sock in sockets:
        sock.close()
    state = published()
    assert state is not None
    wait_until(lambda: state.open_connections(address) == 0, "the node to give the slots back", timeout_s=10)


def _associate(port: int, ae_title: str = "PACS") -> Association:
    ae = AE(ae_title=ae_title)
    ae.add_requested_context(VERIFICATION)
    return ae.associate("127.0.0.1", port, ae_title="BMDNODE")


def test_half_open_sockets_beyond_the_per_address_cap_are_refused_by_both_processes(node: Node) -> None:
    before = _metrics()
    sockets = _half_open(node.port, 20)
    try:
        held, closed = _split(sockets)
        assert len(held) == PER_ADDRESS  # not PER_ADDRESS in each of the two processes
        assert len(closed) == 20 - PER_ADDRESS
        assert _changes(before) == {("rejected", "too_many_per_address"): 20 - PER_ADDRESS}
        started = time.monotonic()
        result = storescu(write_series(node.tmp_path / "series", 2), port=node.port, calling_ae="PACS", timeout_s=30)
        assert result.returncode == 0 and "0xa700" not in result.stderr.lower(), result.stderr
        assert time.monotonic() - started < 5.0
    finally:
        _close_all(sockets)


def test_the_per_peer_cap_refuses_the_next_association_in_every_process(node: Node) -> None:
    before = _metrics()
    held = [_associate(node.port) for _ in range(PACS_MAX_ASSOCIATIONS)]
    try:
        assert all(assoc.is_established for assoc in held)
        refused = []
        for _ in range(6):  # spread over both processes by their source ports
            refused.append(_associate(node.port))
            # the requestor has the rejection before the node has closed that connection and given its slot back:
            # without this wait the next attempt could meet the per-address cap (4) instead of the per-peer one
            wait_until(lambda: published().open_connections("127.0.0.1") <= PACS_MAX_ASSOCIATIONS,  # type: ignore[union-attr]
                       "the refused connection's slot back", timeout_s=10)
        assert all(assoc.is_rejected for assoc in refused)
        rejection = refused[0].acceptor.primitive
        assert (rejection.result, rejection.result_source, rejection.diagnostic) == (0x02, 0x03, 0x02)  # transient,
        # service-provider (presentation), local-limit-exceeded
        echo = echoscu(port=node.port, calling_ae="OTHER")  # another peer is not affected (from 127.0.0.1: echo-only)
        assert echo.returncode == 0, echo.stderr
        held[0].release()
        wait_until(lambda: published().open_associations("pacs") < PACS_MAX_ASSOCIATIONS,  # type: ignore[union-attr]
                   "the released association's slot back", timeout_s=10)
        again = _associate(node.port)
        assert again.is_established
        held[0] = again
    finally:
        for assoc in held:
            assoc.release()
    changes = _changes(before)
    assert changes[("rejected", "too_many_per_peer")] == 6
    assert changes[("accepted", "peer")] == PACS_MAX_ASSOCIATIONS + 1
    assert changes[("accepted", "echo_only")] == 1


def test_metrics_count_accepted_and_rejected_associations_of_both_processes(node: Node) -> None:
    before = _metrics()
    for _ in range(6):  # whichever process takes each; all are counted
        assert echoscu(port=node.port, calling_ae="PACS").returncode == 0
    wrong = echoscu(port=node.port, calling_ae="PACS", called_ae="NOTME")
    assert wrong.returncode != 0
    assert _changes(before) == {("accepted", "peer"): 6, ("rejected", "wrong_called_ae"): 1}


def test_the_other_outcomes_are_counted_with_their_reason(node: Node) -> None:
    before = _metrics()
    with socket.create_connection(("127.0.0.1", node.port), source_address=("127.0.0.3", 0)) as sock:
        assert _closed_by_node(sock, wait_s=5.0)  # 127.0.0.3 is no peer's address
    with socket.create_connection(("127.0.0.1", node.port)) as sock:
        sock.sendall(struct.pack(">BBL", 0x01, 0, 0xFFFFFFFF))  # a 4 GiB A-ASSOCIATE-RQ
        sock.settimeout(5.0)
        assert sock.recv(100) == A_ABORT_INVALID_PARAMETER
    with socket.create_connection(("127.0.0.1", node.port)):
        pass  # connected and closed without an association request
    unknown = storescu(write_series(node.tmp_path / "unknown", 1), port=node.port, calling_ae="STRANGER")
    assert unknown.returncode != 0
    assoc = _associate(node.port)
    assert assoc.is_established
    elapsed = _stream_until_closed(assoc.dul.socket.socket, struct.pack(">BBL", 0x04, 0, 0xFFFFFFFF))
    assert elapsed < 1.0
    assoc.abort()
    wait_until(lambda: _changes(before).get(("rejected", "request_timeout")) == 1, "the closed connection counted",
               timeout_s=10)
    assert _changes(before) == {("rejected", "address_not_allowed"): 1, ("rejected", "pdu_too_large"): 1,
                                ("rejected", "request_timeout"): 1, ("rejected", "unknown_calling_ae"): 1,
                                ("accepted", "peer"): 1, ("aborted", "pdu_too_large"): 1}


def _receiver_pids() -> set[int]:
    return {p.pid for p in multiprocessing.active_children() if p.name == "receiver" and p.is_alive()
            and p.pid is not None}


def test_a_killed_receiver_process_leaves_no_slot_counted(node: Node) -> None:
    for _ in range(6):  # until the receiver process holds some of the sockets
        sockets = _half_open(node.port, PER_ADDRESS)
        try:
            held, _ = _split(sockets)
            assert len(held) == PER_ADDRESS
            (pid,) = _receiver_pids()
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda p=pid: _receiver_pids() not in (set(), {p})
                       and published().accepting() == 2,  # type: ignore[union-attr]
                       "the receiver process restarted", timeout_s=60)
            still_held, its_own = _split(held)
            refill = _half_open(node.port, 2 * PER_ADDRESS)
            sockets += refill
            refill_held, _ = _split(refill)
            assert len(refill_held) == len(its_own)  # its slots were freed, no more
            assert len(still_held) + len(refill_held) == PER_ADDRESS
        finally:
            _close_all(sockets)
        if its_own:
            return
    pytest.fail("the receiver process never held one of the sockets")


def test_an_idle_association_counts_as_accepted_then_aborted(tmp_path: Path) -> None:
    port = free_port()
    config = node_config(tmp_path, port=port, peers=PEERS).with_node(idle_timeout_seconds=1.0)
    upgrade(config.node.database_url)
    engine = make_engine(config.node.database_url)
    previous = published()
    server = start_scp(config, engine)  # one process; it publishes its own counters
    try:
        before = _metrics()
        assoc = _associate(port)
        assert assoc.is_established
        wait_until(lambda: _changes(before).get(("aborted", "idle_timeout")) == 1, "the idle association aborted",
                   timeout_s=10)
        assert _changes(before) == {("accepted", "peer"): 1, ("aborted", "idle_timeout"): 1}
        assert assoc.is_aborted
    finally:
        server.shutdown()
        engine.dispose()
        if previous is not None:
            publish(previous)
