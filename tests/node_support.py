"""Test support for the node core: instance records, CT files on disk, and small real pipelines.

The pipelines here are real ScreeningPipeline implementations (they read the stored instances and build real
DICOM Part 10 result objects with pydicom), only much simpler and faster than the screening recipe; they let the
queue, worker and crash tests run without the segmentation model.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from service.config import Config
from service.db.engine import make_engine
from service.db.queries import InstanceRecord, record_instance
from service.domain.levels import VertebraLevel
from service.domain.results import (
    CalibrationKind,
    Category,
    LinearCalibration,
    PatientSummary,
    RoiMethod,
    ScreeningResult,
    VertebraMeasurement,
)
from service.domain.segmentation import LabelledVertebra, SpineSegmentation
from service.export.outbox import claim_due_exports, mark_export_sent
from service.offline.phantom import labels as phantom_labels
from service.pipeline.encode import encode_dataset
from service.pipeline.types import JobInput, PipelineOutput, PipelineRejectedError
from service.queue import jobs
from service.queue.job_results import JobSuccess, StoredObject
from service.queue.scheduler import Scheduler
from service.series.settings import SeriesSettings
from tests.support import ct_series

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def record(series_uid: str, sop_uid: str, *, study_uid: str = "1.2.826.0.1.3680043.8.498.1",
           path: str | None = None, status: str = "stored", modality: str = "CT") -> InstanceRecord:
    return InstanceRecord(
        sop_instance_uid=sop_uid, sop_class_uid=CTImageStorage, study_instance_uid=study_uid,
        series_instance_uid=series_uid, modality=modality, transfer_syntax_uid=ExplicitVRLittleEndian,
        path=path if path is not None or status != "stored" else f"/nonexistent/{sop_uid}.dcm",
        size_bytes=1000, calling_ae_title="ORTHANC", status=status, reason=None if status == "stored" else "test")


def write_ct_series(folder: Path, *, n_slices: int = 24, size: int = 32, thickness_mm: float = 2.0,
                    kernel: str = "B30f", study_uid: str | None = None, series_uid: str | None = None,
                    contrast: str = "") -> list[Path]:
    """A small axial CT series (real, loadable; ~40 HU of noise) under ``folder``; returns the file paths."""
    rng = np.random.default_rng(0)
    frames = (rng.normal(1064, 20, (size, size)).astype(np.int16) for _ in range(n_slices))
    extra = {"ConvolutionKernel": kernel, **({"ContrastBolusAgent": contrast} if contrast else {})}
    header = ct_series.CTSeriesHeader(study_instance_uid=study_uid or generate_uid(),
                                      series_instance_uid=series_uid or generate_uid(),
                                      slice_thickness_mm=thickness_mm, extra=extra)
    return ct_series.write_ct_series(folder, frames, header, origin_lps_mm=(-16.0, -16.0, 0.0),
                                     file_name=lambda k: f"ct{k:04d}.dcm")


def _result_dataset(job: JobInput, source: pydicom.Dataset, sop_class: str, kind: str) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = job.study_instance_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "SR" if kind == "sr" else "OT"
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime"):
        if keyword in source:
            setattr(ds, keyword, getattr(source, keyword))
    ds.SeriesDescription = f"test {kind}"
    ds.ContentDate = dt.date.today().strftime("%Y%m%d")
    return ds


def quick_result(job: JobInput, hu_mean: float = 150.0) -> ScreeningResult:
    measurement = VertebraMeasurement(
        level=VertebraLevel.L1, centroid_lps_mm=(0.0, 0.0, 10.0), roi_method=RoiMethod.EROSION_3MM,
        trabecular_hu_mean=hu_mean, trabecular_hu_median=hu_mean, trabecular_hu_sd=5.0, voxel_count=100,
        roi_volume_mm3=100.0, bmd_mg_cm3=hu_mean * 0.8, evaluable=True)
    summary = PatientSummary(bmd_mg_cm3=hu_mean * 0.8, levels_used=(VertebraLevel.L1,), category=Category.NORMAL,
                             method="test pipeline: mean HU of the series", threshold_set="ACR2018-ISCD-v1")
    return ScreeningResult(job.study_instance_uid, job.series_instance_uid, (measurement,), summary,
                           LinearCalibration(CalibrationKind.DEFAULT, 0.8, 0.0))


class MeanHuPipeline:
    """Reads every stored slice, measures the mean HU of the series and builds an SR-class and an SC-class
    object; sleeps ``delay_seconds`` first (env BMD_TEST_PIPELINE_DELAY for subprocesses) so a test can kill it
    mid-job; fails on purpose ``fail_times`` times (transient) or always rejects when ``reject`` is set."""

    def __init__(self, delay_seconds: float = 0.0, fail_times: int = 0, reject: bool = False) -> None:
        self.delay_seconds = delay_seconds
        self.fail_times = fail_times
        self.reject = reject
        self.runs = 0

    def run(self, job: JobInput) -> PipelineOutput:
        self.runs += 1
        if self.reject:
            raise PipelineRejectedError("rejected on purpose by the test pipeline")
        if self.runs <= self.fail_times:
            raise RuntimeError(f"transient failure {self.runs} on purpose")
        deadline = time.monotonic() + self.delay_seconds
        while time.monotonic() < deadline:
            time.sleep(0.05)
        datasets = [pydicom.dcmread(p) for p in job.paths]
        hu = float(np.mean([d.pixel_array.mean() * float(d.RescaleSlope) + float(d.RescaleIntercept)
                            for d in datasets]))
        objects = tuple(encode_dataset(kind, _result_dataset(job, datasets[0], sop_class, kind))
                        for kind, sop_class in (("sr", BASIC_TEXT_SR), ("key_image", SECONDARY_CAPTURE)))
        return PipelineOutput(quick_result(job, hu), objects)


def make_mean_hu_pipeline(config: Config) -> MeanHuPipeline:
    """Factory for subprocess workers (``--pipeline tests.node_support:make_mean_hu_pipeline``)."""
    return MeanHuPipeline(delay_seconds=float(os.environ.get("BMD_TEST_PIPELINE_DELAY", "0")))


def claim_all_jobs(database_url: str, worker_id: str, barrier: Any) -> list[int]:
    """Claim jobs until none is left, finishing each at once (run in a separate process by the tests)."""

    engine = make_engine(database_url)
    barrier.wait(timeout=60)  # start both processes together
    claimed: list[int] = []
    try:
        while True:
            job = jobs.claim_next(engine, worker_id=worker_id, lease_seconds=60)
            if job is None:
                return claimed
            claimed.append(job.job_id)
            time.sleep(0.005)  # a little work between claims, as a worker does
            jobs.fail(engine, job.job_id, worker_id=worker_id, error="done", retryable=False)
    finally:
        engine.dispose()


def claim_all_exports(database_url: str, exporter_id: str, barrier: Any) -> list[int]:
    """Claim exports until none is due, marking each sent (run in a separate process by the tests)."""

    engine = make_engine(database_url)
    barrier.wait(timeout=60)
    claimed: list[int] = []
    try:
        while True:
            tasks = claim_due_exports(engine, exporter_id=exporter_id, limit=3, lease_seconds=60)
            if not tasks:
                return claimed
            for task in tasks:
                claimed.append(task.export_id)
                time.sleep(0.005)
                mark_export_sent(engine, task.export_id, status_code=0)
    finally:
        engine.dispose()


def enqueue_many(engine: object, n_series: int) -> list[int]:
    """n series with one instance each, one queued job per series."""

    ids = []
    for i in range(n_series):
        uid = f"1.2.826.0.1.3680043.8.498.77.{i}"
        record_instance(engine, record(uid, f"{uid}.1"))  # type: ignore[arg-type]
        job_id = jobs.enqueue(engine, uid, max_attempts=1)  # type: ignore[arg-type]
        if job_id is None:
            raise RuntimeError("enqueue refused")
        ids.append(job_id)
    return ids


def _collect(target: Any, database_url: str, name: str, barrier: Any, results: Any) -> None:
    results.put((name, target(database_url, name, barrier)))


def run_in_two_processes(target: Any, database_url: str) -> tuple[list[int], list[int]]:
    """Run ``target(database_url, name, barrier)`` in two spawned processes released at the same moment."""

    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    results = context.Queue()
    procs = [context.Process(target=_collect, args=(target, database_url, name, barrier, results))
             for name in ("p1", "p2")]
    for proc in procs:
        proc.start()
    got = dict(results.get(timeout=120) for _ in procs)
    for proc in procs:
        proc.join(timeout=30)
    return got["p1"], got["p2"]


def _success_for_tests(job_id: int, n_objects: int = 2, tag: str = "t") -> JobSuccess:
    """A JobSuccess with ``n_objects`` result-object rows (files not needed by the DB-level tests)."""

    result = quick_result(JobInput(job_id, "1.2", "1.2.3", (Path("/x"),)))
    objects = tuple(StoredObject("sr" if i == 0 else "key_image", BASIC_TEXT_SR, f"9.{tag}.{job_id}.{i}",
                                      "1.2", f"9.{tag}.{job_id}", f"/r/{tag}{job_id}-{i}.dcm", 10, "0" * 64)
                    for i in range(n_objects))
    return JobSuccess(result, objects, "/r", result.to_json_dict())


class TruthSegmenter:
    """A Segmenter that returns the phantom's true vertebral bodies (labels from service.offline.phantom), so that the
    screening recipe's other real steps (loader, BMD assessment, result objects) run without the trained model."""

    name = "phantom-truth"
    version = "1"

    def __init__(self, labels: Any) -> None:
        self.labels = labels

    def segment(self, volume: Any) -> Any:

        if self.labels.shape != volume.shape:
            raise ValueError(f"truth labels {self.labels.shape} do not match the volume {volume.shape}")
        body = np.zeros(volume.shape, dtype=np.int16)
        vertebrae = []
        for level in VertebraLevel:
            mask = phantom_labels.body_mask(self.labels, level)
            if not mask.any():
                continue
            body[mask] = int(level)
            centroid = volume.index_to_lps(np.argwhere(mask).mean(axis=0))
            touches = bool(mask[:, :, 0].any() or mask[:, :, -1].any())
            vertebrae.append(LabelledVertebra(level, tuple(float(c) for c in centroid), cut_by_fov=touches))
        return SpineSegmentation(body, None, tuple(vertebrae), self.name, self.version)


def record_files(engine: Any, paths: list[Path], when: dt.datetime) -> str:
    """Record stored CT files as the receive handler would (at ``when``); returns their Series Instance UID."""
    uid = ""
    for p in paths:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        uid = str(ds.SeriesInstanceUID)
        record_instance(engine, record(uid, str(ds.SOPInstanceUID), study_uid=str(ds.StudyInstanceUID),
                                       path=str(p)), now=when)
    return uid


def quiet_scheduler(engine: Any, url: str, tmp_path: Path) -> Scheduler:
    """A scheduler deciding after 10 s of quiet, with series of at least 10 slices."""
    config = Config(series=SeriesSettings(min_slices=10)).with_node(
        series_stable_seconds=10, database_url=url, storage_dir=tmp_path / "storage")
    return Scheduler(config, engine)
