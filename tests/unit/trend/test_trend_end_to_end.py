"""Issue 20 point 3 done-when, on the path a node runs (Worker + the screening recipe; only the segmentation model is
replaced by the phantom's true vertebral bodies): three phantom studies of one patient (Patient ID + Issuer).

A (2024-03-01) L1-L2 100 mg/cm3 -> B (2025-03-01) 88 mg/cm3, a 12 % loss in a year: B's SR (0 errors from dciodvfy
and PixelMed), key image and dashboard page show the change, flagged beyond the least significant change (8.31 % at
the default 3 % precision). C (2025-09-01) repeats B with new noise: its change is not flagged.
Also: the jobs' vertebra rows carry the fracture check (issue 15), and the retention cleanup erases the identifiers.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import sqlalchemy
from pydicom.uid import generate_uid
from sqlalchemy import select
from starlette.testclient import TestClient

from service.config import Config, DashboardSettings, PeerSettings
from service.db.engine import read_session
from service.db.patient_identity import StudyFacts, erase_expired_identity, find_prior_study
from service.db.queries import record_instance
from service.db.tables import Job, VertebraResult, utcnow
from service.offline.phantom.api import PhantomSpec, generate, write_phantom
from service.pipeline.screening import ScreeningRecipe
from service.queue import jobs
from service.queue.worker import Worker
from service.results import codes
from service.results.trend_plot import TREND_BEYOND_COLOR
from service.results.validators import dciodvfy, pixelmed_sr
from service.web.app import build_app
from service.web.users import add_user
from tests.node_support import TruthSegmenter, record
from tests.web.support import log_in

pytestmark = pytest.mark.slow

PATIENT_ID, ISSUER = "TREND-0042", "HOSPITAL-A"
SPEC = PhantomSpec(seed=11, region="abdomen", slice_thickness_mm=3.0, rows=256, columns=256, pixel_spacing_mm=1.5)
STUDIES = {  # name: (L1-L2 BMD forced, Study Date, extra noise seed or None)
    "A": (100.0, "20240301", None),
    "B": (88.0, "20250301", None),
    "C": (88.0, "20250901", 7),
}
REPEAT_NOISE_SD_HU = 8.0


def _write_study(name: str, folder: Path) -> tuple[list[Path], Any]:
    bmd, study_date, noise_seed = STUDIES[name]
    phantom = generate(dataclasses.replace(SPEC, l1_l2_bmd_mg_cm3=bmd))
    if noise_seed is not None:  # a repeat scan: the same patient and density, another noise realisation
        noise = np.random.default_rng(noise_seed).normal(0.0, REPEAT_NOISE_SD_HU, phantom.volume.hu.shape)
        phantom = dataclasses.replace(phantom, volume=dataclasses.replace(
            phantom.volume, hu=(phantom.volume.hu + noise).astype(np.float32)))
    paths = sorted(p for p in write_phantom(phantom, folder) if p.suffix == ".dcm")
    study_uid = generate_uid(entropy_srcs=["trend-test", name, "study"])
    series_uid = generate_uid(entropy_srcs=["trend-test", name, "series"])
    for k, path in enumerate(paths):  # one patient, a study per date
        ds = pydicom.dcmread(path)
        ds.PatientID, ds.IssuerOfPatientID, ds.StudyDate = PATIENT_ID, ISSUER, study_date
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(
            entropy_srcs=["trend-test", name, str(k)])
        ds.save_as(path)
    return paths, phantom


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from service.db.migrate import upgrade  # noqa: PLC0415 - the schema of a real node, as the migrations make it

    tmp = tmp_path_factory.mktemp("trend")
    url = f"sqlite:///{tmp / 'node.db'}"
    upgrade(url)
    engine = sqlalchemy.create_engine(url)
    config = dataclasses.replace(
        Config(peers=(PeerSettings("pacs", "PACS", "127.0.0.1", 104),)).with_node(storage_dir=tmp / "storage",
                                                                                    database_url=url),
        dashboard=DashboardSettings(session_secret_file=tmp / "session.key"))
    job_ids: dict[str, int] = {}
    for name in STUDIES:
        paths, phantom = _write_study(name, tmp / name)
        for p in paths:
            ds = pydicom.dcmread(p, stop_before_pixels=True)
            record_instance(engine, record(str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID),
                                           study_uid=str(ds.StudyInstanceUID), path=str(p)))
        job_id = jobs.enqueue(engine, str(ds.SeriesInstanceUID), max_attempts=1)
        assert job_id is not None
        recipe = ScreeningRecipe(config, segmenter=TruthSegmenter(phantom.labels))
        assert Worker(config, engine, recipe, worker_id="w").run_once()
        view = jobs.get_job(engine, job_id)
        assert view is not None and view.status == "succeeded", view.last_error if view else None
        job_ids[name] = job_id
    yield {"engine": engine, "config": config, "jobs": job_ids, "storage": tmp / "storage"}
    engine.dispose()


def _document(node: dict[str, Any], name: str) -> dict[str, Any]:
    folder = node["storage"] / "results" / f"job-{node['jobs'][name]}"
    return json.loads((folder / "result.json").read_text())  # type: ignore[no-any-return]


def _object(node: dict[str, Any], name: str, kind: str) -> Path:
    folder = node["storage"] / "results" / f"job-{node['jobs'][name]}"
    return next(folder.glob(f"{kind}-*.dcm"))


def test_first_study_has_no_trend(node: dict[str, Any]) -> None:
    assert "trend" not in _document(node, "A").get("extra", {})


def test_twelve_percent_loss_is_flagged_beyond_lsc(node: dict[str, Any]) -> None:
    a, b = _document(node, "A"), _document(node, "B")
    trend = b["extra"]["trend"]
    assert trend["prior_study_instance_uid"] == a["study_instance_uid"]
    assert trend["prior_study_date"] == "2024-03-01" and trend["interval_days"] == 365
    assert trend["comparison"] == "summary" and trend["prior_levels"] == a["summary"]["levels_used"]
    assert trend["prior_bmd_mg_cm3"] == pytest.approx(a["summary"]["bmd_mg_cm3"], abs=0.01)
    assert trend["change_percent"] == pytest.approx(-12.0, abs=3.0)  # the truth is -12 %; measured on noisy CT
    assert trend["percent_per_year"] == pytest.approx(trend["change_percent"] * 365.25 / 365, abs=0.02)
    assert trend["lsc_percent"] == pytest.approx(8.31) and trend["beyond_lsc"] is True
    assert trend["warnings"] == []  # same calibration kind, kVp and contrast


def test_repeat_scan_without_change_is_not_flagged(node: dict[str, Any]) -> None:
    trend = _document(node, "C")["extra"]["trend"]
    assert trend["prior_study_date"] == "2025-03-01"  # the latest earlier study, not A
    assert abs(trend["change_percent"]) < 3.0 and trend["beyond_lsc"] is False


def test_sr_carries_the_flagged_trend_and_is_valid(node: dict[str, Any]) -> None:
    path = _object(node, "B", "sr")
    ds = pydicom.dcmread(path)
    derived = next(i for i in ds.ContentSequence
                   if i.ConceptNameCodeSequence[0].CodeValue == codes.DERIVED_IMAGING_MEASUREMENTS.value)
    items = {i.ConceptNameCodeSequence[0].CodeValue: i for i in derived.ContentSequence[0].ContentSequence}
    assert items[codes.BEYOND_LSC.value].ConceptCodeSequence[0].CodeValue == codes.YES.value
    change = items[codes.BMD_CHANGE.value]
    assert float(change.MeasuredValueSequence[0].NumericValue) == pytest.approx(
        _document(node, "B")["extra"]["trend"]["change_mg_cm3"], abs=0.01)
    assert [c.Date for c in change.ContentSequence if c.ValueType == "DATE"] == ["20240301"]
    assert dciodvfy(path).ok, dciodvfy(path).errors
    for report in pixelmed_sr([path]).values():
        assert "Found Root Template TID_1500" in report.output, report.output[-2000:]
        assert report.ok, report.errors


def _beyond_pixels(node: dict[str, Any], name: str) -> int:
    pixels = pydicom.dcmread(_object(node, name, "key_image")).pixel_array
    return int(np.count_nonzero(np.all(pixels == np.array(TREND_BEYOND_COLOR, dtype=np.uint8), axis=-1)))


def test_key_image_shows_the_trend(node: dict[str, Any]) -> None:
    assert _beyond_pixels(node, "B") > 200  # the flagged plot and text
    assert _beyond_pixels(node, "A") == 0 and _beyond_pixels(node, "C") == 0  # no prior / within the LSC
    docs = os.environ.get("BMD_NODE_DOCS_DIR")  # BMD_NODE_DOCS_DIR=docs/results: the picture of docs/results
    if docs:
        from PIL import Image  # noqa: PLC0415 - only when writing the docs picture

        pixels = pydicom.dcmread(_object(node, "B", "key_image")).pixel_array
        Image.fromarray(pixels).save(Path(docs) / "trend_key_image.png")


def test_dashboard_result_page_shows_the_flagged_trend(node: dict[str, Any]) -> None:
    add_user(node["engine"], "alice", "viewer", "viewer password 1")
    with TestClient(build_app(node["config"], node["engine"])) as client:
        log_in(client, "alice", "viewer password 1")
        b = client.get(f"/studies/{_document(node, 'B')['study_instance_uid']}")
        c = client.get(f"/studies/{_document(node, 'C')['study_instance_uid']}")
    assert b.status_code == 200 and c.status_code == 200
    assert 'id="trend"' in b.text and "beyond-lsc" in b.text
    assert "beyond the least significant change" in b.text and "2024-03-01" in b.text
    assert "within the least significant change" in c.text and "beyond-lsc" not in c.text


def test_vertebra_rows_carry_the_fracture_check(node: dict[str, Any]) -> None:
    document = _document(node, "A")
    with read_session(node["engine"]) as session:
        rows = {r.level: r for r in session.scalars(select(VertebraResult)
                                                    .where(VertebraResult.job_id == node["jobs"]["A"]))}
    assert set(rows) == {v["level"] for v in document["vertebrae"]}
    assert any(v["fracture_status"] is not None for v in document["vertebrae"])
    for v in document["vertebrae"]:
        row = rows[v["level"]]
        assert (row.fracture_status, row.genant_grade) == (v["fracture_status"], v["genant_grade"]), v["level"]
        assert row.height_loss == (None if v["height_loss"] is None else pytest.approx(v["height_loss"], abs=1e-3))


def test_retention_cleanup_erases_the_identifiers(node: dict[str, Any]) -> None:
    engine = node["engine"]
    facts = StudyFacts(PATIENT_ID, ISSUER, dt.date(2026, 1, 1), 120.0)
    assert find_prior_study(engine, facts, "1.2.3") is not None
    assert find_prior_study(engine, dataclasses.replace(facts, issuer_of_patient_id=""), "1.2.3") is None
    assert erase_expired_identity(engine, recorded_before=utcnow() - dt.timedelta(days=1)) == 0  # all recent
    assert erase_expired_identity(engine, recorded_before=utcnow() + dt.timedelta(seconds=1)) == 3
    with read_session(engine) as session:
        assert session.scalars(select(Job.patient_id).where(Job.patient_id.is_not(None))).all() == []
    assert find_prior_study(engine, facts, "1.2.3") is None

