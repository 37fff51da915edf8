"""The node's watch over its receiver processes (service/receive/supervision.py): a dead process's slots are freed
and its instances recovered once; its successor starts at once after a normal life, and after a growing back-off
(1, 2, 4 ... 60 s) while processes keep dying right after their start. The processes are stand-ins (a process
object whose liveness the test sets); the shared state is the real one."""

from __future__ import annotations

from dataclasses import dataclass

from service.receive.shared_limits import SharedReceiveState
from service.receive.supervision import QUICK_DEATH_S, ReceiverProcess, supervise


@dataclass
class FakeProcess:
    alive: bool = True
    exitcode: int | None = None

    def is_alive(self) -> bool:
        return self.alive


class Watch:
    def __init__(self) -> None:
        self.shared = SharedReceiveState(rows=2, per_address=2, total=4)
        self.started: list[float] = []
        self.recovered: list[int] = []
        self.now = 1000.0

    def start(self, row: int) -> ReceiverProcess:
        self.started.append(self.now)
        return ReceiverProcess(FakeProcess(), None, None, started_monotonic=self.now)

    def step(self, child: ReceiverProcess) -> ReceiverProcess:
        return supervise(child, 1, self.now, self.shared, self.start, self.recovered.append)


def test_a_living_process_is_left_alone() -> None:
    watch = Watch()
    child = ReceiverProcess(FakeProcess(), None, None, started_monotonic=watch.now)
    assert watch.step(child) is child
    assert watch.started == [] and watch.recovered == []


def test_a_process_that_dies_after_a_normal_life_is_recovered_and_replaced_at_once() -> None:
    watch = Watch()
    assert watch.shared.acquire_connection(1, "127.0.0.1") is None
    child = ReceiverProcess(FakeProcess(alive=False, exitcode=-9), None, None,
                            started_monotonic=watch.now - 3600)
    successor = watch.step(child)
    assert successor is not child and watch.started == [watch.now]
    assert watch.recovered == [1]
    assert watch.shared.open_connections() == 0  # its slot was freed
    assert successor.quick_deaths == 0


def test_processes_that_keep_dying_at_start_up_are_restarted_with_a_growing_back_off() -> None:
    watch = Watch()
    child = ReceiverProcess(FakeProcess(), None, None, started_monotonic=watch.now)
    delays = []
    for _ in range(9):
        watch.now += 1.0  # it dies a second after its start
        child.process.alive = False
        died_at = watch.now
        while True:
            successor = watch.step(child)
            if successor is not child:
                break
            watch.now += 0.5
        delays.append(watch.now - died_at)
        child = successor
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    assert len(watch.recovered) == 9  # once per death, not once per look
    watch.now += QUICK_DEATH_S + 1  # this one lives: its death is not counted as quick
    child.process.alive = False
    assert watch.step(child) is not child
