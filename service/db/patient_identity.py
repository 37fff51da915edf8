"""Patient identity on jobs, for the BMD trend (issue 20): record it, find a patient's prior study, erase it.

PATIENT DATA: ``jobs.patient_id`` and ``jobs.issuer_of_patient_id`` hold the Patient ID and Issuer of Patient ID of
the series' headers, so that a later study of the same patient can be compared with this one. They are written by
the worker when it runs the job (``record_job_facts``) and erased after ``[results] patient_identity_retention_days``
(``erase_expired_identity``, run periodically by the workers); a job whose identifiers are erased no longer serves as
a prior. Study date and kVp are not identifiers and stay.

A patient is matched on Patient ID and Issuer of Patient ID together: an empty issuer matches only an empty issuer
(a node that receives from several hospitals whose IDs collide should have them send the issuer).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import sqlalchemy
from sqlalchemy import select, update

from service.db.engine import read_session, write_session
from service.db.tables import Job
from service.domain.status import JobStatus
from service.domain.trend import TrendPoint

log = logging.getLogger(__name__)

MAX_ID_CHARS = 64
"""Patient ID and Issuer of Patient ID are LO (64 characters)."""


@dataclass(frozen=True)
class StudyFacts:
    """What the worker reads from a series' first header for the trend."""

    patient_id: str
    """Empty: the header has no Patient ID (no trend for this job)."""
    issuer_of_patient_id: str
    study_date: date | None
    kvp: float | None

    def __post_init__(self) -> None:
        for name in ("patient_id", "issuer_of_patient_id"):
            if len(getattr(self, name)) > MAX_ID_CHARS:
                raise ValueError(f"{name} must be at most {MAX_ID_CHARS} characters")
        if self.kvp is not None and not self.kvp > 0:
            raise ValueError(f"kvp must be positive or None, got {self.kvp}")


def record_job_facts(engine: sqlalchemy.Engine, job_id: int, facts: StudyFacts, *, store_identity: bool,
                     now: datetime) -> None:
    """Study date and kVp on the job; with ``store_identity`` (retention > 0) and a Patient ID, the identifiers."""
    values: dict[str, Any] = {"study_date": facts.study_date, "kvp": facts.kvp}
    if store_identity and facts.patient_id:
        values.update(patient_id=facts.patient_id, issuer_of_patient_id=facts.issuer_of_patient_id,
                      patient_identity_recorded_at=now)
    with write_session(engine) as session:
        session.execute(update(Job).where(Job.id == job_id).values(**values)
                        .execution_options(synchronize_session=False))


def find_prior_study(engine: sqlalchemy.Engine, facts: StudyFacts, study_instance_uid: str) -> TrendPoint | None:
    """The patient's latest succeeded result of a study with an earlier Study Date (None: no such study)."""
    if not facts.patient_id or facts.study_date is None:
        return None
    with read_session(engine) as session:
        job = session.scalars(
            select(Job).where(Job.patient_id == facts.patient_id,
                              Job.issuer_of_patient_id == facts.issuer_of_patient_id,
                              Job.status == JobStatus.SUCCEEDED.value, Job.study_date < facts.study_date,
                              Job.study_instance_uid != study_instance_uid, Job.result_json.is_not(None))
            .order_by(Job.study_date.desc(), Job.id.desc())).first()
        if job is None or job.study_date is None:
            return None
        return _trend_point(job.study_instance_uid, job.study_date, job.kvp, json.loads(job.result_json or "{}"))


def _trend_point(study_instance_uid: str, study_date: date, kvp: float | None,
                 document: dict[str, Any]) -> TrendPoint:
    """A stored result.json document as a TrendPoint."""
    summary = document.get("summary") or {}
    calibration = document.get("calibration") or {}
    contrast = ((document.get("extra") or {}).get("contrast") or {}).get("enhanced")
    if contrast is None and calibration.get("flags") is not None:
        contrast = "contrast_enhanced" in calibration["flags"]
    levels = {str(v["level"]): float(v["bmd_mg_cm3"]) for v in document.get("vertebrae", [])
              if v.get("evaluable") and v.get("bmd_mg_cm3") is not None}
    bmd = summary.get("bmd_mg_cm3")
    return TrendPoint(study_instance_uid=study_instance_uid, study_date=study_date,
                      summary_bmd_mg_cm3=None if bmd is None else float(bmd),
                      summary_levels=tuple(str(v) for v in summary.get("levels_used", ())),
                      bmd_by_level_mg_cm3=levels, calibration_kind=str(calibration.get("kind") or ""), kvp=kvp,
                      contrast_enhanced=None if contrast is None else bool(contrast))


def erase_expired_identity(engine: sqlalchemy.Engine, *, recorded_before: datetime) -> int:
    """Erase the patient identifiers recorded before ``recorded_before``; returns the jobs changed."""
    with write_session(engine) as session:
        done = session.execute(
            update(Job).where(Job.patient_identity_recorded_at < recorded_before)
            .values(patient_id=None, issuer_of_patient_id=None, patient_identity_recorded_at=None)
            .execution_options(synchronize_session=False))
        count = int(getattr(done, "rowcount", 0) or 0)
    if count:
        log.info("patient identifiers of %d job(s) erased (retention)", count)
    return count
