"""What the dashboard shows, read from the database (and, for patient names on pages that may show them, from the
header of a stored instance: the database holds no patient data)."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pydicom
import sqlalchemy
from pydicom.errors import InvalidDicomError
from sqlalchemy import func, select

from service.db.engine import read_session
from service.db.tables import Export, IndeterminateReport, Instance, Job, ResultObject, Series
from service.domain.status import ExportStatus, InstanceStatus, JobStatus, SeriesStatus

FAILED_JOB_STATUSES = (JobStatus.FAILED.value, JobStatus.DEAD.value)


@dataclass(frozen=True)
class JobItem:
    job_id: int
    study_instance_uid: str
    series_instance_uid: str
    status: str
    attempts: int
    max_attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    last_error: str | None
    category: str | None
    bmd_mg_cm3: float | None

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()

    @property
    def failed(self) -> bool:
        return self.status in FAILED_JOB_STATUSES


@dataclass(frozen=True)
class SeriesItem:
    series_instance_uid: str
    modality: str
    instance_count: int
    status: str
    reason: str | None

    @property
    def chosen(self) -> bool:
        return self.status == SeriesStatus.QUEUED


@dataclass(frozen=True)
class StudyRow:
    study_instance_uid: str
    first_received_at: datetime
    last_received_at: datetime
    senders: tuple[str, ...]
    series: tuple[SeriesItem, ...]
    jobs: tuple[JobItem, ...]
    patient_name: str | None = None

    @property
    def latest_job(self) -> JobItem | None:
        return self.jobs[-1] if self.jobs else None


@dataclass(frozen=True)
class ExportItem:
    export_id: int
    peer_name: str
    status: str
    attempts: int
    kind: str
    study_instance_uid: str
    created_at: datetime
    sent_at: datetime | None
    last_error: str | None


@dataclass(frozen=True)
class ResultObjectItem:
    kind: str
    sop_instance_uid: str
    superseded_by_job_id: int | None
    exports: tuple[ExportItem, ...]


@dataclass(frozen=True)
class StudyDetail:
    study: StudyRow
    result_job_id: int | None
    """The latest succeeded job (its result is the one shown)."""
    result: dict[str, Any] | None
    """Its result.json document."""
    objects: tuple[ResultObjectItem, ...]
    key_image_job_id: int | None
    indeterminate: tuple[str, ...]
    patient: dict[str, str] = field(default_factory=dict)


def _job_item(j: Job) -> JobItem:
    return JobItem(j.id, j.study_instance_uid, j.series_instance_uid, j.status, j.attempts, j.max_attempts,
                   j.created_at, j.started_at, j.finished_at, j.last_error, j.summary_category, j.summary_bmd_mg_cm3)


def sender_names(ae_titles: Iterable[str], peers_by_ae: Mapping[str, str]) -> tuple[str, ...]:
    """Calling AE titles as the configured peer names ('pacs (ORTHANC)'); unknown titles as they are."""
    return tuple(sorted(f"{peers_by_ae[ae]} ({ae})" if ae in peers_by_ae else ae for ae in set(ae_titles) if ae))


def list_studies(engine: sqlalchemy.Engine, peers_by_ae: Mapping[str, str], *, limit: int = 50,
                 study_uids: Iterable[str] | None = None) -> list[StudyRow]:
    """The latest ``limit`` studies (by last instance received), newest first, with their series and jobs."""
    with read_session(engine) as session:
        if study_uids is None:
            latest = session.execute(
                select(Series.study_instance_uid, func.max(Series.last_received_at).label("last"))
                .group_by(Series.study_instance_uid).order_by(sqlalchemy.desc("last")).limit(limit)).all()
            uids = [uid for uid, _ in latest]
        else:
            uids = list(study_uids)
        if not uids:
            return []
        series = session.scalars(select(Series).where(Series.study_instance_uid.in_(uids))
                                 .order_by(Series.first_received_at, Series.id)).all()
        senders = session.execute(select(Instance.study_instance_uid, Instance.calling_ae_title)
                                  .where(Instance.study_instance_uid.in_(uids)).distinct()).tuples().all()
        jobs = session.scalars(select(Job).where(Job.study_instance_uid.in_(uids)).order_by(Job.id)).all()
    by_study: dict[str, list[Series]] = defaultdict(list)
    for s in series:
        by_study[s.study_instance_uid].append(s)
    aes: dict[str, list[str]] = defaultdict(list)
    for uid, ae in senders:
        aes[uid].append(ae)
    jobs_of: dict[str, list[JobItem]] = defaultdict(list)
    for j in jobs:
        jobs_of[j.study_instance_uid].append(_job_item(j))
    rows = [StudyRow(uid, min(s.first_received_at for s in by_study[uid]),
                     max(s.last_received_at for s in by_study[uid]), sender_names(aes[uid], peers_by_ae),
                     tuple(SeriesItem(s.series_instance_uid, s.modality, s.instance_count, s.status, s.reason)
                           for s in by_study[uid]), tuple(jobs_of[uid]))
            for uid in uids if by_study[uid]]
    return sorted(rows, key=lambda r: r.last_received_at, reverse=True)


def study_detail(engine: sqlalchemy.Engine, study_instance_uid: str, peers_by_ae: Mapping[str, str]
                 ) -> StudyDetail | None:
    rows = list_studies(engine, peers_by_ae, study_uids=[study_instance_uid])
    if not rows:
        return None
    study = rows[0]
    succeeded = [j for j in study.jobs if j.status == JobStatus.SUCCEEDED]
    with read_session(engine) as session:
        result_job = session.get(Job, succeeded[-1].job_id) if succeeded else None
        document = json.loads(result_job.result_json) if result_job is not None and result_job.result_json else None
        objects = session.scalars(select(ResultObject).where(ResultObject.study_instance_uid == study_instance_uid)
                                  .order_by(ResultObject.id)).all()
        exports = session.scalars(select(Export).where(Export.result_object_id.in_([o.id for o in objects]))
                                  .order_by(Export.id)).all()
        reports = session.scalars(select(IndeterminateReport)
                                  .where(IndeterminateReport.study_instance_uid == study_instance_uid)).all()
    sends: dict[int, list[ExportItem]] = defaultdict(list)
    kinds = {o.id: o.kind for o in objects}
    for e in exports:
        sends[e.result_object_id].append(ExportItem(e.id, e.peer_name, e.status, e.attempts, kinds[e.result_object_id],
                                                    study_instance_uid, e.created_at, e.sent_at, e.last_error))
    items = tuple(ResultObjectItem(o.kind, o.sop_instance_uid, o.superseded_by_job_id, tuple(sends[o.id]))
                  for o in objects)
    key_image_job = next((o.job_id for o in objects if o.kind == "key_image" and result_job is not None
                          and o.job_id == result_job.id), None)
    notes = tuple(f"indeterminate report {r.id}: " + "; ".join(str(i["reason"]) for i in json.loads(r.reasons_json))
                  for r in reports)
    return StudyDetail(study, result_job.id if result_job else None, document, items, key_image_job, notes,
                       _study_headers(engine, [study_instance_uid]).get(study_instance_uid, {}))


def patient_header(path: str | None) -> dict[str, str]:
    """Patient name, ID, study date and accession number from a stored instance (empty when it is gone)."""
    if not path or not Path(path).is_file():
        return {}
    keywords = ("PatientName", "PatientID", "StudyDate", "AccessionNumber", "StudyDescription")
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(keywords))
    except (OSError, InvalidDicomError, ValueError):
        return {}
    values = {k: str(ds.get(k, "")) for k in keywords if str(ds.get(k, ""))}
    if "PatientName" in values:
        values["PatientName"] = ds.PatientName.family_comma_given() or values["PatientName"]  # Doe^Jane: "Doe, Jane"
    return values


def failed_jobs(engine: sqlalchemy.Engine, *, limit: int = 100) -> list[JobItem]:
    with read_session(engine) as session:
        return [_job_item(j) for j in session.scalars(select(Job).where(Job.status.in_(FAILED_JOB_STATUSES))
                                                      .order_by(Job.id.desc()).limit(limit))]


def list_exports(engine: sqlalchemy.Engine, *, status: str | None = None, limit: int = 100) -> list[ExportItem]:
    query = select(Export, ResultObject).join(ResultObject).order_by(Export.id.desc()).limit(limit)
    if status:
        query = query.where(Export.status == status)
    with read_session(engine) as session:
        return [ExportItem(e.id, e.peer_name, e.status, e.attempts, o.kind, o.study_instance_uid, e.created_at,
                           e.sent_at, e.last_error) for e, o in session.execute(query).tuples()]


def exports_per_peer(engine: sqlalchemy.Engine) -> dict[str, dict[str, int]]:
    """peer -> {status: count}, every ExportStatus present (0 when none)."""
    out: dict[str, dict[str, int]] = {}
    with read_session(engine) as session:
        for peer, status, count in session.execute(select(Export.peer_name, Export.status, func.count())
                                                   .group_by(Export.peer_name, Export.status)):
            out.setdefault(peer, {s.value: 0 for s in ExportStatus})[status] = int(count)
    return dict(sorted(out.items()))


def result_object_path(engine: sqlalchemy.Engine, job_id: int, kind: str) -> Path | None:
    with read_session(engine) as session:
        path = session.scalar(select(ResultObject.path).where(ResultObject.job_id == job_id, ResultObject.kind == kind)
                              .order_by(ResultObject.id.desc()).limit(1))
    return Path(path) if path else None



@dataclass(frozen=True)
class NodeStatus:
    database: str
    """ok, or the error's type name."""
    jobs_queued: int | None
    jobs_running: int | None
    exports_waiting: int | None
    exports_dead: int | None
    workers_alive: int | None
    workers_total: int | None
    disk_free_bytes: int | None
    components_down: tuple[str, ...]


def node_status(engine: sqlalchemy.Engine, components: Mapping[str, bool] | None,
                disk_free_bytes: int | None) -> NodeStatus:
    workers = {k: v for k, v in (components or {}).items() if k.startswith("worker")}
    down = tuple(sorted(k for k, v in (components or {}).items() if not v))
    alive = sum(workers.values()) if components is not None else None
    total = len(workers) if components is not None else None
    try:
        with read_session(engine) as session:
            jobs = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).tuples().all())
            exports = dict(session.execute(select(Export.status, func.count()).group_by(Export.status)).tuples().all())
    except sqlalchemy.exc.SQLAlchemyError as exc:
        return NodeStatus(type(exc).__name__, None, None, None, None, alive, total, disk_free_bytes, down)
    waiting = exports.get(ExportStatus.PENDING.value, 0) + exports.get(ExportStatus.SENDING.value, 0)
    return NodeStatus("ok", jobs.get(JobStatus.QUEUED.value, 0), jobs.get(JobStatus.RUNNING.value, 0), waiting,
                      exports.get(ExportStatus.DEAD.value, 0), alive, total, disk_free_bytes, down)


def patient_names(engine: sqlalchemy.Engine, study_uids: Iterable[str]) -> dict[str, str]:
    """Study Instance UID -> patient name from a stored instance of the study (for lists, only when configured)."""
    headers = _study_headers(engine, list(study_uids))
    return {uid: h["PatientName"] for uid, h in headers.items() if "PatientName" in h}


def _study_headers(engine: sqlalchemy.Engine, study_uids: list[str], tries: int = 3) -> dict[str, dict[str, str]]:
    """The patient header of each study, from the first of its stored instances that can still be read."""
    if not study_uids:
        return {}
    with read_session(engine) as session:
        rows = session.execute(select(Instance.study_instance_uid, Instance.path)
                               .where(Instance.study_instance_uid.in_(study_uids),
                                      Instance.status == InstanceStatus.STORED)
                               .order_by(Instance.study_instance_uid, Instance.id)).tuples().all()
    found: dict[str, dict[str, str]] = {}
    tried: dict[str, int] = defaultdict(int)
    for uid, path in rows:
        if uid in found or tried[uid] >= tries:
            continue
        tried[uid] += 1
        header = patient_header(path)
        if header:
            found[uid] = header
    return found
