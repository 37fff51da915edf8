"""Queries shared by the network side (SCP handlers), the scheduler, the worker and the CLI.

This module is the ONE writer of series status (allowed moves: ``SERIES_TRANSITIONS`` in domain/status.py):
* ``record_instance`` creates a series (receiving; ignored, with the instance's reason, when its first instance is
  not stored) and moves it back to receiving when a stored instance arrives (allowed from every status);
* ``decide_series`` records a decision about a series' stored instances (rejected / not_selected / ignored by the
  scheduler, queued by queue/jobs.py) with a guarded UPDATE ``WHERE id = :id AND status = :expected AND instance_count =
  :count``: when another writer changed the series since it was read, nothing is written and it returns False.
A move the table does not allow raises ``SeriesStateError`` before anything is written. Nothing else assigns
``Series.status``. Job status is written only by queue/jobs.py, export status only by export/outbox.py.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy
from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from service.db.engine import read_session, write_session
from service.db.tables import Export, IndeterminateReport, Instance, Job, Series, utcnow
from service.domain.status import InstanceStatus, SeriesStatus, can_series_transition, series_sources

log = logging.getLogger(__name__)

_INSTANCE_STATUSES = {s.value for s in InstanceStatus}


@dataclass(frozen=True)
class InstanceRecord:
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    modality: str
    transfer_syntax_uid: str
    path: str | None
    size_bytes: int
    calling_ae_title: str
    status: str
    """An InstanceStatus ("stored" | "ignored" | "rejected")."""
    reason: str | None = None

    def __post_init__(self) -> None:
        if self.status not in _INSTANCE_STATUSES:
            raise ValueError(f"status must be one of {sorted(_INSTANCE_STATUSES)}, got {self.status!r}")
        if self.status == InstanceStatus.STORED and not self.path:
            raise ValueError("path is required for a stored instance")
        if not self.sop_instance_uid:
            raise ValueError("sop_instance_uid must not be empty")
        if self.size_bytes < 0:
            raise ValueError(f"size_bytes must be >= 0, got {self.size_bytes}")


def record_instance(engine: sqlalchemy.Engine, record: InstanceRecord, *, now: datetime | None = None) -> bool:
    """Record a received instance. True if new; a duplicate SOP Instance UID returns False (idempotent).

    Every call (duplicate or not) moves the series' last_received_at, so the series stays 'not yet complete'.
    A stored copy of an instance that was earlier rejected/ignored replaces that row (returns True).
    """
    for attempt in range(3):
        try:
            with write_session(engine) as session:
                return _record_instance(session, record, now or utcnow())
        except IntegrityError:
            # PostgreSQL: a concurrent association inserted the same series or instance first; try again.
            if attempt == 2:
                raise
            log.debug("record_instance: concurrent insert, retrying")
    return False  # unreachable


def record_instances(engine: sqlalchemy.Engine, records: Sequence[InstanceRecord], *,
                     now: datetime | None = None) -> list[bool]:
    """``record_instance`` for several instances in ONE transaction (the receiver's batched recorder); per record,
    True if new. A concurrent insert (PostgreSQL, another receiver process) retries the whole batch."""
    for attempt in range(3):
        try:
            with write_session(engine) as session:
                when = now or utcnow()
                batch = _Batch.prefetch(session, records)
                recorded = [_record_instance(session, record, when, batch) for record in records]
                batch.insert_new(session)
                return recorded
        except IntegrityError:
            if attempt == 2:
                raise
            log.debug("record_instances: concurrent insert, retrying")
    return []  # unreachable


def recorded_instance_paths(engine: sqlalchemy.Engine) -> set[str]:
    """Paths of every instance row that has a file (the start-up reconciliation of the receive spool)."""
    with read_session(engine) as session:
        return set(session.scalars(select(Instance.path).where(Instance.path.is_not(None))))


@dataclass
class _Batch:
    """The rows a batch of ``record_instances`` touches, looked up once per batch instead of once per instance.

    Its new instance rows are plain dicts, inserted with ONE executemany at the end of the batch (``insert_new``):
    an ORM object per row cost the receiver about as much CPU as the rest of the recorder (make bench's profile)."""

    series: dict[str, Series]
    instances: dict[str, Instance | dict[str, Any]]
    new: list[dict[str, Any]] = field(default_factory=list)

    def add(self, values: dict[str, Any]) -> None:
        self.new.append(values)
        self.instances[values["sop_instance_uid"]] = values

    def insert_new(self, session: Session) -> None:
        if self.new:
            session.execute(insert(Instance), self.new)

    @classmethod
    def prefetch(cls, session: Session, records: Sequence[InstanceRecord]) -> _Batch:
        uids = sorted({r.sop_instance_uid for r in records})
        series_uids = sorted({r.series_instance_uid for r in records if r.series_instance_uid})
        instances = {i.sop_instance_uid: i for i in session.scalars(
            select(Instance).where(Instance.sop_instance_uid.in_(uids)))}
        series = {s.series_instance_uid: s for s in session.scalars(
            select(Series).where(Series.series_instance_uid.in_(series_uids)))}
        return cls(series, instances)


def _record_instance(session: Session, record: InstanceRecord, now: datetime, batch: _Batch | None = None) -> bool:
    stored = record.status == InstanceStatus.STORED
    series: Series | None = None
    if record.series_instance_uid:
        series = (batch.series.get(record.series_instance_uid) if batch is not None else
                  session.scalar(select(Series).where(Series.series_instance_uid == record.series_instance_uid)))
    if series is None and record.series_instance_uid:
        series = Series(
            series_instance_uid=record.series_instance_uid,
            study_instance_uid=record.study_instance_uid,
            modality=record.modality,
            first_received_at=now,
            last_received_at=now,
            instance_count=0,
            status=_first_series_status(record.series_instance_uid, stored),
            reason=None if stored else record.reason,
            checked_instance_count=0,
        )
        session.add(series)
        session.flush()
        if batch is not None:
            batch.series[series.series_instance_uid] = series
    if series is not None:
        # a rejected instance without a Series Instance UID belongs to no series
        series.last_received_at = now

    existing = (batch.instances.get(record.sop_instance_uid) if batch is not None else
                session.scalar(select(Instance).where(Instance.sop_instance_uid == record.sop_instance_uid)))
    if existing is not None:
        existing_status = existing["status"] if isinstance(existing, dict) else existing.status
        if existing_status == InstanceStatus.STORED or not stored:
            return False
        # an earlier copy was ignored/rejected, this one is stored: keep the good one
        replacement = {"status": record.status, "reason": None, "path": record.path, "size_bytes": record.size_bytes,
                       "transfer_syntax_uid": record.transfer_syntax_uid, "received_at": now}
        if isinstance(existing, dict):
            existing.update(replacement)
        else:
            for name, value in replacement.items():
                setattr(existing, name, value)
    else:
        values = {
            "sop_instance_uid": record.sop_instance_uid,
            "sop_class_uid": record.sop_class_uid,
            "study_instance_uid": record.study_instance_uid,
            "series_instance_uid": record.series_instance_uid,
            "series_id": series.id if series is not None else None,
            "modality": record.modality,
            "transfer_syntax_uid": record.transfer_syntax_uid,
            "path": record.path,
            "size_bytes": record.size_bytes,
            "calling_ae_title": record.calling_ae_title,
            "status": record.status,
            "reason": record.reason,
            "received_at": now,
        }
        if batch is not None:
            batch.add(values)
        else:
            session.add(Instance(**values))
    if stored and series is not None:
        series.instance_count += 1
        _mark_receiving(session, series)
    if batch is None:
        session.flush()  # a batch is flushed once, at its commit
    return True


# --- series status: the one writer ------------------------------------------------------------------------


class SeriesStateError(RuntimeError):
    """A series status change that SERIES_TRANSITIONS does not allow."""


SERIES_DECISIONS = frozenset({SeriesStatus.REJECTED, SeriesStatus.NOT_SELECTED, SeriesStatus.QUEUED,
                              SeriesStatus.IGNORED})
"""What ``decide_series`` records; receiving follows from arriving instances only (and so does ignored for a
series whose first instance was not stored)."""


def ensure_series_transition(series: Series, target: SeriesStatus) -> None:
    """Raise SeriesStateError when ``series`` (as read) may not go to ``target``; writes nothing."""
    current = SeriesStatus(series.status)
    if not can_series_transition(current, target):
        raise SeriesStateError(f"series {series.series_instance_uid}: transition {current} -> {target} "
                               "is not allowed")


def decide_series(session: Session, series: Series, target: SeriesStatus, *, instance_count: int,
                  reason: str | None, now: datetime) -> bool:
    """Record a decision about the series' ``instance_count`` stored instances: ``target`` with ``reason``,
    checked_instance_count and checked_at, inside the caller's transaction.

    Guarded: the UPDATE matches only while the series still has the status it was read with and still
    ``instance_count`` stored instances. Returns False (nothing written) when another writer got there first, e.g.
    an instance arrived meanwhile (the scheduler then decides again on a later tick).
    """
    if target not in SERIES_DECISIONS:
        raise ValueError(f"target must be one of {sorted(SERIES_DECISIONS)}, got {target!r}")
    ensure_series_transition(series, target)
    expected = SeriesStatus(series.status)
    done = session.execute(
        update(Series)
        .where(Series.id == series.id, Series.status == expected, Series.instance_count == instance_count)
        .values(status=target.value, reason=reason, checked_instance_count=instance_count, checked_at=now)
        .execution_options(synchronize_session=False))
    if not _rowcount(done):
        log.info("series %s changed while being decided (%s); not marked %s", series.series_instance_uid,
                 expected, target)
        return False
    for name, value in (("status", target.value), ("reason", reason),
                        ("checked_instance_count", instance_count), ("checked_at", now)):
        set_committed_value(series, name, value)
    return True


def _first_series_status(series_instance_uid: str, stored: bool) -> str:
    target = SeriesStatus.RECEIVING if stored else SeriesStatus.IGNORED
    if not can_series_transition(None, target):  # the table's first move; guards edits of the table
        raise SeriesStateError(f"series {series_instance_uid}: a new series may not start as {target}")
    return target.value


def _mark_receiving(session: Session, series: Series) -> None:
    """A stored instance arrived: the series is receiving again (reason and checked_* are kept)."""
    if series.status == SeriesStatus.RECEIVING:
        return  # nothing to change (the row is written for its count anyway)
    ensure_series_transition(series, SeriesStatus.RECEIVING)
    sources = sorted(s.value for s in series_sources(SeriesStatus.RECEIVING))
    done = session.execute(
        update(Series).where(Series.id == series.id, Series.status.in_(sources))
        .values(status=SeriesStatus.RECEIVING.value)
        .execution_options(synchronize_session=False))
    if _rowcount(done):
        set_committed_value(series, "status", SeriesStatus.RECEIVING.value)


def _rowcount(result: object) -> int:
    """Rows matched by an UPDATE (the CursorResult of session.execute(update(...)))."""
    return int(getattr(result, "rowcount", 0) or 0)


# --- read side ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeriesRow:
    series_instance_uid: str
    study_instance_uid: str
    modality: str
    instance_count: int
    status: str
    reason: str | None
    last_received_at: datetime
    indeterminate_report: str | None = None
    """"indeterminate report 4 (stored)" when an indeterminate report names this series; "pending" before its
    objects are stored and queued for export."""


def list_series(engine: sqlalchemy.Engine, *, limit: int = 100) -> list[SeriesRow]:
    with read_session(engine) as session:
        rows = session.scalars(select(Series).order_by(Series.last_received_at.desc()).limit(limit)).all()
        reports = _indeterminate_reports_naming(session, {r.study_instance_uid for r in rows})
        return [SeriesRow(r.series_instance_uid, r.study_instance_uid, r.modality, r.instance_count, r.status,
                          r.reason, r.last_received_at, reports.get(r.series_instance_uid)) for r in rows]


def _indeterminate_reports_naming(session: Session, study_uids: set[str]) -> dict[str, str]:
    """Series Instance UID -> the latest indeterminate report naming it, as a short text."""
    if not study_uids:
        return {}
    named: dict[str, str] = {}
    for report in session.scalars(select(IndeterminateReport)
                                  .where(IndeterminateReport.study_instance_uid.in_(sorted(study_uids)))
                                  .order_by(IndeterminateReport.id)):
        state = "stored" if report.stored_at is not None else "pending"
        for item in json.loads(report.reasons_json):
            named[str(item["series_instance_uid"])] = f"indeterminate report {report.id} ({state})"
    return named


def stored_instance_paths(engine: sqlalchemy.Engine, series_instance_uid: str) -> list[str]:
    """Paths of the stored instances of a series (ordered by SOP Instance UID; the loader sorts by position)."""
    with read_session(engine) as session:
        paths = session.scalars(
            select(Instance.path)
            .where(Instance.series_instance_uid == series_instance_uid, Instance.status == InstanceStatus.STORED)
            .order_by(Instance.sop_instance_uid)
        ).all()
        return [p for p in paths if p]


def count_by_status(engine: sqlalchemy.Engine) -> dict[str, dict[str, int]]:
    """{'jobs': {...}, 'exports': {...}, 'series': {...}, 'instances': {...}} for /metrics and the CLI."""
    out: dict[str, dict[str, int]] = {}
    with read_session(engine) as session:
        for name, column in (("jobs", Job.status), ("exports", Export.status), ("series", Series.status),
                             ("instances", Instance.status)):
            rows: Sequence[tuple[str, int]] = session.execute(
                select(column, func.count()).group_by(column)).tuples().all()
            out[name] = {status: count for status, count in rows}
    return out


def ping(engine: sqlalchemy.Engine) -> None:
    """Raise if the database cannot be reached."""
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text("SELECT 1"))
