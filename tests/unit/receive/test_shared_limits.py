"""The caps and counters shared by the receiver processes (service/receive/shared_limits.py), with real spawned
processes: a cap counts what every process holds, a process killed while it holds the lock does not block the
others, and the row of a dead process can be cleared."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from service.receive.limits import ConnectionSlots
from service.receive.shared_limits import ASSOCIATION_OUTCOMES, SharedReceiveState

SPAWN = multiprocessing.get_context("spawn")


def _state(tmp_path: Path, **caps: int) -> SharedReceiveState:
    return SharedReceiveState(rows=3, per_address=caps.get("per_address", 2), total=caps.get("total", 3),
                              peer_caps={"pacs": caps.get("pacs", 1), "ct": 2}, lock_path=tmp_path / "slots.lock")


def _take_in_child(state: SharedReceiveState, row: int, addresses: list[str], peers: list[str], done: Any) -> None:
    for address in addresses:
        assert state.acquire_connection(row, address) is None
    for peer in peers:
        assert state.acquire_peer(row, peer)
    state.count("accepted", "peer")
    done.set()


def _die_holding_the_lock(state: SharedReceiveState, row: int, held: Any) -> None:
    assert state.acquire_connection(row, "10.0.0.9") is None
    with state._locked():
        held.set()
        time.sleep(0.2)
        os._exit(0)  # killed with the lock held


def _contend(state: SharedReceiveState, row: int, rounds: int, overlaps: Any) -> None:
    """Take and give back the one slot of an address; an overlap is a moment two processes both held it."""
    for _ in range(rounds):
        if state.acquire_connection(row, "10.0.0.5") is None:
            if state.open_connections("10.0.0.5") > 1:
                with overlaps.get_lock():
                    overlaps.value += 1
            state.release_connection(row, "10.0.0.5")


def _run_child(target: Any, *args: Any) -> None:
    process = SPAWN.Process(target=target, args=args, daemon=True)
    process.start()
    process.join(timeout=60)
    assert process.exitcode == 0


def test_caps_count_the_connections_of_every_process(tmp_path: Path) -> None:
    state = _state(tmp_path)
    done = SPAWN.Event()
    _run_child(_take_in_child, state, 1, ["10.0.0.1", "10.0.0.2"], ["pacs"], done)
    assert done.is_set()
    assert state.open_connections() == 2 and state.open_connections("10.0.0.1") == 1
    assert state.acquire_connection(0, "10.0.0.1") is None  # 2 of 2 for this address, one in each process
    assert state.acquire_connection(0, "::ffff:10.0.0.1") == "too_many_per_address"  # the same address
    assert state.acquire_connection(0, "10.0.0.3") == "too_many_overall"  # 3 of 3 in all
    assert not state.acquire_peer(0, "pacs")  # the child holds the peer's only slot
    assert state.acquire_peer(0, "ct")
    assert not state.acquire_peer(0, "unknown")
    assert state.counts()[("accepted", "peer")] == 1  # counted in the child, read here


def test_a_process_killed_holding_the_lock_blocks_nobody_and_its_row_can_be_cleared(tmp_path: Path) -> None:
    state = _state(tmp_path, per_address=1)
    held = SPAWN.Event()
    process = SPAWN.Process(target=_die_holding_the_lock, args=(state, 2, held), daemon=True)
    process.start()
    assert held.wait(60)
    process.join(timeout=10)
    answer: list[str | None] = []
    taker = threading.Thread(target=lambda: answer.append(state.acquire_connection(0, "10.0.0.9")), daemon=True)
    taker.start()
    taker.join(timeout=5.0)  # a lock the dead process still held would block here for ever
    assert answer == ["too_many_per_address"]  # the dead process's slot is still counted ...
    state.clear_row(2)  # ... until its row is cleared
    assert state.acquire_connection(0, "10.0.0.9") is None
    assert state.open_connections() == 1


def test_two_processes_never_hold_an_address_s_one_slot_at_once(tmp_path: Path) -> None:
    state = _state(tmp_path, per_address=1)
    overlaps = SPAWN.Value("i", 0)
    workers = [SPAWN.Process(target=_contend, args=(state, row, 3000, overlaps), daemon=True) for row in (1, 2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    assert overlaps.value == 0
    assert state.open_connections() == 0


def test_released_slots_are_taken_again_and_counters_start_at_zero(tmp_path: Path) -> None:
    state = _state(tmp_path, per_address=1, total=2)
    assert state.counts() == dict.fromkeys(ASSOCIATION_OUTCOMES, 0)
    for _ in range(3):
        assert state.acquire_connection(1, "fe80::1") is None
        assert state.acquire_connection(1, "fe80::1") == "too_many_per_address"
        state.release_connection(1, "fe80::1")
    assert state.open_connections() == 0
    state.release_connection(1, "fe80::1")  # one release more than was taken changes nothing
    assert state.open_connections() == 0


def test_connection_slots_count_their_refusals(tmp_path: Path) -> None:
    slots = ConnectionSlots(per_address=1, total=5, peer_caps={"pacs": 1},
                            shared=_state(tmp_path, per_address=1, total=5), row=1)
    assert slots.acquire("10.0.0.1") and not slots.acquire("10.0.0.1")
    assert slots.state.counts()[("rejected", "too_many_per_address")] == 1
    assert slots.acquire_peer("pacs") and not slots.acquire_peer("pacs")
    slots.release_peer("pacs")
    assert slots.acquire_peer("pacs")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"rows": 0, "per_address": 1, "total": 1}, "rows"),
    ({"rows": 1, "per_address": 2, "total": 1}, "per_address"),
    ({"rows": 1, "per_address": 1, "total": 1, "peer_caps": {"pacs": 0}}, "peer_caps"),
])
def test_bad_arguments_are_named(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SharedReceiveState(**kwargs)
