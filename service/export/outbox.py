"""The outbox: the only writer of export status.

Rows are created by the worker in the same transaction as the job's success (``create_exports``);
the exporter (export/exporter.py) claims due rows, sends, and reports the outcome here.

Retry policy: the node's one ``RetryPolicy`` (domain/retry.py, shared with the job queue). ``mark_export_retry``
takes an optional ``policy``; the exporter builds it from ``[exporter]`` with ``export_retry_policy``. Without one,
the defaults of ExporterSettings apply. The delay before attempt n+1 is
``min(backoff_max_seconds, backoff_initial_seconds * backoff_multiplier ** (n - 1))``; once ``attempts``
reaches ``max_attempts`` or the export is older than ``max_age_seconds`` the row goes to the dead letter
instead. ``attempts`` counts claims: the task of the first send has ``attempts == 1``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy
from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from service.config import ExporterSettings
from service.db.engine import is_sqlite, read_session, write_session
from service.db.lease_owner import holder_is_gone
from service.db.tables import Export, ResultObject, utcnow
from service.domain.retry import RetryPolicy
from service.domain.status import ExportStatus

log = logging.getLogger(__name__)

MAX_ERROR_CHARS = 2000


def export_retry_policy(settings: ExporterSettings) -> RetryPolicy:
    """The retry policy of exports, from ``[exporter]`` (attempts and age both limited)."""
    return RetryPolicy(initial_seconds=settings.backoff_initial_seconds, multiplier=settings.backoff_multiplier,
                       max_seconds=settings.backoff_max_seconds, max_attempts=settings.max_attempts,
                       max_age_seconds=settings.max_age_seconds)


@dataclass(frozen=True)
class ExportTask:
    export_id: int
    peer_name: str
    path: str
    sop_class_uid: str
    sop_instance_uid: str
    attempts: int


def create_exports(session: Session, result_object_id: int, peer_names: Iterable[str], *,
                   now: datetime | None = None) -> list[Export]:
    """Pending export rows for one result object, inside the caller's transaction (the job's success)."""
    now = now or utcnow()
    rows = [Export(result_object_id=result_object_id, peer_name=name, status=ExportStatus.PENDING, attempts=0,
                   next_attempt_at=now, created_at=now) for name in peer_names]
    session.add_all(rows)
    return rows


def cancel_pending_for_objects(session: Session, result_object_ids: Iterable[int], *, reason: str) -> int:
    """Cancel not-yet-sent exports of replaced objects (inside the caller's transaction). Returns the count."""
    ids = list(result_object_ids)
    if not ids:
        return 0
    result = session.execute(
        update(Export)
        .where(Export.result_object_id.in_(ids), Export.status == ExportStatus.PENDING)
        .values(status=ExportStatus.CANCELLED, last_error=reason[:MAX_ERROR_CHARS])
        .execution_options(synchronize_session=False)
    )
    return _rowcount(result)


def claim_due_exports(engine: sqlalchemy.Engine, *, exporter_id: str, limit: int, lease_seconds: float,
                      now: datetime | None = None, peer_names: Iterable[str] | None = None) -> list[ExportTask]:
    """Claim up to ``limit`` exports that are due (pending and next_attempt_at <= now, or sending with an
    expired lease: an exporter died mid-send). They become 'sending' with a lease; attempts is incremented.

    ``peer_names`` restricts the claim to those destinations (an exporter only sends to peers it knows).
    """
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    now = now or utcnow()
    due = or_(
        and_(Export.status == ExportStatus.PENDING, Export.next_attempt_at <= now),
        and_(Export.status == ExportStatus.SENDING, Export.lease_expires_at < now),
    )
    query = select(Export).where(due).order_by(Export.next_attempt_at, Export.id).limit(limit)
    peek = select(Export.id).where(due).limit(1)
    if peer_names is not None:
        query = query.where(Export.peer_name.in_(list(peer_names)))
        peek = peek.where(Export.peer_name.in_(list(peer_names)))
    with read_session(engine) as session:  # the common idle case costs a read, not a write lock
        if session.execute(peek).first() is None:
            return []
    if not is_sqlite(engine):
        query = query.with_for_update(skip_locked=True, of=Export)
    tasks: list[ExportTask] = []
    with write_session(engine) as session:
        for row in session.scalars(query).all():
            row.status = ExportStatus.SENDING
            row.attempts += 1
            row.lease_owner = exporter_id
            row.lease_expires_at = now + timedelta(seconds=lease_seconds)
            obj = session.get(ResultObject, row.result_object_id)
            if obj is None:  # cannot happen with the foreign key; keep the row visible rather than crash
                continue
            tasks.append(ExportTask(row.id, row.peer_name, obj.path, obj.sop_class_uid, obj.sop_instance_uid,
                                    row.attempts))
    return tasks


def reclaim_orphaned_exports(engine: sqlalchemy.Engine, *, now: datetime | None = None) -> list[int]:
    """Exports being sent by a holder known to be gone (db.lease_owner): their lease is ended now, so the next claim
    takes them up at once instead of after the lease runs out.  The send may have reached the peer before the holder
    died: it is sent again with the same SOP Instance UID (at-least-once delivery)."""
    now = now or utcnow()
    sending = select(Export.id, Export.lease_owner).where(Export.status == ExportStatus.SENDING)
    with read_session(engine) as session:
        gone = [row.id for row in session.execute(sending) if holder_is_gone(row.lease_owner)]
    if not gone:
        return []
    with write_session(engine) as session:
        session.execute(
            update(Export).where(Export.id.in_(gone), Export.status == ExportStatus.SENDING)
            .values(lease_expires_at=now - timedelta(seconds=1))
            .execution_options(synchronize_session=False)
        )
    log.warning("reclaimed %d export(s) from lease holders that are gone: %s", len(gone), gone)
    return gone


def mark_export_sent(engine: sqlalchemy.Engine, export_id: int, *, status_code: int,
                     warning: str | None = None, now: datetime | None = None) -> None:
    """The peer accepted the object (success or warning status)."""
    now = now or utcnow()
    with write_session(engine) as session:
        done = session.execute(
            update(Export).where(Export.id == export_id, Export.status == ExportStatus.SENDING)
            .values(status=ExportStatus.SENT, sent_at=now, status_code=status_code, warning=warning,
                    lease_owner=None, lease_expires_at=None, last_error=None)
            .execution_options(synchronize_session=False)
        )
        if not _rowcount(done):
            log.warning("export %s: marked %s but was not %s (%s)", export_id, ExportStatus.SENT,
                        ExportStatus.SENDING, _status_of(session, export_id))


def mark_export_retry(engine: sqlalchemy.Engine, export_id: int, *, error: str, now: datetime | None = None,
                      policy: RetryPolicy | None = None) -> str:
    """A transient or unknown failure: back to pending after the backoff, or dead when the policy's attempts or
    age are exhausted. Returns the new status ('pending' or 'dead'; the current one if it was not sending)."""
    policy = policy or export_retry_policy(ExporterSettings())
    now = now or utcnow()
    with write_session(engine) as session:
        row = session.get(Export, export_id)
        if row is None:
            raise KeyError(f"export_id {export_id} does not exist")
        if row.status != ExportStatus.SENDING:
            log.warning("export %s: retry requested but status is %s", export_id, row.status)
            return str(row.status)
        age_seconds = (now - row.created_at).total_seconds()
        if policy.gives_up(row.attempts, age_seconds):
            row.status = ExportStatus.DEAD
            row.last_error = (f"gave up after {row.attempts} attempts / {age_seconds:.0f} s: {error}")[
                :MAX_ERROR_CHARS]
        else:
            row.status = ExportStatus.PENDING
            row.next_attempt_at = now + timedelta(seconds=policy.delay_seconds(row.attempts))
            row.last_error = error[:MAX_ERROR_CHARS]
        row.lease_owner = None
        row.lease_expires_at = None
        return str(row.status)


def mark_export_dead(engine: sqlalchemy.Engine, export_id: int, *, error: str) -> None:
    """A permanent refusal (association rejected permanently, SOP class not supported, ...): dead letter."""
    with write_session(engine) as session:
        done = session.execute(
            update(Export).where(Export.id == export_id,
                                 Export.status.in_([ExportStatus.SENDING, ExportStatus.PENDING]))
            .values(status=ExportStatus.DEAD, last_error=error[:MAX_ERROR_CHARS], lease_owner=None,
                    lease_expires_at=None)
            .execution_options(synchronize_session=False)
        )
        if not _rowcount(done):
            log.warning("export %s: marked dead but status was %s", export_id, _status_of(session, export_id))


def requeue_dead_exports(engine: sqlalchemy.Engine, *, export_ids: Iterable[int] | None = None,
                         now: datetime | None = None) -> int:
    """Manual retry of dead-letter exports (all, or the given ids); attempts restart from 0."""
    now = now or utcnow()
    query = update(Export).where(Export.status == ExportStatus.DEAD)
    if export_ids is not None:
        query = query.where(Export.id.in_(list(export_ids)))
    with write_session(engine) as session:
        result = session.execute(query.values(status=ExportStatus.PENDING, attempts=0, next_attempt_at=now,
                                              created_at=now).execution_options(synchronize_session=False))
        return _rowcount(result)


def _status_of(session: Session, export_id: int) -> str | None:
    return session.scalar(select(Export.status).where(Export.id == export_id))


def _rowcount(result: object) -> int:
    """Rows matched by an UPDATE (the CursorResult of session.execute(update(...)))."""
    return int(getattr(result, "rowcount", 0) or 0)
