"""The worker records a job's study facts and patient identifiers from the series' headers and gives the pipeline
the patient's prior study (service/queue/worker.py + service/db/patient_identity.py), with a fast test pipeline."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pydicom
import pytest
import sqlalchemy
from pydicom.uid import generate_uid

from service.config import Config
from service.db.engine import read_session
from service.db.queries import record_instance
from service.db.tables import Job
from service.pipeline.types import JobInput, PipelineOutput
from service.queue import jobs
from service.queue.worker import Worker
from service.results.settings import ResultsSettings
from tests.node_support import MeanHuPipeline, record, write_ct_series


class SpyPipeline(MeanHuPipeline):
    """The mean-HU test pipeline, keeping each JobInput."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[JobInput] = []

    def run(self, job: JobInput) -> PipelineOutput:
        self.inputs.append(job)
        return super().run(job)


def _study(engine: sqlalchemy.Engine, folder: Path, *, patient_id: str, issuer: str, study_date: str) -> int:
    study_uid, series_uid = generate_uid(), generate_uid()
    paths = write_ct_series(folder, n_slices=4, size=16, study_uid=study_uid, series_uid=series_uid)
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.PatientID, ds.IssuerOfPatientID, ds.StudyDate, ds.KVP = patient_id, issuer, study_date, "100"
        if not issuer:
            del ds.IssuerOfPatientID
        ds.save_as(p)
        record_instance(engine, record(series_uid, str(ds.SOPInstanceUID), study_uid=study_uid, path=str(p)))
    job_id = jobs.enqueue(engine, series_uid, max_attempts=1)
    assert job_id is not None
    return job_id


def _config(tmp_path: Path, retention_days: float = 1095.0) -> Config:
    return dataclasses.replace(Config().with_node(storage_dir=tmp_path / "storage"),
                               results=ResultsSettings(patient_identity_retention_days=retention_days))


def _job(engine: sqlalchemy.Engine, job_id: int) -> Job:
    with read_session(engine) as session:
        job = session.get(Job, job_id)
        assert job is not None
        session.expunge(job)
        return job


def test_worker_records_identity_and_passes_the_prior(sqlite_engine: sqlalchemy.Engine, tmp_path: Path) -> None:
    pipeline = SpyPipeline()
    worker = Worker(_config(tmp_path), sqlite_engine, pipeline, worker_id="w")
    first = _study(sqlite_engine, tmp_path / "a", patient_id="P-1", issuer="HOSP", study_date="20250110")
    assert worker.run_once()
    row = _job(sqlite_engine, first)
    assert (row.patient_id, row.issuer_of_patient_id, row.study_date, row.kvp) == ("P-1", "HOSP",
                                                                                  dt.date(2025, 1, 10), 100.0)
    assert row.patient_identity_recorded_at is not None
    assert pipeline.inputs[-1].prior is None  # no earlier study

    _study(sqlite_engine, tmp_path / "b", patient_id="P-1", issuer="OTHER", study_date="20260110")  # other issuer
    assert worker.run_once()
    assert pipeline.inputs[-1].prior is None
    same_day = _study(sqlite_engine, tmp_path / "c", patient_id="P-1", issuer="HOSP", study_date="20250110")
    assert worker.run_once()
    assert pipeline.inputs[-1].prior is None  # a study of the same day is no prior

    _study(sqlite_engine, tmp_path / "d", patient_id="P-1", issuer="HOSP", study_date="20260110")
    assert worker.run_once()
    prior = pipeline.inputs[-1].prior
    assert prior is not None
    latest = _job(sqlite_engine, same_day)  # of the two studies of 2025-01-10, the later result
    assert prior.study_instance_uid == latest.study_instance_uid and prior.study_date == dt.date(2025, 1, 10)
    assert prior.summary_bmd_mg_cm3 == pytest.approx(latest.summary_bmd_mg_cm3, abs=0.01)  # result.json: 2 digits
    assert prior.summary_levels == ("L1",) and prior.kvp == 100.0 and prior.calibration_kind == "default"


def test_retention_zero_stores_no_identifiers(sqlite_engine: sqlalchemy.Engine, tmp_path: Path) -> None:
    worker = Worker(_config(tmp_path, retention_days=0), sqlite_engine, SpyPipeline(), worker_id="w")
    job_id = _study(sqlite_engine, tmp_path / "a", patient_id="P-2", issuer="", study_date="20250110")
    assert worker.run_once()
    row = _job(sqlite_engine, job_id)
    assert row.patient_id is None and row.issuer_of_patient_id is None and row.patient_identity_recorded_at is None
    assert row.study_date == dt.date(2025, 1, 10)  # not an identifier: kept


def test_the_workers_periodic_cleanup_erases_old_identifiers(sqlite_engine: sqlalchemy.Engine,
                                                             tmp_path: Path) -> None:
    job_id = _study(sqlite_engine, tmp_path / "a", patient_id="P-3", issuer="", study_date="20250110")
    assert Worker(_config(tmp_path), sqlite_engine, SpyPipeline(), worker_id="w").run_once()
    assert _job(sqlite_engine, job_id).patient_id == "P-3"
    # a worker of a node whose retention is now tiny: its first poll runs the cleanup
    short = Worker(_config(tmp_path, retention_days=1e-9), sqlite_engine, SpyPipeline(), worker_id="w2")
    assert not short.run_once()  # no job to do, but the cleanup ran
    row = _job(sqlite_engine, job_id)
    assert row.patient_id is None and row.issuer_of_patient_id is None and row.summary_bmd_mg_cm3 is not None
