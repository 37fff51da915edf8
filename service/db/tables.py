"""SQLAlchemy 2.0 ORM tables. The schema is created by the Alembic migrations (alembic/versions), never by
``create_all`` in production; a test checks that the migrations and these classes agree.

Status columns hold plain strings; their values, transitions and who may change them live in
service/domain/status.py (jobs: only queue/jobs.py; exports: only export/outbox.py; series: only the series-status
section of db/queries.py). SQL text that names statuses is derived from those enums.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from service.domain.status import ACTIVE_JOB_STATUSES, SeriesStatus, status_in_sql

UID = String(64)  # DICOM UIDs are at most 64 characters
AE = String(16)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both backends (SQLite stores naive UTC text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} given to a UTC column; use datetime.now(UTC)")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Series(Base):
    """A series as received, across associations; the scheduler's unit of work."""

    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    modality: Mapped[str] = mapped_column(String(16), default="")
    first_received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_received_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    """Stored (not ignored/rejected) instances."""
    status: Mapped[str] = mapped_column(String(16), default=SeriesStatus.RECEIVING.value, index=True)
    """A domain.status.SeriesStatus; written only by the series-status section of db/queries.py."""
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    """Why the series was rejected or not selected (human readable, no patient data)."""
    checked_instance_count: Mapped[int] = mapped_column(Integer, default=0)
    """instance_count when the scheduler last decided about this series (0 = never)."""
    checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    instances: Mapped[list[Instance]] = relationship(back_populates="series")


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    study_instance_uid: Mapped[str] = mapped_column(UID)
    series_instance_uid: Mapped[str] = mapped_column(UID)
    series_id: Mapped[int | None] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), index=True,
                                                  nullable=True)
    modality: Mapped[str] = mapped_column(String(16), default="")
    transfer_syntax_uid: Mapped[str] = mapped_column(UID, default="")
    path: Mapped[str | None] = mapped_column(Text, nullable=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    calling_ae_title: Mapped[str] = mapped_column(AE, default="")
    status: Mapped[str] = mapped_column(String(16))
    """A domain.status.InstanceStatus."""
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)

    series: Mapped[Series | None] = relationship(back_populates="instances")


ACTIVE_JOB_STATUSES_SQL = status_in_sql(ACTIVE_JOB_STATUSES)
"""``status IN ('queued', 'running')``: the predicate of the one-active-job-per-series index."""


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        # At most one active (queued or running) job per series.
        Index("uq_jobs_active_series", "series_instance_uid", unique=True,
              sqlite_where=text(ACTIVE_JOB_STATUSES_SQL), postgresql_where=text(ACTIVE_JOB_STATUSES_SQL)),
        Index("ix_jobs_status_run_after", "status", "run_after"),
        Index("ix_jobs_patient", "patient_id", "issuer_of_patient_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(UID)
    study_instance_uid: Mapped[str] = mapped_column(UID)
    status: Mapped[str] = mapped_column(String(16))
    """A domain.status.JobStatus; written only by queue/jobs.py."""
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    """Runs started (claims)."""
    max_attempts: Mapped[int] = mapped_column(Integer)
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    """Stored instances of the series when the job was queued."""
    run_after: Mapped[datetime] = mapped_column(UTCDateTime)
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    supersedes_job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"), nullable=True)
    """The earlier succeeded job of the same series whose results this job's results replace."""
    # study summary (set on success)
    summary_bmd_mg_cm3: Mapped[float | None] = mapped_column(Float, nullable=True)
    summary_category: Mapped[str | None] = mapped_column(String(16), nullable=True)
    summary_levels: Mapped[str | None] = mapped_column(String(128), nullable=True)
    summary_method: Mapped[str | None] = mapped_column(Text, nullable=True)
    result_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    """The result.json document of the run."""
    result_dir: Mapped[str | None] = mapped_column(Text, nullable=True)
    # patient identity and study facts for the BMD trend (issue 20; recorded by the worker from the series headers)
    patient_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    """Patient ID (0010,0020): PATIENT DATA, erased after ``[results] patient_identity_retention_days``."""
    issuer_of_patient_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    """Issuer of Patient ID (0010,0021), "" when the header has none; erased with ``patient_id``."""
    patient_identity_recorded_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    """When the identifiers were recorded (the retention clock); None once erased or never recorded."""
    study_date: Mapped[date | None] = mapped_column(Date, nullable=True)
    """Study Date (0008,0020) of the series' study."""
    kvp: Mapped[float | None] = mapped_column(Float, nullable=True)
    """KVP (0018,0060) of the series (the trend warns when it differs from the prior's)."""

    events: Mapped[list[JobEvent]] = relationship(back_populates="job", order_by="JobEvent.id")


class JobEvent(Base):
    """One row per job status transition (an audit trail)."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    from_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    to_status: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str | None] = mapped_column(String(128), nullable=True)
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)

    job: Mapped[Job] = relationship(back_populates="events")


class VertebraResult(Base):
    __tablename__ = "vertebra_results"
    __table_args__ = (UniqueConstraint("job_id", "level", name="uq_vertebra_results_job_level"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    level: Mapped[str] = mapped_column(String(4))
    level_value: Mapped[int] = mapped_column(Integer)
    centroid_x_mm: Mapped[float] = mapped_column(Float)
    centroid_y_mm: Mapped[float] = mapped_column(Float)
    centroid_z_mm: Mapped[float] = mapped_column(Float)
    roi_method: Mapped[str] = mapped_column(String(32))
    trabecular_hu_mean: Mapped[float | None] = mapped_column(Float, nullable=True)
    trabecular_hu_median: Mapped[float | None] = mapped_column(Float, nullable=True)
    trabecular_hu_sd: Mapped[float | None] = mapped_column(Float, nullable=True)
    voxel_count: Mapped[int] = mapped_column(Integer)
    roi_volume_mm3: Mapped[float] = mapped_column(Float)
    bmd_mg_cm3: Mapped[float | None] = mapped_column(Float, nullable=True)
    evaluable: Mapped[bool] = mapped_column(Boolean)
    exclusion_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    exclusion_detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    level_uncertain: Mapped[bool] = mapped_column(Boolean, default=False)
    fracture_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    """A domain.results.FractureStatus (fractured / not_fractured / not_measurable); None: not checked."""
    genant_grade: Mapped[int | None] = mapped_column(Integer, nullable=True)
    """Genant grade 0-3; None when the height was not measurable or not checked."""
    height_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    """Largest relative height loss (fraction, 0.32 = 32 %); None when not measured."""


class ResultObject(Base):
    """A DICOM object the node produced (SR, SEG, key image), stored once under storage_dir."""

    __tablename__ = "result_objects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True, nullable=True)
    """The job whose results this is; None for an object of an indeterminate report (``indeterminate_report_id``)."""
    indeterminate_report_id: Mapped[int | None] = mapped_column(
        ForeignKey("indeterminate_reports.id", ondelete="CASCADE"), index=True, nullable=True)
    """The indeterminate report this object belongs to (its SR or key image); None for a job's results."""
    kind: Mapped[str] = mapped_column(String(16))
    """sr | seg | key_image."""
    sop_class_uid: Mapped[str] = mapped_column(UID)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    study_instance_uid: Mapped[str] = mapped_column(UID)
    series_instance_uid: Mapped[str] = mapped_column(UID)
    path: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    superseded_by_job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"), nullable=True)


class IndeterminateReport(Base):
    """An "indeterminate" SR + key image the node sends when a study, or its selected series, cannot be assessed
    (``[results] report_unassessable``). Written only by queue/job_results.py.

    One row per cause, ``dedup_key`` unique: ``study:<study UID>:<digest of the rejected series' UIDs>`` (no series of
    a chest/abdomen study could be used) or ``no-vertebra:<series UID>`` (the selected series' job found no vertebra),
    so a study re-sent with the same unusable series gets no second report. Pending while ``stored_at`` is None:
    the objects are built, written and queued for export (result_objects + exports) in one transaction that sets
    ``stored_at``; a build that fails is retried by the scheduler up to a few ``attempts``."""

    __tablename__ = "indeterminate_reports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dedup_key: Mapped[str] = mapped_column(String(160), unique=True)
    scope: Mapped[str] = mapped_column(String(16))
    """study (no series of the study usable) | series (no vertebra found in the selected series)."""
    study_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    series_instance_uid: Mapped[str | None] = mapped_column(UID, nullable=True)
    """scope series: the series whose job found no vertebra."""
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), nullable=True)
    """scope series: that job (it ends failed with its reason)."""
    reasons_json: Mapped[str] = mapped_column(Text)
    """JSON list of {"series_instance_uid", "reason"}: the series the report names, in order (no patient data)."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    """Builds tried and failed."""
    stored_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    """When its objects were stored and queued for export; None while pending."""
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)


class Export(Base):
    """Outbox: one row per (result object, destination peer)."""

    __tablename__ = "exports"
    __table_args__ = (
        UniqueConstraint("result_object_id", "peer_name", name="uq_exports_object_peer"),
        Index("ix_exports_status_next", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    result_object_id: Mapped[int] = mapped_column(ForeignKey("result_objects.id", ondelete="CASCADE"), index=True)
    peer_name: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    """A domain.status.ExportStatus; written only by export/outbox.py."""
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    warning: Mapped[str | None] = mapped_column(Text, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)

    result_object: Mapped[ResultObject] = relationship()


class User(Base):
    """A local account of the web dashboard (service/web/users.py writes it; ``bmd-node users`` manages it)."""

    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("username", name="uq_users_username"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    """viewer (reads) | admin (reads, retries, re-runs)."""
    password_hash: Mapped[str] = mapped_column(Text)
    """``scrypt$n$r$p$salt-hex$hash-hex`` (hashlib.scrypt); never the password."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    password_changed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    """A session issued before this moment is no longer valid (password change logs every session out)."""
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
