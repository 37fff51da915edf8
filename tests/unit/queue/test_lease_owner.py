"""Fast recovery: a lease whose holder process is gone is reclaimed at once, a live holder's is not.

The holders are real processes: a child started and killed with SIGKILL, and this test process itself."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

import sqlalchemy

from service.db.lease_owner import current_owner, holder_is_gone, parse_owner
from service.export.outbox import claim_due_exports, reclaim_orphaned_exports
from service.queue import jobs
from tests.unit.export.test_exports import _one_export
from tests.unit.queue.test_jobs import T0, _series

CHILD = "from service.db.lease_owner import current_owner; print(current_owner('worker'), flush=True); input()"


def _owner_of_killed_child() -> str:
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    owner = child.stdout.readline().strip()
    assert not holder_is_gone(owner)  # alive
    child.kill()
    child.wait(timeout=10)
    return owner


def test_owner_identity_round_trips_and_names_this_process() -> None:
    me = current_owner("worker")
    parsed = parse_owner(str(me))
    assert parsed == me and parsed.start_ticks > 0
    assert not holder_is_gone(str(me))
    assert len(str(me)) <= 128


def test_unknown_or_foreign_holders_are_left_to_their_lease() -> None:
    me = current_owner("worker")
    assert not holder_is_gone("host-a:1234")  # an older node version's id
    assert not holder_is_gone(f"worker@another-host/{me.boot}/1/1")
    assert not holder_is_gone(None)
    # this host, an earlier boot: gone
    assert holder_is_gone(f"worker@{me.host}/00000000/{me.pid}/{me.start_ticks}")
    # this host and boot, our PID but another start time: the PID was reused, the holder is gone
    assert holder_is_gone(f"worker@{me.host}/{me.boot}/{me.pid}/{me.start_ticks + 1}")


def test_a_killed_holders_job_is_requeued_without_waiting_for_its_lease(sqlite_engine: sqlalchemy.Engine) -> None:
    uid = _series(sqlite_engine)
    job_id = jobs.enqueue(sqlite_engine, uid, max_attempts=3, now=T0)
    dead = _owner_of_killed_child()
    live = str(current_owner("worker"))
    assert jobs.claim_next(sqlite_engine, worker_id=dead, lease_seconds=300, now=T0) is not None
    other = jobs.enqueue(sqlite_engine, _series(sqlite_engine, uid="1.2.77"), max_attempts=3, now=T0)
    assert jobs.claim_next(sqlite_engine, worker_id=live, lease_seconds=300, now=T0) is not None
    soon = T0 + timedelta(seconds=1)
    assert jobs.reap_expired(sqlite_engine, now=soon) == []  # the leases have 299 s to run
    assert jobs.reclaim_orphaned(sqlite_engine, now=soon) == [job_id]
    view = jobs.get_job(sqlite_engine, job_id)
    assert view is not None and view.status == "queued" and "is gone" in (view.last_error or "")
    running = jobs.get_job(sqlite_engine, other)
    assert running is not None and running.status == "running"
    # the dead holder cannot finish it any more; a new worker claims it at once
    assert jobs.fail(sqlite_engine, job_id, worker_id=dead, error="x", retryable=True) is None
    claimed = jobs.claim_next(sqlite_engine, worker_id=live, lease_seconds=300, now=soon)
    assert claimed is not None and claimed.job_id == job_id and claimed.attempts == 2


def test_an_export_held_by_a_killed_exporter_is_claimable_at_once(sqlite_engine: sqlalchemy.Engine) -> None:
    export_id = _one_export(sqlite_engine)
    dead = _owner_of_killed_child()
    (task,) = claim_due_exports(sqlite_engine, exporter_id=dead, limit=1, lease_seconds=300, now=T0)
    assert claim_due_exports(sqlite_engine, exporter_id="e2", limit=1, lease_seconds=300, now=T0) == []
    assert reclaim_orphaned_exports(sqlite_engine, now=T0) == [export_id]
    (again,) = claim_due_exports(sqlite_engine, exporter_id="e2", limit=1, lease_seconds=300, now=T0)
    assert again.export_id == task.export_id and again.attempts == 2
    assert reclaim_orphaned_exports(sqlite_engine, now=T0) == []  # e2's id is not this host's form: left alone
