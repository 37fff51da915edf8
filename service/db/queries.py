"""Queries shared by the network side (SCP handlers) and the CLI. Job and export status live in queue/."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.db.engine import read_session, write_session
from service.db.tables import Export, Instance, Job, Series, utcnow
from service.domain.status import InstanceStatus, SeriesStatus

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
    """"stored" | "ignored" | "rejected"."""
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


def _record_instance(session: Session, record: InstanceRecord, now: datetime) -> bool:
    stored = record.status == InstanceStatus.STORED
    series: Series | None = None
    if record.series_instance_uid:
        series = session.scalar(select(Series).where(Series.series_instance_uid == record.series_instance_uid))
    if series is None and record.series_instance_uid:
        series = Series(
            series_instance_uid=record.series_instance_uid,
            study_instance_uid=record.study_instance_uid,
            modality=record.modality,
            first_received_at=now,
            last_received_at=now,
            instance_count=0,
            status=SeriesStatus.RECEIVING if stored else SeriesStatus.IGNORED,
            checked_instance_count=0,
        )
        session.add(series)
        session.flush()
    if series is not None:
        # a rejected instance without a Series Instance UID belongs to no series
        series.last_received_at = now

    existing = session.scalar(select(Instance).where(Instance.sop_instance_uid == record.sop_instance_uid))
    if existing is not None:
        if existing.status == InstanceStatus.STORED or not stored:
            return False
        # an earlier copy was ignored/rejected, this one is stored: keep the good one
        existing.status = record.status
        existing.reason = None
        existing.path = record.path
        existing.size_bytes = record.size_bytes
        existing.transfer_syntax_uid = record.transfer_syntax_uid
        existing.received_at = now
    else:
        session.add(Instance(
            sop_instance_uid=record.sop_instance_uid,
            sop_class_uid=record.sop_class_uid,
            study_instance_uid=record.study_instance_uid,
            series_instance_uid=record.series_instance_uid,
            series_id=series.id if series is not None else None,
            modality=record.modality,
            transfer_syntax_uid=record.transfer_syntax_uid,
            path=record.path,
            size_bytes=record.size_bytes,
            calling_ae_title=record.calling_ae_title,
            status=record.status,
            reason=record.reason,
            received_at=now,
        ))
    if stored and series is not None:
        series.instance_count += 1
        series.status = SeriesStatus.RECEIVING
    session.flush()
    return True


@dataclass(frozen=True)
class SeriesRow:
    series_instance_uid: str
    study_instance_uid: str
    modality: str
    instance_count: int
    status: str
    reason: str | None
    last_received_at: datetime


def list_series(engine: sqlalchemy.Engine, *, limit: int = 100) -> list[SeriesRow]:
    with read_session(engine) as session:
        rows = session.scalars(select(Series).order_by(Series.last_received_at.desc()).limit(limit)).all()
        return [SeriesRow(r.series_instance_uid, r.study_instance_uid, r.modality, r.instance_count, r.status,
                          r.reason, r.last_received_at) for r in rows]


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
