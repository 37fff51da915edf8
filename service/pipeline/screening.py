"""The screening recipe: load -> segment + label -> measure + calibrate + classify -> result objects.

    series       = load_series(job.paths)          (each file parsed once; headers kept for the objects)
    segmentation = segment(volume)
    assessment   = assess(volume, segmentation, config.bmd, active site model)
    objects      = build_objects(series, segmentation, assessment, previous SR)

The segmentation model and the site model are loaded once per process (first job), not per job.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

from service.config import Config
from service.pipeline import steps
from service.pipeline.timings import TIMINGS_KEY
from service.pipeline.types import JobInput, PipelineOutput

log = logging.getLogger(__name__)

_UNSET: Any = object()


class ScreeningRecipe:
    def __init__(self, config: Config, segmenter: Any = None) -> None:
        """``segmenter``: an already loaded Segmenter (default: load the configured one on the first job)."""
        self.config = config
        self.segment = steps.SegmentStep(config.segmentation, segmenter)
        self._site_model: Any = _UNSET

    @property
    def site_model(self) -> Any:
        if self._site_model is _UNSET:
            self._site_model = steps.load_site_model(self.config.site_models)
        return self._site_model

    def warm_up(self) -> None:
        """Load the segmentation model and the site model now (worker start) rather than on the first job."""
        _ = self.segment.segmenter
        _ = self.site_model

    def run(self, job: JobInput) -> PipelineOutput:
        timings: dict[str, float] = {}
        t = time.monotonic()
        series = steps.load_series(job.paths, self.config.series)
        volume = series.volume
        timings["load"] = time.monotonic() - t
        t = time.monotonic()
        segmentation = self.segment(volume)
        timings["segment"] = time.monotonic() - t
        t = time.monotonic()
        assessment = steps.assess(volume, segmentation, self.config.bmd, self.site_model)
        assessment = steps.with_trend(assessment, series, job.prior, self.config.bmd)
        timings["assess"] = time.monotonic() - t
        t = time.monotonic()
        objects = steps.build_objects(series, segmentation, assessment, job.previous)
        timings["objects"] = time.monotonic() - t
        log.info("job %s: screening done (%s)", job.job_id,
                 ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
        # the step durations travel in the result document (result.json and the job's result_json: "extra" ->
        # TIMINGS_KEY), from which /metrics builds bmd_node_stage_duration_seconds{stage=...}
        result = dataclasses.replace(assessment.result, extra={
            **assessment.result.extra, TIMINGS_KEY: {step: round(seconds, 3) for step, seconds in timings.items()}})
        return PipelineOutput(result, objects)


def build_screening_pipeline(config: Config) -> ScreeningRecipe:
    """The production pipeline (what ``bmd-node worker`` / ``serve`` / ``analyze`` run)."""
    return ScreeningRecipe(config)
