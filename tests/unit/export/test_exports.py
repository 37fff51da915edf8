from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy
from sqlalchemy import select

from service.db.engine import read_session
from service.db.tables import Export
from service.domain.retry import RetryPolicy
from service.export.outbox import (
    claim_due_exports,
    mark_export_dead,
    mark_export_retry,
    mark_export_sent,
    requeue_dead_exports,
)
from service.queue import jobs
from tests.node_support import _success_for_tests, enqueue_many

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def _one_export(engine: sqlalchemy.Engine) -> int:
    (job_id,) = enqueue_many(engine, 1)
    jobs.claim_next(engine, worker_id="w", lease_seconds=60)
    assert jobs.finish(engine, job_id, worker_id="w", success=_success_for_tests(job_id, 1), peer_names=["pacs"],
                       now=T0)
    with read_session(engine) as s:
        return s.scalars(select(Export.id)).one()


def _row(engine: sqlalchemy.Engine, export_id: int) -> Export:
    with read_session(engine) as s:
        row = s.get(Export, export_id)
        assert row is not None
        return row


def test_claim_and_send(sqlite_engine: sqlalchemy.Engine) -> None:
    export_id = _one_export(sqlite_engine)
    tasks = claim_due_exports(sqlite_engine, exporter_id="e1", limit=10, lease_seconds=60, now=T0)
    assert [t.export_id for t in tasks] == [export_id]
    task = tasks[0]
    assert task.peer_name == "pacs" and task.attempts == 1 and task.path.endswith(".dcm")
    assert task.sop_instance_uid.startswith("9.t.")
    # claimed: nobody else gets it while the lease runs
    assert claim_due_exports(sqlite_engine, exporter_id="e2", limit=10, lease_seconds=60, now=T0) == []
    mark_export_sent(sqlite_engine, export_id, status_code=0xB000, warning="coercion", now=T0)
    row = _row(sqlite_engine, export_id)
    assert (row.status, row.status_code, row.warning) == ("sent", 0xB000, "coercion")
    assert claim_due_exports(sqlite_engine, exporter_id="e2", limit=10, lease_seconds=60,
                             now=T0 + timedelta(days=1)) == []


def test_peer_filter(sqlite_engine: sqlalchemy.Engine) -> None:
    _one_export(sqlite_engine)
    assert claim_due_exports(sqlite_engine, exporter_id="e", limit=5, lease_seconds=60, now=T0,
                             peer_names=["other"]) == []
    assert len(claim_due_exports(sqlite_engine, exporter_id="e", limit=5, lease_seconds=60, now=T0,
                                 peer_names=["pacs"])) == 1


def test_retry_backoff_same_object_then_dead_after_max_attempts(sqlite_engine: sqlalchemy.Engine) -> None:
    export_id = _one_export(sqlite_engine)
    policy = RetryPolicy(initial_seconds=5, multiplier=2, max_seconds=12, max_attempts=4, max_age_seconds=3600)
    now = T0
    uids = set()
    for attempt, delay in ((1, 5), (2, 10), (3, 12)):
        (task,) = claim_due_exports(sqlite_engine, exporter_id="e", limit=1, lease_seconds=60, now=now)
        assert task.attempts == attempt
        uids.add((task.sop_instance_uid, task.path))
        assert mark_export_retry(sqlite_engine, export_id, error="association aborted", now=now,
                                 policy=policy) == "pending"
        assert claim_due_exports(sqlite_engine, exporter_id="e", limit=1, lease_seconds=60,
                                 now=now + timedelta(seconds=delay - 0.5)) == []
        now += timedelta(seconds=delay)
    (task,) = claim_due_exports(sqlite_engine, exporter_id="e", limit=1, lease_seconds=60, now=now)
    uids.add((task.sop_instance_uid, task.path))
    assert len(uids) == 1, "a retry must re-send the same file with the same SOP Instance UID"
    assert mark_export_retry(sqlite_engine, export_id, error="timeout", now=now, policy=policy) == "dead"
    row = _row(sqlite_engine, export_id)
    assert row.status == "dead" and "gave up after 4 attempts" in (row.last_error or "")


def test_dead_after_max_age(sqlite_engine: sqlalchemy.Engine) -> None:
    export_id = _one_export(sqlite_engine)
    policy = RetryPolicy(initial_seconds=1, multiplier=2, max_seconds=300, max_attempts=1000, max_age_seconds=3600)
    later = T0 + timedelta(seconds=3601)
    claim_due_exports(sqlite_engine, exporter_id="e", limit=1, lease_seconds=60, now=later)
    assert mark_export_retry(sqlite_engine, export_id, error="refused", now=later, policy=policy) == "dead"


def test_permanent_refusal_goes_dead_without_retry(sqlite_engine: sqlalchemy.Engine) -> None:
    export_id = _one_export(sqlite_engine)
    claim_due_exports(sqlite_engine, exporter_id="e", limit=1, lease_seconds=60, now=T0)
    mark_export_dead(sqlite_engine, export_id, error="0x0122 SOP class not supported")
    assert _row(sqlite_engine, export_id).status == "dead"
    assert claim_due_exports(sqlite_engine, exporter_id="e", limit=1, lease_seconds=60,
                             now=T0 + timedelta(days=30)) == []
    assert requeue_dead_exports(sqlite_engine, now=T0) == 1
    (task,) = claim_due_exports(sqlite_engine, exporter_id="e", limit=1, lease_seconds=60, now=T0)
    assert task.attempts == 1


def test_expired_claim_is_claimed_again(sqlite_engine: sqlalchemy.Engine) -> None:
    export_id = _one_export(sqlite_engine)
    claim_due_exports(sqlite_engine, exporter_id="crashed", limit=1, lease_seconds=30, now=T0)
    assert claim_due_exports(sqlite_engine, exporter_id="e2", limit=1, lease_seconds=30,
                             now=T0 + timedelta(seconds=29)) == []
    (task,) = claim_due_exports(sqlite_engine, exporter_id="e2", limit=1, lease_seconds=30,
                                now=T0 + timedelta(seconds=31))
    assert task.export_id == export_id and task.attempts == 2
    assert _row(sqlite_engine, export_id).lease_owner == "e2"


def test_policy_delays() -> None:
    policy = RetryPolicy(initial_seconds=10, multiplier=3, max_seconds=100, max_attempts=500)
    assert [policy.delay_seconds(n) for n in (1, 2, 3, 4)] == [10, 30, 90, 100]
