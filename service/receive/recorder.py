"""The receive path's database writer: instances recorded in batched transactions by one background thread.

The spool is the source of truth. A stored instance is acknowledged once its file is fsynced in the spool; its row
is handed to this recorder (``submit``), which commits everything queued since its last commit in ONE transaction
(group commit: one database commit for the instances of several images and several associations). When the process
dies before the commit, the start-up reconciliation (``service.receive.reconcile``) records the spool files that
have no row, so nothing acknowledged is lost.

``record_and_wait`` is for rows that have no spool file (ignored or rejected instances) and must not be lost: it
returns once the row's batch is committed. ``wait_recorded`` is the barrier the SCP uses before it answers an
A-RELEASE-RQ: a sender whose association was released cleanly finds every instance it sent in the database.

Before each commit the recorder runs its ``before_commit`` hooks: the pool-mode spool moves the files of the rows
into place there (``Spool.settle``), so that a committed row never names a file that is not yet at its path; a row
whose file could not be moved is not committed (its file is moved and recorded at the next start-up).

A batch that fails (database briefly unavailable, a concurrent insert of the same series by another receiver
process) is retried row by row; a row that still fails is logged and left to the next start-up's reconciliation.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from service.db.queries import InstanceRecord

logger = logging.getLogger(__name__)

BatchWriter = Callable[[Sequence[InstanceRecord]], Sequence[bool]]
"""Records rows in one transaction; returns, per row, True when new (raises when the transaction fails)."""
RowWriter = Callable[[InstanceRecord], bool]
"""Records one row in its own transaction (the fall-back when a batch fails)."""
BeforeCommit = Callable[[], set[Path]]
"""Run on the recorder thread before a batch is committed; returns the paths whose rows must not be committed."""


@dataclass(frozen=True)
class RecorderSettings:
    max_batch: int = 256
    """Most rows in one transaction."""
    linger_s: float = 0.25
    """After the first row of a batch arrives, wait this long for more (unless someone waits for the commit): one
    commit per 250 ms of receiving instead of one per image (SQLite, 50 rows: 0.17 ms a row instead of 2.1 ms
    for one row a transaction). Rows are not needed sooner: the scheduler waits [node] series_stable_seconds, and
    the release barrier and ``record_and_wait`` cut the wait short."""
    wait_timeout_s: float = 60.0
    """Longest ``record_and_wait`` / ``wait_recorded`` waits for a commit before giving up."""

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.linger_s < 0:
            raise ValueError(f"linger_s must be >= 0, got {self.linger_s}")
        if self.wait_timeout_s <= 0:
            raise ValueError(f"wait_timeout_s must be > 0, got {self.wait_timeout_s}")


class RecordingError(RuntimeError):
    """A row handed to ``record_and_wait`` could not be committed."""


class BatchRecorder:
    """A thread that records queued instance rows in batched transactions. ``start()`` before use, ``stop()``
    flushes what is queued and ends the thread."""

    def __init__(self, write_batch: BatchWriter, write_row: RowWriter,
                 settings: RecorderSettings = RecorderSettings()) -> None:
        self._write_batch = write_batch
        self._write_row = write_row
        self.settings = settings
        self._cond = threading.Condition()
        self._queue: deque[tuple[int, InstanceRecord]] = deque()
        self._submitted = 0
        self._done = 0
        """Every ticket <= _done has been handled (committed, or failed and logged)."""
        self._failed: set[int] = set()
        self._waiters = 0
        self._stopping = False
        self._before_commit: list[BeforeCommit] = []
        self._thread = threading.Thread(target=self._run, name="instance-recorder", daemon=True)
        self.batches = 0
        self.rows = 0

    def start(self) -> BatchRecorder:
        self._thread.start()
        return self

    def add_before_commit(self, hook: BeforeCommit) -> None:
        """Run ``hook`` on the recorder thread before every commit (e.g. ``Spool.settle``); call before use."""
        self._before_commit.append(hook)

    def submit(self, row: InstanceRecord) -> int:
        """Queue ``row``; returns its ticket (for ``wait_for``)."""
        with self._cond:
            if self._stopping:
                raise RuntimeError("recorder is stopped")
            self._submitted += 1
            self._queue.append((self._submitted, row))
            self._cond.notify_all()
            return self._submitted

    def __call__(self, row: InstanceRecord) -> bool:
        """The handler's deferred recorder: queue and return at once (True: accepted)."""
        self.submit(row)
        return True

    def record_and_wait(self, row: InstanceRecord) -> bool:
        """Queue ``row`` and wait for its commit; raises RecordingError when it could not be recorded."""
        ticket = self.submit(row)
        if not self.wait_for(ticket):
            raise RecordingError(f"instance {row.sop_instance_uid} not recorded within "
                                 f"{self.settings.wait_timeout_s:g} s")
        with self._cond:
            if ticket in self._failed:
                self._failed.discard(ticket)
                raise RecordingError(f"instance {row.sop_instance_uid} could not be recorded")
        return True

    def wait_for(self, ticket: int, timeout_s: float | None = None) -> bool:
        """Wait until ``ticket`` is handled; False on timeout."""
        deadline = time.monotonic() + (self.settings.wait_timeout_s if timeout_s is None else timeout_s)
        with self._cond:
            self._waiters += 1
            self._cond.notify_all()
            try:
                return self._wait_locked(ticket, deadline)
            finally:
                self._waiters -= 1

    def _wait_locked(self, ticket: int, deadline: float) -> bool:
        while self._done < ticket:
            left = deadline - time.monotonic()
            if left <= 0 or not self._thread.is_alive():
                return False
            self._cond.wait(left)
        return True

    def wait_recorded(self, timeout_s: float | None = None) -> bool:
        """Barrier: wait until every row submitted so far is handled."""
        with self._cond:
            ticket = self._submitted
        return self.wait_for(ticket, timeout_s)

    def stop(self, timeout_s: float = 30.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout=timeout_s)

    def _next_batch(self) -> list[tuple[int, InstanceRecord]]:
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            until = time.monotonic() + self.settings.linger_s
            while (not self._stopping and not self._waiters and len(self._queue) < self.settings.max_batch
                   and (left := until - time.monotonic()) > 0):
                self._cond.wait(left)
            n = min(len(self._queue), self.settings.max_batch)
            return [self._queue.popleft() for _ in range(n)]

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if not batch:
                return  # stopping and drained
            failed = self._record(batch)
            with self._cond:
                self._done = batch[-1][0]
                self._failed.update(failed)
                self.batches += 1
                self.rows += len(batch)
                self._cond.notify_all()

    def _record(self, batch: list[tuple[int, InstanceRecord]]) -> set[int]:
        """Record ``batch``; returns the tickets that could not be recorded."""
        held = self._run_before_commit()
        failed = {ticket for ticket, row in batch if row.path is not None and Path(row.path) in held}
        batch = [(ticket, row) for ticket, row in batch if ticket not in failed]
        if not batch:
            return failed
        try:
            self._write_batch([row for _, row in batch])
            return failed
        except Exception as exc:
            logger.warning("recording a batch of %d instances failed (%s); recording them one by one",
                           len(batch), type(exc).__name__)
        for ticket, row in batch:
            try:
                self._write_row(row)
            except Exception:
                logger.exception("could not record instance %s (its spool file is recorded at the next start-up)",
                                 row.sop_instance_uid)
                failed.add(ticket)
        return failed

    def _run_before_commit(self) -> set[Path]:
        held: set[Path] = set()
        for hook in self._before_commit:
            try:
                held |= hook()
            except Exception:  # the recorder thread must go on; the spool is reconciled at the next start-up
                logger.exception("before-commit step failed")
        return held
