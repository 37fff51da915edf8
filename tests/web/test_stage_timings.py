"""The screening recipe's step durations (issue 20 pt 2): a real job (the production recipe on a phantom CT, the
phantom's true bodies standing in for the trained model, the real worker) stores them in its result document, and
/metrics shows bmd_node_stage_duration_seconds{stage="load"|"segment"|"assess"|"objects"} move."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest
import sqlalchemy
from prometheus_client.parser import text_string_to_metric_families

from service.config import Config, PeerSettings
from service.db.engine import read_session
from service.db.queries import record_instance
from service.db.tables import Job
from service.domain.levels import VertebraLevel
from service.offline.phantom.api import PhantomSpec, generate, write_phantom
from service.pipeline.screening import ScreeningRecipe
from service.pipeline.timings import SCREENING_STEPS
from service.queue import jobs
from service.queue.worker import Worker
from service.web import metrics
from service.web.metrics import NodeCollector, metrics_registry, render_metrics
from tests.node_support import TruthSegmenter, record


def _histograms(text: str) -> dict[str, dict[str, float]]:
    """stage -> {"count", "sum"} of bmd_node_stage_duration_seconds."""
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "bmd_node_stage_duration_seconds":
            continue
        for sample in family.samples:
            kind = sample.name.rsplit("_", 1)[-1]
            if kind in ("count", "sum"):
                out.setdefault(sample.labels["stage"], {})[kind] = sample.value
    return out


def test_a_job_moves_the_step_histograms(tmp_path: Path, sqlite_engine: sqlalchemy.Engine, sqlite_url: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "CACHE_SECONDS", 0.0)
    spec = PhantomSpec(seed=5, region="abdomen", slice_thickness_mm=5.0, rows=128, columns=128,
                       pixel_spacing_mm=3.0, fov_top_level=VertebraLevel.T12, fov_bottom_level=VertebraLevel.L3)
    phantom = generate(spec)
    paths = sorted(p for p in write_phantom(phantom, tmp_path / "ct") if p.suffix == ".dcm")
    header = pydicom.dcmread(paths[0], stop_before_pixels=True)
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        record_instance(sqlite_engine, record(str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID),
                                              study_uid=str(ds.StudyInstanceUID), path=str(path)))
    config = Config(peers=(PeerSettings("pacs", "PACS", "127.0.0.1", 104),)).with_node(
        storage_dir=tmp_path / "storage", database_url=sqlite_url)
    registry = metrics_registry(NodeCollector(sqlite_engine, tmp_path))
    before = _histograms(render_metrics(registry).decode())
    assert all(before[step] == {"count": 0.0, "sum": 0.0} for step in SCREENING_STEPS), before

    job_id = jobs.enqueue(sqlite_engine, str(header.SeriesInstanceUID), max_attempts=1)
    assert job_id is not None
    recipe = ScreeningRecipe(config, segmenter=TruthSegmenter(phantom.labels))
    assert Worker(config, sqlite_engine, recipe, worker_id="w").run_once()
    with read_session(sqlite_engine) as session:
        job = session.get(Job, job_id)
        assert job is not None and job.status == "succeeded", job.last_error if job else None
        stored = json.loads(job.result_json or "{}")["extra"]["timings_s"]
        run_seconds = (job.finished_at - job.started_at).total_seconds()  # type: ignore[operator]
    assert set(stored) == set(SCREENING_STEPS)
    assert 0 < sum(stored.values()) <= run_seconds + 0.01  # the steps happen inside the job's run

    after = _histograms(render_metrics(registry).decode())
    for step in SCREENING_STEPS:
        assert after[step]["count"] == 1.0, (step, after)
        assert after[step]["sum"] == pytest.approx(stored[step], abs=1e-6)
    assert after["run"]["count"] == 1.0  # next to the job-level stages
    result_file = tmp_path / "storage" / "results" / f"job-{job_id}" / "result.json"
    assert json.loads(result_file.read_text())["extra"]["timings_s"] == stored  # the file and the row agree
