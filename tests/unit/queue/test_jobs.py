from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy
from sqlalchemy import select

from service.db.engine import read_session, write_session
from service.db.queries import record_instance
from service.db.tables import Export, Job, JobEvent, ResultObject, Series, VertebraResult
from service.domain.retry import RetryPolicy
from service.domain.status import JobStatus
from service.pipeline.types import JobInput
from service.queue import jobs
from service.queue.job_results import JobSuccess, StoredObject
from tests.node_support import quick_result, record

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def _series(engine: sqlalchemy.Engine, uid: str = "1.2.3", n: int = 3) -> str:
    for i in range(n):
        record_instance(engine, record(uid, f"{uid}.{i}"), now=T0)
    return uid


def _statuses(engine: sqlalchemy.Engine, job_id: int) -> list[tuple[str | None, str]]:
    return [(e[1], e[2]) for e in jobs.job_events(engine, job_id)]


def _success(job_id: int, n_objects: int = 2, tag: str = "a") -> JobSuccess:
    result = quick_result(JobInput(job_id, "1.2", "1.2.3", (Path("/x"),)))
    objects = tuple(StoredObject("sr" if i == 0 else "key_image", "1.2.840.10008.5.1.4.1.1.88.11",
                                      f"9.{tag}.{job_id}.{i}", "1.2", f"9.{tag}.{job_id}", f"/r/{tag}{i}.dcm", 10,
                                      "0" * 64) for i in range(n_objects))
    return JobSuccess(result, objects, "/r", result.to_json_dict())


def test_enqueue_claim_finish_records_every_transition(sqlite_engine: sqlalchemy.Engine) -> None:
    uid = _series(sqlite_engine)
    job_id = jobs.enqueue(sqlite_engine, uid, max_attempts=3, now=T0)
    assert job_id is not None
    claimed = jobs.claim_next(sqlite_engine, worker_id="w1", lease_seconds=60, now=T0)
    assert claimed is not None and claimed.job_id == job_id and claimed.attempts == 1
    assert claimed.instance_count == 3
    assert jobs.claim_next(sqlite_engine, worker_id="w2", lease_seconds=60, now=T0) is None
    assert jobs.finish(sqlite_engine, job_id, worker_id="w1", success=_success(job_id), peer_names=["pacs", "b"],
                       now=T0 + timedelta(seconds=5))
    view = jobs.get_job(sqlite_engine, job_id)
    assert view is not None and view.status == JobStatus.SUCCEEDED
    assert view.summary_category == "normal" and view.summary_levels == "L1"
    assert _statuses(sqlite_engine, job_id) == [(None, "queued"), ("queued", "running"), ("running", "succeeded")]
    with read_session(sqlite_engine) as s:
        assert s.scalar(select(sqlalchemy.func.count()).select_from(ResultObject)) == 2
        assert s.scalar(select(sqlalchemy.func.count()).select_from(Export)) == 4  # 2 objects x 2 peers
        assert s.scalar(select(sqlalchemy.func.count()).select_from(VertebraResult)) == 1
        assert s.scalar(select(Series.status)) == "queued"


def test_one_active_job_per_series(sqlite_engine: sqlalchemy.Engine) -> None:
    uid = _series(sqlite_engine)
    first = jobs.enqueue(sqlite_engine, uid, max_attempts=3, now=T0)
    assert first is not None
    assert jobs.enqueue(sqlite_engine, uid, max_attempts=3, now=T0) is None
    jobs.claim_next(sqlite_engine, worker_id="w", lease_seconds=60, now=T0)
    assert jobs.enqueue(sqlite_engine, uid, max_attempts=3, now=T0) is None  # running counts as active
    # the database itself refuses a second active row (the unique partial index), not only enqueue()
    with pytest.raises(sqlalchemy.exc.IntegrityError), write_session(sqlite_engine) as s:
        s.add(Job(series_id=1, series_instance_uid=uid, study_instance_uid="1.2", status="queued", attempts=0,
                  max_attempts=1, instance_count=1, run_after=T0, created_at=T0))
    jobs.finish(sqlite_engine, first, worker_id="w", success=_success(first), peer_names=[], now=T0)
    second = jobs.enqueue(sqlite_engine, uid, max_attempts=3, now=T0)
    assert second is not None and second != first
    assert jobs.get_job(sqlite_engine, second).supersedes_job_id == first  # type: ignore[union-attr]


def test_retry_with_backoff_then_dead(sqlite_engine: sqlalchemy.Engine) -> None:
    uid = _series(sqlite_engine)
    job_id = jobs.enqueue(sqlite_engine, uid, max_attempts=3, now=T0)
    policy = RetryPolicy(initial_seconds=10, multiplier=3, max_seconds=25, max_attempts=3)
    now = T0
    expected_delays = [10, 25]  # 10 * 3**0, min(25, 10 * 3**1)
    for attempt, delay in enumerate(expected_delays, start=1):
        claimed = jobs.claim_next(sqlite_engine, worker_id="w", lease_seconds=60, now=now)
        assert claimed is not None and claimed.attempts == attempt
        status = jobs.fail(sqlite_engine, job_id, worker_id="w", error=f"boom {attempt}", retryable=True,
                           policy=policy, now=now)
        assert status == JobStatus.QUEUED
        # not due before the backoff has passed
        assert jobs.claim_next(sqlite_engine, worker_id="w", lease_seconds=60,
                               now=now + timedelta(seconds=delay - 1)) is None
        now = now + timedelta(seconds=delay)
    assert jobs.claim_next(sqlite_engine, worker_id="w", lease_seconds=60, now=now) is not None
    assert jobs.fail(sqlite_engine, job_id, worker_id="w", error="boom 3", retryable=True, policy=policy,
                     now=now) == JobStatus.DEAD
    view = jobs.get_job(sqlite_engine, job_id)
    assert view is not None and view.status == "dead" and view.last_error == "boom 3"
    # a person retries it: fresh attempts
    jobs.retry(sqlite_engine, job_id, now=now)
    claimed = jobs.claim_next(sqlite_engine, worker_id="w", lease_seconds=60, now=now)
    assert claimed is not None and claimed.attempts == 1


def test_not_retryable_failure_is_final(sqlite_engine: sqlalchemy.Engine) -> None:
    uid = _series(sqlite_engine)
    job_id = jobs.enqueue(sqlite_engine, uid, max_attempts=5, now=T0)
    jobs.claim_next(sqlite_engine, worker_id="w", lease_seconds=60, now=T0)
    assert jobs.fail(sqlite_engine, job_id, worker_id="w", error="series rejected", retryable=False,
                     now=T0) == JobStatus.FAILED
    assert jobs.claim_next(sqlite_engine, worker_id="w", lease_seconds=60, now=T0 + timedelta(days=1)) is None
    # a finished job cannot be failed again (the lease is gone) and a failed job can only be retried by hand
    assert jobs.fail(sqlite_engine, job_id, worker_id="w", error="x", retryable=False) is None
    jobs.retry(sqlite_engine, job_id, now=T0)
    with pytest.raises(jobs.JobStateError, match="only failed or dead"):
        jobs.retry(sqlite_engine, job_id, now=T0)


def test_lease_expiry_reaper_requeues_then_dead(sqlite_engine: sqlalchemy.Engine) -> None:
    uid = _series(sqlite_engine)
    job_id = jobs.enqueue(sqlite_engine, uid, max_attempts=2, now=T0)
    jobs.claim_next(sqlite_engine, worker_id="dead-worker", lease_seconds=30, now=T0)
    # heartbeat keeps it alive
    assert jobs.heartbeat(sqlite_engine, job_id, worker_id="dead-worker", lease_seconds=30,
                          now=T0 + timedelta(seconds=20))
    assert jobs.reap_expired(sqlite_engine, now=T0 + timedelta(seconds=45)) == []
    # no more heartbeats: the lease runs out, the reaper re-queues
    assert jobs.reap_expired(sqlite_engine, now=T0 + timedelta(seconds=51)) == [job_id]
    assert jobs.get_job(sqlite_engine, job_id).status == "queued"  # type: ignore[union-attr]
    # the old owner lost its lease: heartbeat, finish and fail are refused
    assert not jobs.heartbeat(sqlite_engine, job_id, worker_id="dead-worker", lease_seconds=30)
    claimed = jobs.claim_next(sqlite_engine, worker_id="w2", lease_seconds=30, now=T0 + timedelta(seconds=60))
    assert claimed is not None and claimed.attempts == 2
    assert not jobs.finish(sqlite_engine, job_id, worker_id="dead-worker", success=_success(job_id),
                           peer_names=["pacs"])
    assert jobs.fail(sqlite_engine, job_id, worker_id="dead-worker", error="x", retryable=True) is None
    # second crash: attempts exhausted -> dead
    assert jobs.reap_expired(sqlite_engine, now=T0 + timedelta(seconds=200)) == [job_id]
    assert jobs.get_job(sqlite_engine, job_id).status == "dead"  # type: ignore[union-attr]
    assert [t for _, t in _statuses(sqlite_engine, job_id)] == ["queued", "running", "queued", "running", "dead"]


def test_rerun_supersedes_earlier_results_and_cancels_unsent(sqlite_engine: sqlalchemy.Engine) -> None:
    uid = _series(sqlite_engine)
    first = jobs.enqueue(sqlite_engine, uid, max_attempts=3, now=T0)
    jobs.claim_next(sqlite_engine, worker_id="w", lease_seconds=60, now=T0)
    jobs.finish(sqlite_engine, first, worker_id="w", success=_success(first, tag="a"), peer_names=["pacs"], now=T0)
    record_instance(sqlite_engine, record(uid, f"{uid}.late"), now=T0 + timedelta(seconds=100))
    second = jobs.enqueue(sqlite_engine, uid, max_attempts=3, now=T0 + timedelta(seconds=200))
    assert jobs.get_job(sqlite_engine, second).instance_count == 4  # type: ignore[union-attr]
    jobs.claim_next(sqlite_engine, worker_id="w", lease_seconds=60, now=T0 + timedelta(seconds=200))
    jobs.finish(sqlite_engine, second, worker_id="w", success=_success(second, tag="b"), peer_names=["pacs"])
    with read_session(sqlite_engine) as s:
        old = s.scalars(select(ResultObject).where(ResultObject.job_id == first)).all()
        assert {o.superseded_by_job_id for o in old} == {second}
        statuses = dict(s.execute(select(Export.result_object_id, Export.status)).tuples().all())
        assert sorted(statuses[o.id] for o in old) == ["cancelled", "cancelled"]
        assert s.scalar(select(sqlalchemy.func.count()).select_from(JobEvent)) == 6


def test_naive_datetimes_are_refused(sqlite_engine: sqlalchemy.Engine) -> None:
    uid = _series(sqlite_engine)
    with pytest.raises(sqlalchemy.exc.StatementError, match="naive datetime"):
        jobs.enqueue(sqlite_engine, uid, max_attempts=1, now=datetime(2026, 1, 1))
