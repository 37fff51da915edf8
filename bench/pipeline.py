"""The screening recipe with per-stage timings, for the benchmarks (``--pipeline bench.pipeline:make_timed_pipeline``).

It calls the same steps as service.pipeline.screening.ScreeningRecipe, in the same order, and only adds clocks:

    load_s       read + decode + check the DICOM series (steps.load_series)
    resample_s   canonical orientation + resampling to the model's coarse grid
    network_s    the 3-D U-Nets (coarse 3 mm + fine 1.25 mm stage, sliding window)
    labelling_s  body instances, labelling, native-resolution refinement
    assess_s     ROI + HU statistics + calibration + classification (steps.assess)
    objects_s    SEG / SR / key image built and encoded (steps.build_objects)

The timings of each job go to ``$BMD_BENCH_TIMINGS_DIR/<series uid>.json`` (the node's worker logs them but does
not record them in the database).

Truth fallback: when the segmentation finds no vertebra (no trained model: the benchmark then runs an untrained
network of the same architecture for the timing) and ``$BMD_BENCH_TRUTH_MAP`` names the phantom's true body
labels for the series, the later stages run on the true labels, so that they are timed on a realistic spine.
The result says so (``truth_fallback``) and the benchmark report repeats it.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np

from service.config import Config
from service.domain.levels import VertebraLevel
from service.domain.segmentation import LabelledVertebra, SpineSegmentation
from service.domain.volume import CTVolume
from service.pipeline import memory, steps
from service.pipeline.types import JobInput, PipelineOutput, PipelineRejectedError
from service.results import build as results_build

log = logging.getLogger(__name__)

TIMINGS_DIR_ENV = "BMD_BENCH_TIMINGS_DIR"
TRUTH_MAP_ENV = "BMD_BENCH_TRUTH_MAP"
STAGES = ("load_s", "resample_s", "network_s", "labelling_s", "assess_s", "objects_s")


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


OBJECT_PARTS = ("read_source_headers", "build_seg", "build_sr", "build_key_image")
"""Functions of service.results.build timed one by one (objects_s split), plus the Part 10 encoding."""


class PartClock:
    """Wraps a few module functions with clocks (the benchmark process only; the code itself is unchanged)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def wrap(self, module: Any, name: str, key: str) -> None:
        original = getattr(module, name)
        if getattr(original, "_bench_wrapped", False):
            return

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - started

        timed._bench_wrapped = True  # type: ignore[attr-defined]
        setattr(module, name, timed)

    def take(self) -> dict[str, float]:
        out, self.seconds = self.seconds, {}
        return out


def instrument_result_writers(clock: PartClock) -> None:
    """Time SEG / SR / key image / header reading / encoding separately."""
    for name in OBJECT_PARTS:
        if hasattr(results_build, name):
            clock.wrap(results_build, name, f"objects.{name.removeprefix('build_')}_s")
    clock.wrap(steps, "encode_dataset", "objects.encode_s")


def timed_segmentation(segmenter: Any, volume: CTVolume) -> tuple[SpineSegmentation, dict[str, float]]:
    """segmenter.segment(volume), split into resample / network / labelling when it is the bmd-node U-Net."""
    # torch loads with the segmenter, in the worker; bench.run and bench.e2e import this module without it
    from service.segmentation import inference  # noqa: PLC0415

    if not isinstance(segmenter, inference.BmdNodeSegmenter):
        t = time.perf_counter()
        seg = segmenter.segment(volume)
        return seg, {"resample_s": 0.0, "network_s": time.perf_counter() - t, "labelling_s": 0.0}
    t0 = time.perf_counter()
    frame = inference.canonical_frame(volume.affine_lps, volume.shape)
    grid = inference.coarse_grid(frame, segmenter.bundle.coarse_spacing_mm)
    coarse_hu = inference.resample_to_coarse(frame.to_canonical(volume.hu.astype(np.float32, copy=False)), grid)
    t1 = time.perf_counter()
    probs = segmenter.predict_probs(coarse_hu)
    t2 = time.perf_counter()
    pred = inference.CoarsePrediction(frame, grid, probs, coarse_hu)
    fine_runner = segmenter.fine_runner(volume, pred)
    fine_s = [0.0]
    timed_fine = None
    if fine_runner is not None:
        def timed_fine(box: tuple[slice, slice, slice]) -> Any:
            tf = time.perf_counter()
            out = fine_runner(box)
            fine_s[0] += time.perf_counter() - tf
            return out
    seg = inference.assemble_segmentation(volume, pred, segmenter.name, segmenter.version, timed_fine)
    t3 = time.perf_counter()
    # both networks (coarse and fine U-Net, with the fine stage's resampling) count as network time
    return seg, {"resample_s": t1 - t0, "network_s": t2 - t1 + fine_s[0], "labelling_s": t3 - t2 - fine_s[0]}


def truth_segmentation(volume: CTVolume, labels_path: Path, affine_path: Path) -> SpineSegmentation:
    """The phantom's true vertebral bodies as a SpineSegmentation on the loaded CT's grid."""
    labels = np.load(labels_path)
    affine = np.load(affine_path)
    if labels.shape != volume.shape:
        raise ValueError(f"truth labels {labels.shape} do not match the CT {volume.shape}")
    if not np.allclose(affine, volume.affine_lps, atol=1e-3):
        flip = np.eye(4)
        flip[2, 2], flip[2, 3] = -1.0, volume.shape[2] - 1
        if not np.allclose(affine @ flip, volume.affine_lps, atol=1e-3):
            raise ValueError("truth labels are on another grid than the loaded CT")
        labels = labels[:, :, ::-1]
    labels = np.ascontiguousarray(labels, dtype=np.int16)
    vertebrae = []
    last_k = volume.shape[2] - 1
    for value in sorted(int(v) for v in np.unique(labels) if v != 0):
        coords = np.argwhere(labels == value)
        centroid = volume.index_to_lps(coords.mean(axis=0))
        cut = bool(coords[:, 2].min() == 0 or coords[:, 2].max() == last_k)
        vertebrae.append(LabelledVertebra(VertebraLevel(value), tuple(float(c) for c in centroid),  # type: ignore[arg-type]
                                          cut_by_fov=cut))
    return SpineSegmentation(body_labels=labels, posterior_mask=None, vertebrae=tuple(vertebrae),
                             model_name="phantom truth (benchmark fallback)", model_version="0")


class TimedScreening:
    """ScreeningRecipe's steps with clocks (see the module doc). The segmentation model is loaded at start."""

    def __init__(self, config: Config, *, preload: bool = True) -> None:
        self.config = config
        self.segment = steps.SegmentStep(config.segmentation)
        self.bmd_settings = config.bmd
        self.site_model = steps.load_site_model(config.site_models)
        self.model_load_s = 0.0
        self.parts = PartClock()
        instrument_result_writers(self.parts)
        if preload:
            started = time.perf_counter()
            _ = self.segment.segmenter
            self.model_load_s = time.perf_counter() - started
        self.timings_dir = Path(os.environ[TIMINGS_DIR_ENV]) if os.environ.get(TIMINGS_DIR_ENV) else None
        truth_map = os.environ.get(TRUTH_MAP_ENV)
        self.truth: dict[str, dict[str, str]] = json.loads(Path(truth_map).read_text()) if truth_map else {}
        if self.timings_dir is not None:
            self.timings_dir.mkdir(parents=True, exist_ok=True)
            (self.timings_dir / f"ready-{os.getpid()}.json").write_text(json.dumps(
                {"pid": os.getpid(), "model_load_s": self.model_load_s, "max_rss_mib": max_rss_mib()}))

    def run_timed(self, job: JobInput) -> tuple[PipelineOutput, dict[str, Any]]:
        timings: dict[str, float] = {}
        rss: dict[str, float] = {"start": max_rss_mib()}
        # the worker's admission check ([worker] memory_limit_mb), recorded rather than enforced: the benchmark
        # measures the real peak of every study, also of one the check would turn away
        estimate = memory.estimate_job_peak(*memory.series_dimensions(job.paths))
        limit_mb = self.config.worker.memory_limit_mb
        self.parts.take()
        t = time.perf_counter()
        series = steps.load_series(job.paths, self.config.series)
        volume = series.volume
        timings["load_s"] = time.perf_counter() - t
        rss["load_s"] = max_rss_mib()
        segmentation, seg_times = timed_segmentation(self.segment.segmenter, volume)
        timings.update(seg_times)
        rss["labelling_s"] = max_rss_mib()
        fallback = False
        fallback_s = 0.0
        if not segmentation.vertebrae:
            entry = self.truth.get(job.series_instance_uid)
            if entry is None:
                raise PipelineRejectedError("no vertebra found in the series")
            t = time.perf_counter()
            segmentation = truth_segmentation(volume, Path(entry["body_labels"]), Path(entry["affine_lps"]))
            fallback_s = time.perf_counter() - t  # a benchmark artefact, not node work: kept out of the stages
            fallback = True
        t = time.perf_counter()
        assessment = steps.assess(volume, segmentation, self.bmd_settings, self.site_model)
        timings["assess_s"] = time.perf_counter() - t
        rss["assess_s"] = max_rss_mib()
        t = time.perf_counter()
        missing = None
        try:
            objects = steps.build_objects(series, segmentation, assessment, job.previous)
        except ModuleNotFoundError as exc:  # the result writers are not in this checkout yet
            if exc.name != "service.results.build":
                raise
            objects, missing = (), f"result objects not built: {exc.name} is missing"
            log.warning("job %s: %s", job.job_id, missing)
        timings["objects_s"] = time.perf_counter() - t
        rss["objects_s"] = max_rss_mib()
        record = {"job_id": job.job_id, "series_instance_uid": job.series_instance_uid, "slices": volume.shape[2],
                  "timings": timings, "pipeline_s": sum(timings.values()), "truth_fallback": fallback,
                  "truth_fallback_s": fallback_s,
                  "vertebrae": len(segmentation.vertebrae), "objects": [o.kind for o in objects],
                  "object_bytes": sum(len(o.data) for o in objects), "objects_missing": missing,
                  "object_parts": self.parts.take(), "max_rss_after_mib": rss, "pid": os.getpid(),
                  "max_rss_mib": max_rss_mib(), "finished_unix": time.time(),
                  "shape": list(volume.shape), "memory_estimate_mib": estimate.peak_mib,
                  "memory_limit_mb": limit_mb, "accepted_under_limit": estimate.fits(limit_mb)}
        return PipelineOutput(assessment.result, objects), record

    def run(self, job: JobInput) -> PipelineOutput:
        output, record = self.run_timed(job)
        log.info("job %s: bench timings %s", job.job_id, record["timings"])
        if self.timings_dir is not None:
            (self.timings_dir / f"{job.series_instance_uid}.json").write_text(json.dumps(record, indent=1))
        return output


def make_timed_pipeline(config: Config) -> TimedScreening:
    """Pipeline factory for ``bmd-node worker/serve --pipeline bench.pipeline:make_timed_pipeline``."""
    return TimedScreening(config)
