"""The "indeterminate" report at the scheduler's decision and in the worker (issue 17, [results] report_unassessable).

A chest/abdomen CT study none of whose series can be used gets one indeterminate SR + key image naming each series
and its reason, queued for export through the outbox; a re-sent study with the same unusable series gets no second
one; a study whose series are all left alone (localizers, head CT) gets none; the switch turns it off. A job that
finds no vertebra ends failed and its series gets one indeterminate report.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import sqlalchemy
from pydicom.uid import generate_uid
from sqlalchemy import select

from service.config import Config, PeerSettings
from service.db.engine import read_session
from service.db.queries import list_series
from service.db.tables import Export, IndeterminateReport, Job, ResultObject, utcnow
from service.domain.status import SeriesStatus
from service.pipeline.steps import NO_VERTEBRA_REASON, NoVertebraFoundError
from service.pipeline.types import JobInput, PipelineOutput
from service.queue import jobs
from service.queue.scheduler import Scheduler
from service.queue.worker import Worker
from service.results.settings import ResultsSettings
from service.series.settings import SeriesSettings
from tests.node_support import record_files
from tests.support.ct_series import CTSeriesHeader, write_ct_series

PACS = PeerSettings(name="pacs", ae_title="PACS", host="127.0.0.1", port=11112)
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"


def _config(url: str, tmp_path: Path, *, report: bool = True) -> Config:
    config = Config(series=SeriesSettings(min_slices=10), peers=(PACS,),
                    results=ResultsSettings(report_unassessable=report))
    return config.with_node(series_stable_seconds=10, database_url=url, storage_dir=tmp_path / "storage")


def _series(folder: Path, study_uid: str, number: int, *, n_slices: int = 12, series_uid: str | None = None,
            description: str = "Thorax 2.0 B30f", **extra: Any) -> list[Path]:
    frames = (np.full((8, 8), 1064, dtype=np.int16) for _ in range(n_slices))
    header = CTSeriesHeader(study_instance_uid=study_uid, series_instance_uid=series_uid or generate_uid(),
                            extra={"SeriesNumber": number, "SeriesDescription": description,
                                   "ConvolutionKernel": "B30f", "BodyPartExamined": "CHEST", **extra})
    return write_ct_series(folder, frames, header)


def _reports(engine: sqlalchemy.Engine) -> list[IndeterminateReport]:
    with read_session(engine) as session:
        return list(session.scalars(select(IndeterminateReport).order_by(IndeterminateReport.id)))


def _objects(engine: sqlalchemy.Engine, report_id: int) -> list[ResultObject]:
    with read_session(engine) as session:
        return list(session.scalars(select(ResultObject).where(ResultObject.indeterminate_report_id == report_id)
                                    .order_by(ResultObject.id)))


def _exports(engine: sqlalchemy.Engine, object_ids: list[int]) -> list[Export]:
    with read_session(engine) as session:
        return list(session.scalars(select(Export).where(Export.result_object_id.in_(object_ids))))


def _texts(path: str) -> list[str]:
    out: list[str] = []

    def walk(items: Any) -> None:
        for item in items:
            if item.ValueType == "TEXT":
                out.append(str(item.TextValue))
            walk(item.get("ContentSequence", []))

    walk(pydicom.dcmread(path).ContentSequence)
    return out


def _decide(engine: sqlalchemy.Engine, url: str, tmp_path: Path, at: datetime, **kwargs: Any) -> Any:
    return Scheduler(_config(url, tmp_path, **kwargs), engine).tick(now=at + timedelta(seconds=11))


def test_a_chest_ct_with_only_a_rejected_series_gets_one_report_and_a_resent_study_no_second(
        tmp_path: Path, sqlite_engine: sqlalchemy.Engine, sqlite_url: str) -> None:
    study, t0 = generate_uid(), utcnow()
    thin_uid = generate_uid()
    short = record_files(sqlite_engine, _series(tmp_path / "short", study, 3, n_slices=4, series_uid=thin_uid), t0)
    scout = record_files(sqlite_engine, _series(tmp_path / "scout", study, 1, n_slices=2, description="Topogram",
                                                ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"]), t0)

    tick = _decide(sqlite_engine, sqlite_url, tmp_path, t0)

    assert tick.rejected == (short,) and tick.ignored == (scout,) and tick.enqueued == ()
    (report,) = _reports(sqlite_engine)
    assert tick.reports == (report.id,)
    assert report.scope == "study" and report.study_instance_uid == study and report.stored_at is not None
    sr, key_image = _objects(sqlite_engine, report.id)
    assert (sr.kind, sr.sop_class_uid, sr.job_id) == ("sr", SR_CLASS, None)
    assert (key_image.kind, key_image.sop_class_uid, key_image.study_instance_uid) == ("key_image", SC_CLASS, study)
    assert [(e.peer_name, e.status) for e in _exports(sqlite_engine, [sr.id, key_image.id])] == \
        [("pacs", "pending")] * 2
    rows = {s.series_instance_uid: s for s in list_series(sqlite_engine)}
    texts = _texts(sr.path)
    assert f"series 3 (Thorax 2.0 B30f): {rows[short].reason}" in texts  # number, description and the reason
    assert "series 1 (Topogram): not screened: localizer (scout)" in texts
    assert rows[short].indeterminate_report == f"indeterminate report {report.id} (stored)"

    # the same series re-sent as new copies (new SOP Instance UIDs): decided again, still rejected, no second report
    t1 = t0 + timedelta(minutes=5)
    record_files(sqlite_engine, _series(tmp_path / "again", study, 3, n_slices=4, series_uid=thin_uid), t1)
    again = _decide(sqlite_engine, sqlite_url, tmp_path, t1)
    assert again.rejected == (short,) and again.reports == ()
    assert len(_reports(sqlite_engine)) == 1

    # another unusable series arrives later: a new report naming both, which replaces the first (predecessor)
    t2 = t1 + timedelta(minutes=5)
    thick = record_files(sqlite_engine, _series(tmp_path / "thick", study, 4, n_slices=12, SliceThickness=8.0),
                         t2)
    later = _decide(sqlite_engine, sqlite_url, tmp_path, t2)
    assert later.rejected == (thick,)
    first, second = _reports(sqlite_engine)
    assert first.id == report.id and second.scope == "study"
    new_sr = _objects(sqlite_engine, second.id)[0]
    predecessor = pydicom.dcmread(new_sr.path).PredecessorDocumentsSequence[0]
    assert predecessor.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == \
        sr.sop_instance_uid
    assert any(t.startswith("series 4 (Thorax 2.0 B30f): ") for t in _texts(new_sr.path))
    assert [e.status for e in _exports(sqlite_engine, [sr.id, key_image.id])] == ["pending"] * 2  # not withdrawn


def test_no_report_for_a_study_left_alone_or_with_a_usable_series_or_with_the_switch_off(
        tmp_path: Path, sqlite_engine: sqlalchemy.Engine, sqlite_url: str) -> None:
    t0 = utcnow()
    scout_study, head_study, usable_study, off_study = (generate_uid() for _ in range(4))
    record_files(sqlite_engine, _series(tmp_path / "scout", scout_study, 1, n_slices=2,
                                        ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"]), t0)
    head = record_files(sqlite_engine, _series(tmp_path / "head", head_study, 2, n_slices=4, BodyPartExamined="HEAD",
                                               SeriesDescription="CT Schaedel"), t0)
    record_files(sqlite_engine, _series(tmp_path / "good", usable_study, 2), t0)
    record_files(sqlite_engine, _series(tmp_path / "bad", usable_study, 3, n_slices=4), t0)

    tick = _decide(sqlite_engine, sqlite_url, tmp_path, t0)
    assert len(tick.enqueued) == 1 and len(tick.rejected) == 1 and tick.reports == ()
    assert {s.series_instance_uid: s.status for s in list_series(sqlite_engine)}[head] == SeriesStatus.IGNORED

    t1 = t0 + timedelta(minutes=1)
    record_files(sqlite_engine, _series(tmp_path / "off", off_study, 3, n_slices=4), t1)
    off = _decide(sqlite_engine, sqlite_url, tmp_path, t1, report=False)
    assert len(off.rejected) == 1 and off.reports == ()
    assert _reports(sqlite_engine) == []
    assert not (tmp_path / "storage" / "results").exists()


class _NoVertebraPipeline:
    """Finds no vertebra, as the screening recipe's SegmentStep says it."""

    def run(self, job: JobInput) -> PipelineOutput:
        raise NoVertebraFoundError


@pytest.mark.parametrize("report", [True, False])
def test_a_job_that_finds_no_vertebra_fails_and_its_series_gets_one_report(
        tmp_path: Path, sqlite_engine: sqlalchemy.Engine, sqlite_url: str, report: bool) -> None:
    study, t0 = generate_uid(), utcnow() - timedelta(seconds=30)  # received and quiet: its job is due now
    series = record_files(sqlite_engine, _series(tmp_path / "ct", study, 5, description="Abdomen 1.0 Br40"), t0)
    config = _config(sqlite_url, tmp_path, report=report)
    assert Scheduler(config, sqlite_engine).tick().enqueued
    worker = Worker(config, sqlite_engine, _NoVertebraPipeline(), worker_id="w1")

    assert worker.run_once()
    jobs.retry(sqlite_engine, _job_ids(sqlite_engine)[0])  # run again (a person retries it): no second report
    assert worker.run_once()

    with read_session(sqlite_engine) as session:
        (job,) = session.scalars(select(Job)).all()
    assert job.status == "failed" and job.last_error == NO_VERTEBRA_REASON
    reports = _reports(sqlite_engine)
    if not report:
        assert reports == []
        return
    (row,) = reports
    assert (row.scope, row.series_instance_uid, row.job_id) == ("series", series, job.id)
    sr, key_image = _objects(sqlite_engine, row.id)
    assert "series 5 (Abdomen 1.0 Br40): no vertebra found in the series" in _texts(sr.path)
    assert pydicom.dcmread(key_image.path).StudyInstanceUID == study
    assert len(_exports(sqlite_engine, [sr.id, key_image.id])) == 2


def _job_ids(engine: sqlalchemy.Engine) -> list[int]:
    with read_session(engine) as session:
        return list(session.scalars(select(Job.id).order_by(Job.id)))


def test_a_report_whose_build_fails_is_retried_then_left_with_its_error(
        tmp_path: Path, sqlite_engine: sqlalchemy.Engine, sqlite_url: str) -> None:
    study, t0 = generate_uid(), utcnow()
    paths = _series(tmp_path / "short", study, 3, n_slices=4)
    record_files(sqlite_engine, paths, t0)
    for path in paths:  # the stored files are gone: nothing to copy the patient and study from
        path.unlink()
    scheduler = Scheduler(_config(sqlite_url, tmp_path), sqlite_engine)
    assert scheduler.tick(now=t0 + timedelta(seconds=11)).rejected  # unreadable files are a rejection too
    for n in range(3):
        scheduler.tick(now=t0 + timedelta(seconds=20 + n))
    (row,) = _reports(sqlite_engine)
    assert row.stored_at is None and row.attempts == 3 and "could be read" in (row.last_error or "")
    assert _objects(sqlite_engine, row.id) == []
