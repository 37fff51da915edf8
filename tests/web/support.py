"""Test support for the dashboard: a small real pipeline whose results look like the screening recipe's (three
levels: one excluded, one with an uncertain name; a key image with pixels), and a database filled through the
queue's own functions."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pydicom
from pydicom.uid import generate_uid

from service.config import Config
from service.db.engine import write_session
from service.db.queries import decide_series, record_instance
from service.db.tables import Series
from service.domain.levels import VertebraLevel
from service.domain.results import (
    CalibrationKind,
    Category,
    ExclusionReason,
    LinearCalibration,
    PatientSummary,
    RoiMethod,
    ScreeningResult,
    VertebraMeasurement,
)
from service.domain.status import SeriesStatus
from service.pipeline.encode import encode_dataset
from service.pipeline.storage import result_dir, write_object
from service.pipeline.types import EncodedObject, JobInput, PipelineOutput, PipelineRejectedError
from service.queue import jobs
from service.queue.job_results import JobSuccess, StoredObject
from tests.node_support import BASIC_TEXT_SR, SECONDARY_CAPTURE, MeanHuPipeline, _result_dataset, record
from tests.support import ct_series

if TYPE_CHECKING:  # the worker processes import this module: no test client there
    from starlette.testclient import TestClient

REJECT_ONCE_ENV = "BMD_TEST_REJECT_ONCE"
"""A file path: while it exists, the next job is rejected (and the file removed), so that a retry succeeds."""
PATIENT_NAME = "Doe^Jane"
PATIENT_NAME_SHOWN = "Doe, Jane"
PATIENT_ID = "PID-4711"


def measurement(level: VertebraLevel, hu: float, *, excluded: ExclusionReason | None = None,
                uncertain: bool = False) -> VertebraMeasurement:
    return VertebraMeasurement(
        level=level, centroid_lps_mm=(0.0, 0.0, float(level)), roi_method=RoiMethod.EROSION_3MM,
        trabecular_hu_mean=hu, trabecular_hu_median=hu, trabecular_hu_sd=12.5, voxel_count=800,
        roi_volume_mm3=5400.0, bmd_mg_cm3=None if excluded else round(hu * 0.8, 1), evaluable=excluded is None,
        exclusion_reason=excluded, exclusion_detail="body touches the first or last slice" if excluded else None,
        level_uncertain=uncertain)


def three_level_result(study_uid: str, series_uid: str, hu: float) -> ScreeningResult:
    """T12 cut by the field of view; L1 (name uncertain) and L2 used; calibration 0.8 x HU."""
    levels = (measurement(VertebraLevel.T12, hu + 5, excluded=ExclusionReason.CUT_BY_FOV),
              measurement(VertebraLevel.L1, hu, uncertain=True), measurement(VertebraLevel.L2, hu - 4))
    bmd = round((levels[1].bmd_mg_cm3 or 0) / 2 + (levels[2].bmd_mg_cm3 or 0) / 2, 1)
    category = Category.OSTEOPOROSIS if bmd < 80 else Category.OSTEOPENIA if bmd <= 120 else Category.NORMAL
    summary = PatientSummary(bmd_mg_cm3=bmd, levels_used=(VertebraLevel.L1, VertebraLevel.L2), category=category,
                             method="test pipeline: L1+L2 mean", threshold_set="ACR2018-ISCD-v1")
    return ScreeningResult(study_uid, series_uid, levels, summary,
                           LinearCalibration(CalibrationKind.DEFAULT, 0.8, 0.0))


def key_image(job: JobInput, source: pydicom.Dataset, pixels: np.ndarray) -> EncodedObject:
    """A Secondary Capture whose pixels are ``pixels`` windowed to 8 bits (a real, renderable key image)."""
    ds = _result_dataset(job, source, SECONDARY_CAPTURE, "key_image")
    scaled = np.clip((pixels.astype(np.float64) - pixels.min()) / max(np.ptp(pixels), 1) * 255, 0, 255)
    frame = np.kron(scaled.astype(np.uint8), np.ones((8, 8), dtype=np.uint8))  # 32 px -> 256 px, visible
    frame[::32, :] = 255  # a grid, so that the rendered PNG is plainly not blank
    ds.Rows, ds.Columns = frame.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = frame.tobytes()
    return encode_dataset("key_image", ds)


class KeyImagePipeline(MeanHuPipeline):
    """MeanHuPipeline with the three-level result and a key image made of the middle slice."""

    def run(self, job: JobInput) -> PipelineOutput:
        flag = os.environ.get(REJECT_ONCE_ENV)
        if flag and Path(flag).exists():
            Path(flag).unlink()
            raise PipelineRejectedError("rejected on purpose by the test pipeline (once)")
        datasets = [pydicom.dcmread(p) for p in job.paths]
        hu = float(np.mean([d.pixel_array.mean() * float(d.RescaleSlope) + float(d.RescaleIntercept)
                            for d in datasets]))
        middle = datasets[len(datasets) // 2]
        objects = (encode_dataset("sr", _result_dataset(job, datasets[0], BASIC_TEXT_SR, "sr")),
                   key_image(job, datasets[0], middle.pixel_array))
        return PipelineOutput(three_level_result(job.study_instance_uid, job.series_instance_uid, hu), objects)


def make_key_image_pipeline(config: Config) -> KeyImagePipeline:
    """Factory for the worker processes of ``serve`` (``--pipeline tests.web.support:make_key_image_pipeline``)."""
    return KeyImagePipeline()


def write_study(folder: Path, *, study_uid: str | None = None, hu: float = 100.0, n_slices: int = 12) -> list[Path]:
    """A small axial CT series with a known patient name and ID."""
    rng = np.random.default_rng(1)
    frames = [(rng.normal(hu + 1024, 15, (32, 32))).astype(np.int16) for _ in range(n_slices)]
    header = ct_series.CTSeriesHeader(study_instance_uid=study_uid or generate_uid(),
                                      extra={"PatientName": PATIENT_NAME, "PatientID": PATIENT_ID})
    return ct_series.write_ct_series(folder, frames, header, origin_lps_mm=(-16.0, -16.0, 0.0))


def succeeded_study(engine: object, storage: Path, *, hu: float = 100.0) -> tuple[str, int]:
    """A study as the node records it: two series (one chosen, one not selected with its reason) and a succeeded
    job with an SR and a key image on disk. Returns (study UID, job id)."""
    paths = write_study(storage / "incoming" / generate_uid(), hu=hu)
    first = pydicom.dcmread(paths[0], stop_before_pixels=True)
    study, series = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
    for p in paths:
        record_instance(engine, record(series, str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID),
                                       study_uid=study, path=str(p)))  # type: ignore[arg-type]
    other = generate_uid()
    record_instance(engine, record(other, other + ".1", study_uid=study))  # type: ignore[arg-type]
    with write_session(engine) as session:  # type: ignore[arg-type]
        row = session.query(Series).filter_by(series_instance_uid=other).one()
        decide_series(session, row, SeriesStatus.NOT_SELECTED, instance_count=1,
                      reason="another series of the study was preferred: thinner slices", now=row.last_received_at)
    job_id = jobs.enqueue(engine, series, max_attempts=2)  # type: ignore[arg-type]
    assert job_id is not None
    claimed = jobs.claim_next(engine, worker_id="w", lease_seconds=60)  # type: ignore[arg-type]
    assert claimed is not None and claimed.job_id == job_id
    output = KeyImagePipeline().run(JobInput(job_id, study, series, tuple(paths)))
    folder = result_dir(storage, job_id)
    stored = []
    for obj in output.objects:
        path, digest = write_object(folder, obj)
        stored.append(StoredObject(obj.kind, obj.sop_class_uid, obj.sop_instance_uid, obj.study_instance_uid,
                                   obj.series_instance_uid, str(path), len(obj.data), digest))
    success = JobSuccess(output.result, tuple(stored), str(folder), output.result.to_json_dict())
    assert jobs.finish(engine, job_id, worker_id="w", success=success, peer_names=["pacs"])  # type: ignore[arg-type]
    return study, job_id


def failed_job(engine: object, *, error: str = "series rejected: slices 8 mm thick") -> int:
    uid = generate_uid()
    record_instance(engine, record(uid, uid + ".1"))  # type: ignore[arg-type]
    job_id = jobs.enqueue(engine, uid, max_attempts=1)  # type: ignore[arg-type]
    claimed = jobs.claim_next(engine, worker_id="w", lease_seconds=60)  # type: ignore[arg-type]
    assert job_id is not None and claimed is not None and claimed.job_id == job_id
    jobs.fail(engine, job_id, worker_id="w", error=error, retryable=False)  # type: ignore[arg-type]
    return job_id


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found is not None, "no CSRF token in the page"
    return found.group(1)


def log_in(client: TestClient, username: str, password: str) -> None:
    page = client.get("/login")
    response = client.post("/login", data={"csrf_token": csrf_of(page.text), "username": username,
                                           "password": password, "next": "/"}, follow_redirects=False)
    assert response.status_code == 303, response.text
