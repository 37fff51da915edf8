"""What a succeeded job leaves behind (its summary, per-vertebra rows, result objects and their exports), and the
"indeterminate" reports of studies or series that could not be assessed (the one writer of indeterminate_reports).

``record_results`` runs inside the transaction of ``queue/jobs.finish`` (after the job's move to succeeded), so a
crash before that commit leaves nothing to send and one after it loses nothing. It writes no job status: job status
has one writer, queue/jobs.py; the export rows it creates get their status from export/outbox.py.

Indeterminate reports (``[results] report_unassessable``): ``record_indeterminate_report`` adds a pending row in the
caller's transaction (the scheduler's decision, or the worker when a job finds no vertebra), unless a row with the
same ``dedup_key`` exists: one report per cause. ``produce_indeterminate_report`` builds the SR and key image, writes
them under ``storage_dir/results/indeterminate-<id>`` and, in one transaction guarded by ``stored_at IS NULL``,
records them as result objects (no job) with one export per peer through the outbox. The objects of an indeterminate
report are never superseded: a later normal result does not withdraw what was sent (it is a true statement about the
series that could not be used at the time).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.db.engine import read_session, write_session
from service.db.queries import stored_instance_paths
from service.db.tables import IndeterminateReport, Job, ResultObject, VertebraResult, utcnow
from service.domain.results import ScreeningResult
from service.export import outbox
from service.pipeline import storage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredObject:
    """A result object already written to storage, to be recorded with the job's success."""

    kind: str
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    path: str
    size_bytes: int
    sha256: str


@dataclass(frozen=True)
class JobSuccess:
    result: ScreeningResult
    objects: tuple[StoredObject, ...]
    result_dir: str
    result_json: dict[str, Any]


def record_results(session: Session, job: Job, success: JobSuccess, peer_names: Sequence[str],
                   now: datetime) -> None:
    """Store the summary, per-vertebra rows, result objects and one export per (object, peer) of ``job``, and
    supersede the series' earlier results (inside the caller's transaction)."""
    summary = success.result.summary
    job.summary_bmd_mg_cm3 = summary.bmd_mg_cm3
    job.summary_category = summary.category.value
    job.summary_levels = ",".join(level.name for level in summary.levels_used)
    job.summary_method = summary.method
    job.result_json = json.dumps(success.result_json, sort_keys=True)
    job.result_dir = success.result_dir
    for m in success.result.vertebrae:
        session.add(VertebraResult(
            job_id=job.id, level=m.level.name, level_value=int(m.level),
            centroid_x_mm=float(m.centroid_lps_mm[0]), centroid_y_mm=float(m.centroid_lps_mm[1]),
            centroid_z_mm=float(m.centroid_lps_mm[2]), roi_method=m.roi_method.value,
            trabecular_hu_mean=m.trabecular_hu_mean, trabecular_hu_median=m.trabecular_hu_median,
            trabecular_hu_sd=m.trabecular_hu_sd, voxel_count=m.voxel_count,
            roi_volume_mm3=m.roi_volume_mm3, bmd_mg_cm3=m.bmd_mg_cm3, evaluable=m.evaluable,
            exclusion_reason=m.exclusion_reason.value if m.exclusion_reason else None,
            exclusion_detail=m.exclusion_detail, level_uncertain=m.level_uncertain,
            fracture_status=m.fracture_status.value if m.fracture_status else None, genant_grade=m.genant_grade,
            height_loss=m.height_loss))
    _supersede_earlier(session, job)
    for obj in success.objects:
        row = ResultObject(job_id=job.id, kind=obj.kind, sop_class_uid=obj.sop_class_uid,
                           sop_instance_uid=obj.sop_instance_uid, study_instance_uid=obj.study_instance_uid,
                           series_instance_uid=obj.series_instance_uid, path=obj.path,
                           size_bytes=obj.size_bytes, sha256=obj.sha256, created_at=now)
        session.add(row)
        session.flush()
        outbox.create_exports(session, row.id, peer_names, now=now)


def _supersede_earlier(session: Session, job: Job) -> None:
    """Earlier results of the same series are replaced by this job's: mark them, cancel their unsent exports."""
    earlier = session.scalars(
        select(ResultObject).join(Job, Job.id == ResultObject.job_id)
        .where(Job.series_instance_uid == job.series_instance_uid, Job.id != job.id,
               ResultObject.superseded_by_job_id.is_(None))).all()
    for obj in earlier:
        obj.superseded_by_job_id = job.id
    cancelled = outbox.cancel_pending_for_objects(session, [o.id for o in earlier],
                                                   reason=f"replaced by results of job {job.id}")
    if earlier:
        log.info("job %s replaces %d earlier result object(s) of its series (%d unsent export(s) cancelled)",
                 job.id, len(earlier), cancelled)


# --- indeterminate reports ------------------------------------------------------------------------------------

SCOPE_STUDY = "study"
"""No series of a chest/abdomen CT study could be used (the scheduler's decision)."""
SCOPE_SERIES = "series"
"""The selected series' job found no vertebra."""
REPORT_SUMMARIES = {
    SCOPE_STUDY: "No series of this study could be used: bone mineral density was not assessed.",
    SCOPE_SERIES: "No vertebra was found in the selected series: bone mineral density was not assessed.",
}
"""The sentence each report opens with (SR and key image), by scope."""
MAX_REPORT_ATTEMPTS = 3
"""Builds of one report tried before it is left with its last_error (a person looks at the log)."""
MAX_ERROR_CHARS = 2000


@dataclass(frozen=True)
class NamedReason:
    """One series an indeterminate report names, with why it was not used (no patient data)."""

    series_instance_uid: str
    reason: str

    def __post_init__(self) -> None:
        if not self.series_instance_uid:
            raise ValueError("series_instance_uid must not be empty")
        if not self.reason:
            raise ValueError("reason must not be empty")


@dataclass(frozen=True)
class PendingReport:
    report_id: int
    scope: str
    study_instance_uid: str
    reasons: tuple[NamedReason, ...]
    predecessor_sr: tuple[str, str, str, str] | None
    """(study, series, SOP class, SOP instance) UIDs of the study's earlier indeterminate SR, which this one
    replaces (a later report naming more unusable series); None when there is none."""


def study_report_key(study_instance_uid: str, rejected_series_uids: Sequence[str]) -> str:
    """``study:<study UID>:<digest>``: the same study with the same rejected series has the same key."""
    digest = hashlib.sha256("\n".join(sorted(set(rejected_series_uids))).encode()).hexdigest()[:32]
    return f"{SCOPE_STUDY}:{study_instance_uid}:{digest}"


def no_vertebra_report_key(series_instance_uid: str) -> str:
    return f"no-vertebra:{series_instance_uid}"


def record_indeterminate_report(session: Session, *, scope: str, dedup_key: str, study_instance_uid: str,
                                reasons: Sequence[NamedReason], now: datetime,
                                series_instance_uid: str | None = None, job_id: int | None = None) -> int | None:
    """A pending report, inside the caller's transaction. None when a report with ``dedup_key`` exists already."""
    if scope not in (SCOPE_STUDY, SCOPE_SERIES):
        raise ValueError(f"scope must be {SCOPE_STUDY!r} or {SCOPE_SERIES!r}, got {scope!r}")
    if not reasons:
        raise ValueError("reasons must name at least one series")
    if session.scalar(select(IndeterminateReport.id).where(IndeterminateReport.dedup_key == dedup_key)) is not None:
        return None
    row = IndeterminateReport(
        dedup_key=dedup_key, scope=scope, study_instance_uid=study_instance_uid,
        series_instance_uid=series_instance_uid, job_id=job_id, created_at=now, attempts=0,
        reasons_json=json.dumps([{"series_instance_uid": r.series_instance_uid, "reason": r.reason}
                                 for r in reasons]))
    try:
        with session.begin_nested():  # a concurrent writer with the same key: keep the caller's transaction usable
            session.add(row)
            session.flush()
    except IntegrityError:
        return None
    log.info("indeterminate report %s recorded (%s, %d series named)", row.id, scope, len(reasons))
    return row.id


def pending_report_ids(engine: sqlalchemy.Engine, *, now: datetime, settle_seconds: float = 0.0) -> list[int]:
    """Reports not stored yet with builds left; a series-scope report only once ``settle_seconds`` old (its worker
    builds it at once; the scheduler only takes over what a worker left)."""
    settled = now - timedelta(seconds=settle_seconds)
    with read_session(engine) as session:
        return list(session.scalars(
            select(IndeterminateReport.id).where(
                IndeterminateReport.stored_at.is_(None), IndeterminateReport.attempts < MAX_REPORT_ATTEMPTS,
                (IndeterminateReport.scope == SCOPE_STUDY) | (IndeterminateReport.created_at <= settled))
            .order_by(IndeterminateReport.id)))


def _pending(session: Session, report_id: int) -> PendingReport | None:
    row = session.get(IndeterminateReport, report_id)
    if row is None or row.stored_at is not None:
        return None
    reasons = tuple(NamedReason(str(r["series_instance_uid"]), str(r["reason"])) for r in json.loads(row.reasons_json))
    predecessor = None
    if row.scope == SCOPE_STUDY:
        earlier = session.scalars(
            select(ResultObject)
            .join(IndeterminateReport, IndeterminateReport.id == ResultObject.indeterminate_report_id)
            .where(IndeterminateReport.study_instance_uid == row.study_instance_uid,
                   IndeterminateReport.scope == SCOPE_STUDY, IndeterminateReport.id != row.id,
                   ResultObject.kind == "sr")
            .order_by(ResultObject.id.desc())).first()
        if earlier is not None:
            predecessor = (earlier.study_instance_uid, earlier.series_instance_uid, earlier.sop_class_uid,
                           earlier.sop_instance_uid)
    return PendingReport(row.id, row.scope, row.study_instance_uid, reasons, predecessor)


def produce_indeterminate_report(engine: sqlalchemy.Engine, report_id: int, *, storage_dir: Path,
                                 peer_names: Sequence[str], now: datetime | None = None) -> bool:
    """Build, write and queue one pending report. True when this call stored it; False when it was stored already
    (by another process) or the build failed (attempts counted, error logged and kept on the row)."""
    # Deferred: the builder loads highdicom (about a second); the serve parent imports this module without it.
    from service.pipeline.steps import build_indeterminate_objects  # noqa: PLC0415

    with read_session(engine) as session:
        pending = _pending(session, report_id)
    if pending is None:
        return False
    folder = storage.indeterminate_dir(storage_dir, report_id)
    written: list[Path] = []
    try:
        paths = {r.series_instance_uid: [Path(p) for p in stored_instance_paths(engine, r.series_instance_uid)]
                 for r in pending.reasons}
        objects = build_indeterminate_objects(
            [(r.series_instance_uid, r.reason, paths[r.series_instance_uid]) for r in pending.reasons],
            summary=REPORT_SUMMARIES[pending.scope], predecessor_sr=pending.predecessor_sr)
        stored = []
        for obj in objects:
            path, digest = storage.write_object(folder, obj)
            written.append(path)
            stored.append(StoredObject(obj.kind, obj.sop_class_uid, obj.sop_instance_uid, obj.study_instance_uid,
                                       obj.series_instance_uid, str(path), len(obj.data), digest))
    except Exception as exc:
        log.exception("indeterminate report %s: build failed", report_id)
        _discard(written)
        _build_failed(engine, report_id, f"{type(exc).__name__}: {exc}")
        return False
    if not _store(engine, report_id, stored, peer_names, now or utcnow()):
        _discard(written)
        return False
    log.info("indeterminate report %s stored: %d object(s) queued for %d peer(s)", report_id, len(stored),
             len(peer_names))
    return True


def _store(engine: sqlalchemy.Engine, report_id: int, objects: Sequence[StoredObject], peer_names: Sequence[str],
           now: datetime) -> bool:
    with write_session(engine) as session:
        done = session.execute(
            update(IndeterminateReport)
            .where(IndeterminateReport.id == report_id, IndeterminateReport.stored_at.is_(None))
            .values(stored_at=now, last_error=None).execution_options(synchronize_session=False))
        if not int(getattr(done, "rowcount", 0) or 0):
            return False  # another process stored it first
        for obj in objects:
            row = ResultObject(job_id=None, indeterminate_report_id=report_id, kind=obj.kind,
                               sop_class_uid=obj.sop_class_uid, sop_instance_uid=obj.sop_instance_uid,
                               study_instance_uid=obj.study_instance_uid,
                               series_instance_uid=obj.series_instance_uid, path=obj.path,
                               size_bytes=obj.size_bytes, sha256=obj.sha256, created_at=now)
            session.add(row)
            session.flush()
            outbox.create_exports(session, row.id, peer_names, now=now)
    return True


def _build_failed(engine: sqlalchemy.Engine, report_id: int, error: str) -> None:
    with write_session(engine) as session:
        session.execute(update(IndeterminateReport).where(IndeterminateReport.id == report_id)
                        .values(attempts=IndeterminateReport.attempts + 1, last_error=error[:MAX_ERROR_CHARS])
                        .execution_options(synchronize_session=False))


def _discard(paths: Sequence[Path]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink()
