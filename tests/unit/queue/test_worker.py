"""The worker with a small real pipeline: success stores results + exports atomically; failures retry/dead;
a rejected input fails for good; a lost lease records nothing."""

from __future__ import annotations

import dataclasses
import json
from datetime import timedelta
from pathlib import Path

import pydicom
import pytest
import sqlalchemy
from sqlalchemy import func, select

from service.config import Config, PeerSettings, WorkerSettings
from service.db.engine import read_session
from service.db.queries import record_instance
from service.db.tables import Export, ResultObject, VertebraResult, utcnow
from service.queue import jobs
from service.queue.worker import Worker
from tests.node_support import MeanHuPipeline, record, write_ct_series


def _config(tmp_path: Path, url: str, **worker: float) -> Config:
    settings = dataclasses.replace(WorkerSettings(), backoff_initial_seconds=0, **worker)  # type: ignore[arg-type]
    return Config(peers=(PeerSettings("pacs", "PACS", "127.0.0.1", 104), PeerSettings("viewer", "V", "h", 105),
                         PeerSettings("sender", "S", "h", 106, send_results=False)),
                  worker=settings).with_node(storage_dir=tmp_path / "storage", database_url=url)


def _queue_series(engine: sqlalchemy.Engine, tmp_path: Path, n: int = 12) -> tuple[str, int]:
    paths = write_ct_series(tmp_path / "ct", n_slices=n, size=16)
    header = pydicom.dcmread(paths[0], stop_before_pixels=True)
    for p in paths:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        record_instance(engine, record(str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID),
                                       study_uid=str(ds.StudyInstanceUID), path=str(p)))
    job_id = jobs.enqueue(engine, str(header.SeriesInstanceUID), max_attempts=2)
    assert job_id is not None
    return str(header.SeriesInstanceUID), job_id


def test_success_writes_objects_and_exports_per_destination(tmp_path: Path, sqlite_engine: sqlalchemy.Engine,
                                                            sqlite_url: str) -> None:
    config = _config(tmp_path, sqlite_url)
    _, job_id = _queue_series(sqlite_engine, tmp_path)
    worker = Worker(config, sqlite_engine, MeanHuPipeline(), worker_id="w1")
    assert worker.run_once()
    assert not worker.run_once()  # nothing left
    view = jobs.get_job(sqlite_engine, job_id)
    assert view is not None and view.status == "succeeded"
    folder = tmp_path / "storage" / "results" / f"job-{job_id}"
    document = json.loads((folder / "result.json").read_text())
    assert document["summary"]["category"] == "normal"
    assert document["vertebrae"][0]["level"] == "L1"
    with read_session(sqlite_engine) as s:
        objects = s.scalars(select(ResultObject)).all()
        assert sorted(o.kind for o in objects) == ["key_image", "sr"]
        for obj in objects:
            ds = pydicom.dcmread(obj.path)
            assert str(ds.SOPInstanceUID) == obj.sop_instance_uid
            assert Path(obj.path).parent == folder
        peers = sorted(s.execute(select(Export.peer_name)).scalars().all())
        assert peers == ["pacs", "pacs", "viewer", "viewer"]  # not the peer with send_results = false
        assert s.scalar(select(func.count()).select_from(VertebraResult)) == 1


def test_transient_failures_retry_then_succeed(tmp_path: Path, sqlite_engine: sqlalchemy.Engine,
                                              sqlite_url: str) -> None:
    config = _config(tmp_path, sqlite_url, max_attempts=3)
    _, job_id = _queue_series(sqlite_engine, tmp_path)
    pipeline = MeanHuPipeline(fail_times=1)
    worker = Worker(config, sqlite_engine, pipeline, worker_id="w1")
    assert worker.run_once()
    view = jobs.get_job(sqlite_engine, job_id)
    assert view is not None and view.status == "queued" and "transient failure 1" in (view.last_error or "")
    assert worker.run_once()
    assert jobs.get_job(sqlite_engine, job_id).status == "succeeded"  # type: ignore[union-attr]
    assert pipeline.runs == 2


def test_failures_exhaust_attempts_then_dead(tmp_path: Path, sqlite_engine: sqlalchemy.Engine,
                                            sqlite_url: str) -> None:
    config = _config(tmp_path, sqlite_url)
    _, job_id = _queue_series(sqlite_engine, tmp_path)  # max_attempts=2
    worker = Worker(config, sqlite_engine, MeanHuPipeline(fail_times=10), worker_id="w1")
    assert worker.run_once() and worker.run_once()
    assert not worker.run_once()
    assert jobs.get_job(sqlite_engine, job_id).status == "dead"  # type: ignore[union-attr]
    with read_session(sqlite_engine) as s:
        assert s.scalar(select(func.count()).select_from(ResultObject)) == 0
        assert s.scalar(select(func.count()).select_from(Export)) == 0


def test_rejected_input_fails_without_retry(tmp_path: Path, sqlite_engine: sqlalchemy.Engine,
                                           sqlite_url: str) -> None:
    config = _config(tmp_path, sqlite_url)
    _, job_id = _queue_series(sqlite_engine, tmp_path)
    pipeline = MeanHuPipeline(reject=True)
    worker = Worker(config, sqlite_engine, pipeline, worker_id="w1")
    assert worker.run_once()
    assert not worker.run_once()
    view = jobs.get_job(sqlite_engine, job_id)
    assert view is not None and view.status == "failed" and "on purpose" in (view.last_error or "")
    assert pipeline.runs == 1


def test_series_over_the_memory_limit_is_rejected_before_the_pipeline_runs(
        tmp_path: Path, sqlite_engine: sqlalchemy.Engine, sqlite_url: str) -> None:
    """[worker] memory_limit_mb: the estimate (worker base alone is over 256 MiB) is checked before any pixel is
    decoded; the job fails without retry and its reason names the estimate and the limit."""
    config = _config(tmp_path, sqlite_url, memory_limit_mb=256)
    _, job_id = _queue_series(sqlite_engine, tmp_path)
    pipeline = MeanHuPipeline()
    worker = Worker(config, sqlite_engine, pipeline, worker_id="w1")
    assert worker.run_once()
    assert not worker.run_once()
    view = jobs.get_job(sqlite_engine, job_id)
    assert view is not None and view.status == "failed"
    assert "12 x 16 x 16" in (view.last_error or "") and "memory_limit_mb is 256" in (view.last_error or "")
    assert pipeline.runs == 0


class _LoseLeaseDuringRun(MeanHuPipeline):
    """While the job runs, the reaper (another process in real life) takes the job away."""

    def __init__(self, engine: sqlalchemy.Engine) -> None:
        super().__init__()
        self.engine = engine

    def run(self, job):  # type: ignore[no-untyped-def]
        output = super().run(job)
        assert jobs.reap_expired(self.engine, now=utcnow() + timedelta(hours=1)) == [job.job_id]
        return output


def test_lost_lease_records_nothing_and_removes_files(tmp_path: Path, sqlite_engine: sqlalchemy.Engine,
                                                      sqlite_url: str) -> None:
    config = _config(tmp_path, sqlite_url)
    _, job_id = _queue_series(sqlite_engine, tmp_path)
    worker = Worker(config, sqlite_engine, _LoseLeaseDuringRun(sqlite_engine), worker_id="w1")
    assert worker.run_once()
    assert jobs.get_job(sqlite_engine, job_id).status == "queued"  # type: ignore[union-attr]
    with read_session(sqlite_engine) as s:
        assert s.scalar(select(func.count()).select_from(ResultObject)) == 0
    assert list((tmp_path / "storage" / "results" / f"job-{job_id}").glob("*.dcm")) == []


def test_rerun_after_more_instances_gets_previous_sr(tmp_path: Path, sqlite_engine: sqlalchemy.Engine,
                                                     sqlite_url: str) -> None:
    config = _config(tmp_path, sqlite_url)
    series_uid, first = _queue_series(sqlite_engine, tmp_path)
    seen = []

    class Recording(MeanHuPipeline):
        def run(self, job):  # type: ignore[no-untyped-def]
            seen.append(job.previous)
            return super().run(job)

    worker = Worker(config, sqlite_engine, Recording(), worker_id="w1")
    assert worker.run_once()
    record_instance(sqlite_engine, record(series_uid, series_uid + ".999", path=str(
        sorted((tmp_path / "ct").glob("*.dcm"))[0])))
    second = jobs.enqueue(sqlite_engine, series_uid, max_attempts=2)
    assert second is not None
    assert worker.run_once()
    assert seen[0] is None
    assert seen[1] is not None and seen[1].job_id == first and seen[1].sr_path.is_file()


@pytest.mark.parametrize("bad", [0, -1])
def test_worker_settings_validate(bad: int) -> None:
    with pytest.raises(ValueError, match=r"worker\.max_attempts"):
        WorkerSettings(max_attempts=bad)


class _OutOfMemory(MeanHuPipeline):
    def run(self, job):  # type: ignore[no-untyped-def]
        self.runs += 1
        raise MemoryError


@pytest.mark.parametrize(("processes", "runs", "status"), [(1, 1, "failed"), (2, 2, "failed")])
def test_memory_error_is_not_retried_blindly(tmp_path: Path, sqlite_engine: sqlalchemy.Engine, sqlite_url: str,
                                             processes: int, runs: int, status: str) -> None:
    """One worker: the job cannot fit, so it fails at once with a reason. Several workers: one more run (another
    job may have held the memory), then it fails for good, not dead after max_attempts of blind retries."""
    config = _config(tmp_path, sqlite_url, max_attempts=5, processes=processes)
    _, job_id = _queue_series(sqlite_engine, tmp_path)
    pipeline = _OutOfMemory()
    worker = Worker(config, sqlite_engine, pipeline, worker_id="w1")
    while worker.run_once():
        pass
    view = jobs.get_job(sqlite_engine, job_id)
    assert view is not None and view.status == status and "out of memory" in (view.last_error or "")
    assert pipeline.runs == runs
