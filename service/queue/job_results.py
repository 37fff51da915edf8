"""What a succeeded job leaves behind: its summary, per-vertebra rows, result objects and their exports.

``record_results`` runs inside the transaction of ``queue/jobs.finish`` (after the job's move to succeeded), so a
crash before that commit leaves nothing to send and one after it loses nothing. It writes no job status: job status
has one writer, queue/jobs.py; the export rows it creates get their status from export/outbox.py.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db.tables import Job, ResultObject, VertebraResult
from service.domain.results import ScreeningResult
from service.export import outbox

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
            exclusion_detail=m.exclusion_detail, level_uncertain=m.level_uncertain))
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
