"""Series status has one writer (db/queries) with guarded UPDATEs; jobs and exports share one retry policy."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy
from sqlalchemy import func, select, update

from service.config import ExporterSettings, WorkerSettings
from service.db.engine import read_session, write_session
from service.db.queries import SeriesStateError, decide_series, record_instance
from service.db.tables import Job, Series
from service.domain.retry import RetryPolicy
from service.domain.status import SeriesStatus
from service.export import exporter, outbox
from service.queue import jobs
from tests.node_support import record

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
UID = "1.2.826.0.1.3680043.8.498.42"


def _series(engine: sqlalchemy.Engine, n: int = 3) -> None:
    for i in range(n):
        record_instance(engine, record(UID, f"{UID}.{i}"), now=T0)


def _read(engine: sqlalchemy.Engine) -> Series:
    with read_session(engine) as session:
        row = session.scalar(select(Series).where(Series.series_instance_uid == UID))
        assert row is not None
        return row  # detached, attributes loaded: a reader's view that may go stale


def _decide(engine: sqlalchemy.Engine, row: Series, target: SeriesStatus, count: int, reason: str | None) -> bool:
    with write_session(engine) as session:
        return decide_series(session, row, target, instance_count=count, reason=reason, now=T0)


def test_decision_is_recorded_with_reason_and_checked_count(sqlite_engine: sqlalchemy.Engine) -> None:
    _series(sqlite_engine)
    assert _decide(sqlite_engine, _read(sqlite_engine), SeriesStatus.REJECTED, 3, "too thick")
    row = _read(sqlite_engine)
    assert (row.status, row.reason, row.checked_instance_count) == (SeriesStatus.REJECTED, "too thick", 3)


def test_guarded_update_does_not_overwrite_a_status_changed_by_someone_else(
        sqlite_engine: sqlalchemy.Engine) -> None:
    _series(sqlite_engine)
    stale = _read(sqlite_engine)  # receiving
    assert _decide(sqlite_engine, _read(sqlite_engine), SeriesStatus.NOT_SELECTED, 3, "another was preferred")
    assert not _decide(sqlite_engine, stale, SeriesStatus.REJECTED, 3, "too thick")  # read as receiving: stale
    row = _read(sqlite_engine)
    assert (row.status, row.reason) == (SeriesStatus.NOT_SELECTED, "another was preferred")


def test_guarded_update_skips_a_series_that_received_more_instances(sqlite_engine: sqlalchemy.Engine) -> None:
    _series(sqlite_engine)
    stale = _read(sqlite_engine)  # receiving, 3 instances
    record_instance(sqlite_engine, record(UID, f"{UID}.9"), now=T0 + timedelta(seconds=1))
    assert not _decide(sqlite_engine, stale, SeriesStatus.REJECTED, 3, "too few slices")
    row = _read(sqlite_engine)
    assert (row.status, row.instance_count, row.checked_instance_count) == (SeriesStatus.RECEIVING, 4, 0)


def test_a_disallowed_transition_is_refused_before_anything_is_written(sqlite_engine: sqlalchemy.Engine) -> None:
    _series(sqlite_engine)
    assert _decide(sqlite_engine, _read(sqlite_engine), SeriesStatus.REJECTED, 3, "too thick")
    with pytest.raises(SeriesStateError, match="rejected -> queued"):
        _decide(sqlite_engine, _read(sqlite_engine), SeriesStatus.QUEUED, 3, None)
    with pytest.raises(SeriesStateError, match="rejected -> queued"):
        jobs.enqueue(sqlite_engine, UID, max_attempts=1, now=T0)
    with read_session(sqlite_engine) as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0
    assert _read(sqlite_engine).status == SeriesStatus.REJECTED
    with pytest.raises(ValueError, match="target"):  # receiving follows from arriving instances only
        _decide(sqlite_engine, _read(sqlite_engine), SeriesStatus.RECEIVING, 3, None)


def test_arrival_makes_a_decided_series_receiving_again(sqlite_engine: sqlalchemy.Engine) -> None:
    _series(sqlite_engine)
    assert _decide(sqlite_engine, _read(sqlite_engine), SeriesStatus.REJECTED, 3, "too thick")
    record_instance(sqlite_engine, record(UID, f"{UID}.9"), now=T0 + timedelta(seconds=1))
    row = _read(sqlite_engine)
    assert (row.status, row.instance_count, row.reason) == (SeriesStatus.RECEIVING, 4, "too thick")


def test_non_ct_first_instance_then_ct(sqlite_engine: sqlalchemy.Engine) -> None:
    record_instance(sqlite_engine, record(UID, f"{UID}.0", status="ignored", modality="SR"), now=T0)
    assert _read(sqlite_engine).status == SeriesStatus.IGNORED
    record_instance(sqlite_engine, record(UID, f"{UID}.1"), now=T0)
    assert _read(sqlite_engine).status == SeriesStatus.RECEIVING


def test_enqueue_marks_the_series_through_the_writer(sqlite_engine: sqlalchemy.Engine) -> None:
    _series(sqlite_engine)
    with write_session(sqlite_engine) as session:  # someone left a reason on a receiving series
        session.execute(update(Series).values(reason="old"))
    job_id = jobs.enqueue(sqlite_engine, UID, max_attempts=1, now=T0)
    assert job_id is not None
    row = _read(sqlite_engine)
    assert (row.status, row.reason, row.checked_instance_count, row.checked_at) == (SeriesStatus.QUEUED, None, 3, T0)


def test_jobs_and_exports_share_one_retry_policy_class() -> None:
    job_policy = jobs.job_retry_policy(WorkerSettings())
    export_policy = outbox.export_retry_policy(ExporterSettings())
    assert type(job_policy) is RetryPolicy and type(export_policy) is RetryPolicy
    assert jobs.RetryPolicy is outbox.RetryPolicy is exporter.RetryPolicy is RetryPolicy
    assert not hasattr(jobs, "Backoff")
    w, e = WorkerSettings(), ExporterSettings()
    assert job_policy == RetryPolicy(w.backoff_initial_seconds, w.backoff_multiplier, w.backoff_max_seconds,
                                     w.max_attempts, None)
    assert export_policy == RetryPolicy(e.backoff_initial_seconds, e.backoff_multiplier, e.backoff_max_seconds,
                                        e.max_attempts, e.max_age_seconds)
