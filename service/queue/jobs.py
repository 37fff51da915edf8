"""The job queue: the ONLY writer of job status.

Every transition is a guarded UPDATE (``WHERE id = :id AND status = :expected [AND lease_owner = :me]``) and
writes one JobEvent row in the same transaction. A unique partial index (``uq_jobs_active_series``) allows at
most one queued-or-running job per series.

Claims: SQLite takes the write lock first (BEGIN IMMEDIATE, see db/engine.py); PostgreSQL uses
``SELECT ... FOR UPDATE SKIP LOCKED`` so several workers never wait on each other's rows.

A claimed job holds a lease (``lease_expires_at``) renewed by ``heartbeat``. ``reap_expired`` re-queues a
running job whose lease ran out (its worker died) or, after ``max_attempts`` runs, moves it to dead.

A job's results (result objects, per-vertebra rows, exports) are written by ``finish`` in the same transaction
as its success (through queue/job_results.py, which writes no status), so a crash before that commit leaves nothing
to send, and one after it loses nothing.

A failed run is retried after the delay of the node's one ``RetryPolicy`` (domain/retry.py), built from
``[worker]`` by ``job_retry_policy``; the job row's own ``max_attempts`` (set at enqueue) decides when it is dead.

Queuing a job also marks its series queued, through the one writer of series status (db/queries.decide_series).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.config import WorkerSettings
from service.db.engine import is_sqlite, read_session, write_session
from service.db.lease_owner import holder_is_gone
from service.db.queries import decide_series, ensure_series_transition
from service.db.tables import Job, JobEvent, Series, utcnow
from service.domain.retry import RetryPolicy
from service.domain.status import ACTIVE_JOB_STATUSES, JobStatus, SeriesStatus, can_transition
from service.queue.job_results import JobSuccess, record_results

__all__ = ["ClaimedJob", "JobStateError", "JobView", "absorb_into_queued_job",
           "claim_next", "enqueue", "enqueue_in_session", "fail", "finish", "get_job", "heartbeat", "job_events",
           "job_retry_policy", "list_jobs", "reap_expired", "retry"]

log = logging.getLogger(__name__)

MAX_ERROR_CHARS = 4000


class JobStateError(RuntimeError):
    """A transition that the job's current state does not allow (e.g. retry of a running job)."""


def job_retry_policy(settings: WorkerSettings) -> RetryPolicy:
    """The retry policy of jobs, from ``[worker]`` (no age limit: a job is retried until its attempts run out)."""
    return RetryPolicy(initial_seconds=settings.backoff_initial_seconds, multiplier=settings.backoff_multiplier,
                       max_seconds=settings.backoff_max_seconds, max_attempts=settings.max_attempts)


@dataclass(frozen=True)
class ClaimedJob:
    job_id: int
    series_instance_uid: str
    study_instance_uid: str
    attempts: int
    """This run's number (1 for the first run)."""
    max_attempts: int
    instance_count: int
    supersedes_job_id: int | None
    lease_expires_at: datetime


def enqueue(engine: sqlalchemy.Engine, series_instance_uid: str, *, max_attempts: int,
            now: datetime | None = None) -> int | None:
    """Queue a job for the series. Returns the job id, or None when the series already has an active job.
    Raises db.queries.SeriesStateError when the series' status may not become queued (e.g. rejected)."""
    with write_session(engine) as session:
        return enqueue_in_session(session, series_instance_uid, max_attempts=max_attempts, now=now)


def enqueue_in_session(session: Session, series_instance_uid: str, *, max_attempts: int,
                       now: datetime | None = None, actor: str = "scheduler") -> int | None:
    """``enqueue`` inside the caller's transaction (the scheduler marks the series in the same one)."""
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
    now = now or utcnow()
    series = session.scalar(select(Series).where(Series.series_instance_uid == series_instance_uid))
    if series is None:
        raise KeyError(f"series {series_instance_uid} is not known")
    active = session.scalar(select(Job.id).where(Job.series_instance_uid == series_instance_uid,
                                                 Job.status.in_(list(ACTIVE_JOB_STATUSES))))
    if active is not None:
        return None
    ensure_series_transition(series, SeriesStatus.QUEUED)  # refused before anything is written
    previous = session.scalar(
        select(Job.id).where(Job.series_instance_uid == series_instance_uid, Job.status == JobStatus.SUCCEEDED)
        .order_by(Job.id.desc()).limit(1))
    job = Job(series_id=series.id, series_instance_uid=series_instance_uid,
              study_instance_uid=series.study_instance_uid, status=JobStatus.QUEUED, attempts=0,
              max_attempts=max_attempts, instance_count=series.instance_count, run_after=now, created_at=now,
              supersedes_job_id=previous)
    try:
        with session.begin_nested():  # PostgreSQL: a concurrent enqueue hits the unique index; keep the tx usable
            session.add(job)
            session.flush()
    except IntegrityError:
        return None
    _event(session, job.id, None, JobStatus.QUEUED, actor, f"{series.instance_count} instances"
           + (f"; replaces results of job {previous}" if previous else ""), now)
    # False only when the series changed concurrently: the job stays (it reads every stored instance when it
    # runs) and the scheduler decides about the series again.
    decide_series(session, series, SeriesStatus.QUEUED, instance_count=series.instance_count, reason=None, now=now)
    return job.id


def absorb_into_queued_job(session: Session, series_instance_uid: str, *, now: datetime | None = None) -> int | None:
    """Instances arrived for a series whose job is still queued (not started): that job will read every stored
    instance when it runs, so it takes them over instead of a second job later. Returns the job id, or None when
    the series' active job is already running (then a new job follows once it ends)."""
    now = now or utcnow()
    job = session.scalars(select(Job).where(Job.series_instance_uid == series_instance_uid,
                                            Job.status == JobStatus.QUEUED).with_for_update()).first()
    series = session.scalar(select(Series).where(Series.series_instance_uid == series_instance_uid))
    if job is None or series is None:
        return None
    ensure_series_transition(series, SeriesStatus.QUEUED)  # refused before anything is written
    job.instance_count = series.instance_count
    decide_series(session, series, SeriesStatus.QUEUED, instance_count=series.instance_count, reason=None, now=now)
    return job.id


def claim_next(engine: sqlalchemy.Engine, *, worker_id: str, lease_seconds: float,
               now: datetime | None = None) -> ClaimedJob | None:
    """Claim the oldest due queued job: it becomes running with a lease owned by ``worker_id``."""
    now = now or utcnow()
    due = (Job.status == JobStatus.QUEUED, Job.run_after <= now)
    if not _exists(engine, select(Job.id).where(*due).limit(1)):
        return None  # the common idle case costs a read, not a write lock
    query = select(Job).where(*due).order_by(Job.run_after, Job.id).limit(1)
    if not is_sqlite(engine):
        query = query.with_for_update(skip_locked=True)
    with write_session(engine) as session:
        job = session.scalars(query).first()
        if job is None:
            return None
        lease = now + timedelta(seconds=lease_seconds)
        done = session.execute(
            update(Job).where(Job.id == job.id, Job.status == JobStatus.QUEUED)
            .values(status=JobStatus.RUNNING, attempts=Job.attempts + 1, lease_owner=worker_id,
                    lease_expires_at=lease, heartbeat_at=now, started_at=now)
            .execution_options(synchronize_session=False))
        if not _rowcount(done):  # cannot happen under the lock; stay safe
            return None
        session.refresh(job)
        _event(session, job.id, JobStatus.QUEUED, JobStatus.RUNNING, worker_id, f"attempt {job.attempts}", now)
        return ClaimedJob(job.id, job.series_instance_uid, job.study_instance_uid, job.attempts, job.max_attempts,
                          job.instance_count, job.supersedes_job_id, lease)


def heartbeat(engine: sqlalchemy.Engine, job_id: int, *, worker_id: str, lease_seconds: float,
              now: datetime | None = None) -> bool:
    """Renew the lease. False when the job is no longer running under this worker (lease lost)."""
    now = now or utcnow()
    with write_session(engine) as session:
        done = session.execute(
            update(Job).where(Job.id == job_id, Job.status == JobStatus.RUNNING, Job.lease_owner == worker_id)
            .values(lease_expires_at=now + timedelta(seconds=lease_seconds), heartbeat_at=now)
            .execution_options(synchronize_session=False))
        return bool(_rowcount(done))


def finish(engine: sqlalchemy.Engine, job_id: int, *, worker_id: str, success: JobSuccess,
           peer_names: Sequence[str], now: datetime | None = None) -> bool:
    """Success: in ONE transaction mark the job succeeded, store the summary, per-vertebra rows, result objects
    and one export per (object, peer); supersede the series' earlier results. False when the lease was lost
    (nothing is written then)."""
    now = now or utcnow()
    try:
        with write_session(engine) as session:
            job = _running_job(session, job_id, worker_id)
            _transition(session, job, JobStatus.SUCCEEDED, worker_id, f"{len(success.objects)} result objects", now)
            job.finished_at = now
            job.lease_owner = None
            job.lease_expires_at = None
            job.last_error = None
            record_results(session, job, success, peer_names, now)
    except _LeaseLostError as lost:
        log.warning("job %s: not recorded as succeeded: %s", job_id, lost)
        return False
    return True


def fail(engine: sqlalchemy.Engine, job_id: int, *, worker_id: str, error: str, retryable: bool,
         policy: RetryPolicy | None = None, now: datetime | None = None) -> JobStatus | None:
    """A run ended with an error. Retryable: queued again after the policy's delay, or dead after the job's
    max_attempts. Not retryable (the input is unusable): failed. Returns the new status, None when the lease was
    lost. Without ``policy`` the ``[worker]`` defaults apply."""
    policy = policy or job_retry_policy(WorkerSettings())
    now = now or utcnow()
    error = error[:MAX_ERROR_CHARS]
    try:
        with write_session(engine) as session:
            job = _running_job(session, job_id, worker_id)
            if not retryable:
                target = JobStatus.FAILED
            elif job.attempts >= job.max_attempts:
                target = JobStatus.DEAD
            else:
                target = JobStatus.QUEUED
            _transition(session, job, target, worker_id, error, now)
            job.last_error = error
            job.lease_owner = None
            job.lease_expires_at = None
            if target == JobStatus.QUEUED:
                job.run_after = now + timedelta(seconds=policy.delay_seconds(job.attempts))
            else:
                job.finished_at = now
            return target
    except _LeaseLostError as lost:
        log.warning("job %s: failure not recorded: %s", job_id, lost)
        return None


def reap_expired(engine: sqlalchemy.Engine, *, now: datetime | None = None, actor: str = "reaper") -> list[int]:
    """Running jobs whose lease expired (worker died or hung): re-queued now, or dead after max_attempts."""
    now = now or utcnow()
    expired = (Job.status == JobStatus.RUNNING, Job.lease_expires_at < now)
    if not _exists(engine, select(Job.id).where(*expired).limit(1)):
        return []
    query = select(Job).where(*expired).order_by(Job.id)
    if not is_sqlite(engine):
        query = query.with_for_update(skip_locked=True)
    reaped: list[int] = []
    with write_session(engine) as session:
        for job in session.scalars(query).all():
            _requeue(session, job, f"lease of {job.lease_owner} expired at {job.lease_expires_at:%Y-%m-%dT%H:%M:%SZ} "
                                   f"(attempt {job.attempts})", actor, now)
            reaped.append(job.id)
    if reaped:
        log.warning("reaped %d job(s) with expired leases: %s", len(reaped), reaped)
    return reaped


def reclaim_orphaned(engine: sqlalchemy.Engine, *, now: datetime | None = None, actor: str = "reclaim") -> list[int]:
    """Running jobs whose lease holder is known to be gone (a killed worker or node on this host, see
    db.lease_owner): re-queued at once, or dead after max_attempts, without waiting for the lease to expire."""
    now = now or utcnow()
    running = select(Job.id, Job.lease_owner).where(Job.status == JobStatus.RUNNING, Job.lease_owner.is_not(None))
    with read_session(engine) as session:
        gone = [row.id for row in session.execute(running) if holder_is_gone(row.lease_owner)]
    if not gone:
        return []
    query = select(Job).where(Job.id.in_(gone), Job.status == JobStatus.RUNNING).order_by(Job.id)
    if not is_sqlite(engine):
        query = query.with_for_update(skip_locked=True)
    reclaimed: list[int] = []
    with write_session(engine) as session:
        for job in session.scalars(query).all():
            if not holder_is_gone(job.lease_owner):  # re-checked under the lock
                continue
            _requeue(session, job, f"lease holder {job.lease_owner} is gone (attempt {job.attempts})", actor, now)
            reclaimed.append(job.id)
    if reclaimed:
        log.warning("reclaimed %d job(s) from lease holders that are gone: %s", len(reclaimed), reclaimed)
    return reclaimed


def _requeue(session: Session, job: Job, detail: str, actor: str, now: datetime) -> None:
    """A running job whose worker is gone: queued again now, or dead after max_attempts."""
    target = JobStatus.DEAD if job.attempts >= job.max_attempts else JobStatus.QUEUED
    _transition(session, job, target, actor, detail, now)
    job.lease_owner = None
    job.lease_expires_at = None
    job.last_error = detail
    if target == JobStatus.QUEUED:
        job.run_after = now
    else:
        job.finished_at = now


def retry(engine: sqlalchemy.Engine, job_id: int, *, now: datetime | None = None, actor: str = "cli") -> None:
    """Manual retry of a failed or dead job: queued again with a fresh attempt budget."""
    now = now or utcnow()
    with write_session(engine) as session:
        job = session.get(Job, job_id)
        if job is None:
            raise KeyError(f"job {job_id} does not exist")
        if not can_transition(JobStatus(job.status), JobStatus.QUEUED) or job.status == JobStatus.RUNNING:
            raise JobStateError(f"job {job_id} is {job.status}; only failed or dead jobs can be retried")
        active = session.scalar(select(Job.id).where(Job.series_instance_uid == job.series_instance_uid,
                                                     Job.status.in_(list(ACTIVE_JOB_STATUSES)), Job.id != job.id))
        if active is not None:
            raise JobStateError(f"series of job {job_id} already has active job {active}")
        _transition(session, job, JobStatus.QUEUED, actor, "manual retry", now)
        job.attempts = 0
        job.run_after = now
        job.finished_at = None


# --- read side (CLI, HTTP) -------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobView:
    job_id: int
    series_instance_uid: str
    study_instance_uid: str
    status: str
    attempts: int
    max_attempts: int
    instance_count: int
    created_at: datetime
    finished_at: datetime | None
    last_error: str | None
    summary_bmd_mg_cm3: float | None
    summary_category: str | None
    summary_levels: str | None
    result_dir: str | None
    supersedes_job_id: int | None


def _view(job: Job) -> JobView:
    return JobView(job.id, job.series_instance_uid, job.study_instance_uid, job.status, job.attempts,
                   job.max_attempts, job.instance_count, job.created_at, job.finished_at, job.last_error,
                   job.summary_bmd_mg_cm3, job.summary_category, job.summary_levels, job.result_dir,
                   job.supersedes_job_id)


def list_jobs(engine: sqlalchemy.Engine, *, status: str | None = None, limit: int = 50) -> list[JobView]:
    query = select(Job).order_by(Job.id.desc()).limit(limit)
    if status:
        query = query.where(Job.status == status)
    with read_session(engine) as session:
        return [_view(j) for j in session.scalars(query).all()]


def get_job(engine: sqlalchemy.Engine, job_id: int) -> JobView | None:
    with read_session(engine) as session:
        job = session.get(Job, job_id)
        return None if job is None else _view(job)


EventRow = tuple[datetime, str | None, str, str | None, str | None]
"""(at, from_status, to_status, actor, detail)."""


def job_events(engine: sqlalchemy.Engine, job_id: int) -> list[EventRow]:
    with read_session(engine) as session:
        rows = session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)).all()
        return [(e.at, e.from_status, e.to_status, e.actor, e.detail) for e in rows]


# --- internals -------------------------------------------------------------------------------------------


def _exists(engine: sqlalchemy.Engine, query: sqlalchemy.Select[Any]) -> bool:
    with read_session(engine) as session:
        return session.execute(query).first() is not None


class _LeaseLostError(Exception):
    pass


def _running_job(session: Session, job_id: int, worker_id: str) -> Job:
    job = session.get(Job, job_id, with_for_update=True)  # row lock on PostgreSQL; SQLite holds the db lock
    if job is None:
        raise KeyError(f"job {job_id} does not exist")
    if job.status != JobStatus.RUNNING or job.lease_owner != worker_id:
        raise _LeaseLostError(f"job is {job.status} owned by {job.lease_owner}, not running under {worker_id}")
    return job


def _transition(session: Session, job: Job, target: JobStatus, actor: str | None, detail: str | None,
                now: datetime) -> None:
    current = JobStatus(job.status)
    if not can_transition(current, target):
        raise JobStateError(f"job {job.id}: transition {current} -> {target} is not allowed")
    done = session.execute(
        update(Job).where(Job.id == job.id, Job.status == current).values(status=target)
        .execution_options(synchronize_session=False))
    if not _rowcount(done):
        raise _LeaseLostError(f"job {job.id} changed status concurrently")
    job.status = target
    _event(session, job.id, current, target, actor, detail, now)


def _event(session: Session, job_id: int, from_status: JobStatus | None, to_status: JobStatus, actor: str | None,
           detail: str | None, now: datetime) -> None:
    session.add(JobEvent(job_id=job_id, from_status=from_status, to_status=to_status, at=now, actor=actor,
                         detail=(detail or "")[:MAX_ERROR_CHARS] or None))


def _rowcount(result: object) -> int:
    """Rows matched by an UPDATE (the CursorResult of session.execute(update(...)))."""
    return int(getattr(result, "rowcount", 0) or 0)
