"""The node's association threads block until there is work (service/receive/latency.py), instead of polling.

A real pynetdicom requestor holds an association open with the node's SCP; the node's two threads of that
association must then wait (a handful of turns of their loops in a second, not the ~1000-6000 of a polling loop),
and still answer at once when the peer acts: a C-ECHO, a C-STORE and the release all complete. The loops are
counted by wrapping the methods an idle turn goes through (the DUL's ``_idle_wait``, the association's
``_next_message``) on the node's own association object."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pynetdicom import AE

from service.db.engine import make_engine
from service.db.migrate import upgrade
from service.receive.latency import WakingDUL
from service.receive.scp import start_scp
from service.receive.server import AllowListAssociationServer
from tests.integration.dicom_net_support import node_config, write_series
from tests.support.net import free_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

PEERS = [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 4242}]
VERIFICATION = "1.2.840.10008.1.1"
IDLE_S = 1.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[AllowListAssociationServer]:
    config = node_config(tmp_path, port=free_port(), peers=PEERS)
    upgrade(config.node.database_url)
    engine = make_engine(config.node.database_url)
    scp = start_scp(config, engine)
    try:
        yield scp
    finally:
        scp.shutdown()
        engine.dispose()


class _Counter:
    def __init__(self) -> None:
        self.calls = 0
        self.lock = threading.Lock()

    def wrap(self, method: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            with self.lock:
                self.calls += 1
            return method(*args, **kwargs)
        return counted


def test_an_open_idle_association_waits_and_still_answers_at_once(server: AllowListAssociationServer,
                                                                   tmp_path: Path) -> None:
    (path,) = write_series(tmp_path / "s", 1)
    ds = dcmread(path)
    ae = AE(ae_title="PACS")
    ae.add_requested_context(VERIFICATION)
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", int(server.server_address[1]), ae_title="BMDNODE")
    assert assoc.is_established
    try:
        (node_assoc,) = wait_until(lambda: server.active_associations or None, "the node's association", 5.0)
        assert isinstance(node_assoc.dul, WakingDUL)
        dul_turns, reactor_turns = _Counter(), _Counter()
        node_assoc.dul._idle_wait = dul_turns.wrap(node_assoc.dul._idle_wait)
        node_assoc._next_message = reactor_turns.wrap(node_assoc._next_message)
        time.sleep(IDLE_S)
        # a polling loop turns ~1000 times a second (pynetdicom's 1 ms sleeps); a waiting one every IDLE_WAIT_S
        assert dul_turns.calls <= 40, dul_turns.calls
        assert reactor_turns.calls <= 40, reactor_turns.calls

        started = time.monotonic()
        assert assoc.send_c_echo().Status == 0x0000
        assert assoc.send_c_store(ds).Status == 0x0000
        assert time.monotonic() - started < 1.0
    finally:
        started = time.monotonic()
        assoc.release()
    assert assoc.is_released
    assert time.monotonic() - started < 1.0
    wait_until(lambda: not server.active_associations, "the node's association thread to end", 5.0)
