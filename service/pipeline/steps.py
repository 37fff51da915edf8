"""The screening steps, each with typed inputs and outputs. Heavy modules (torch, highdicom) are imported
lazily so that importing the pipeline stays cheap and the CLI starts fast.

    load_series(paths, series settings)                      -> LoadedSeries (volume + slice headers)
    SegmentStep(segmentation settings)(volume)               -> SpineSegmentation   (model loaded once)
    assess(volume, segmentation, Config.bmd, site model)     -> BmdAssessment (ScreeningResult + ROI labels)
    build_objects(series, segmentation, assessment, ...)     -> tuple[EncodedObject, ...]  (SEG, SR, key image)
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from service import __version__
from service.calibration.assess import BmdAssessment, assess_bmd
from service.calibration.settings import BmdSettings
from service.domain.paths import resolve_model_path
from service.domain.segmentation import SpineSegmentation
from service.domain.site_model import SiteModelPredictor
from service.domain.volume import CTVolume
from service.pipeline.encode import encode_dataset
from service.pipeline.types import EncodedObject, PipelineRejectedError, PreviousResult
from service.segmentation.settings import SegmentationSettings
from service.series.settings import SeriesSettings
from service.series.volume_loader import LoadedSeries, SeriesRejectedError, read_series
from service.site_models.registry import load_active_predictor
from service.site_models.settings import SiteModelsSettings

log = logging.getLogger(__name__)


def load_series(paths: Sequence[Path], settings: SeriesSettings) -> LoadedSeries:
    """Read (each file once), check and decode the series; an unusable series is a permanent
    PipelineRejectedError."""
    try:
        return read_series(list(paths), min_slices=settings.min_slices,
                           max_slice_thickness_mm=settings.max_slice_thickness_mm)
    except SeriesRejectedError as exc:
        raise PipelineRejectedError(f"series rejected: {exc.reason}") from exc


class SegmentStep:
    """Vertebra segmentation + labelling; the model is loaded on first use and kept for the process."""

    def __init__(self, settings: SegmentationSettings, segmenter: Any = None) -> None:
        self.settings = settings
        self._segmenter: Any = segmenter
        """None: load_segmenter(settings) on first use; or an already loaded Segmenter."""

    @property
    def segmenter(self) -> Any:
        if self._segmenter is None:
            # torch and MONAI (seconds to import) load with the model, on the first job, not with the pipeline
            from service.segmentation.inference import load_segmenter  # noqa: PLC0415

            started = time.monotonic()
            settings = dataclasses.replace(self.settings, bundle_dir=resolve_model_path(self.settings.bundle_dir))
            self._segmenter = load_segmenter(settings)
            log.info("segmenter %s %s loaded in %.1f s", getattr(self._segmenter, "name", "?"),
                     getattr(self._segmenter, "version", "?"), time.monotonic() - started)
        return self._segmenter

    def __call__(self, volume: CTVolume) -> SpineSegmentation:
        segmentation: SpineSegmentation = self.segmenter.segment(volume)
        if not segmentation.vertebrae:
            raise PipelineRejectedError("no vertebra found in the series")
        return segmentation


def load_site_model(settings: SiteModelsSettings) -> SiteModelPredictor | None:
    if not settings.enabled:
        return None
    try:
        predictor = load_active_predictor(resolve_model_path(settings.registry_dir))
    except (ValueError, OSError) as exc:
        # An activated model that fails its integrity check must not stop screening: the node falls back to the
        # linear calibration (the result's method says so) and the error is logged loudly for the site.
        log.error("activated site model could not be loaded, using the linear calibration: %s", exc)
        return None
    if predictor is not None:
        log.info("site model active: %s", predictor.name)
    return predictor


def assess(volume: CTVolume, segmentation: SpineSegmentation, settings: BmdSettings,
           site_model: SiteModelPredictor | None) -> BmdAssessment:
    """``settings`` is ``Config.bmd`` as loaded; the result records this node's version as its algorithm version."""
    return assess_bmd(volume, segmentation, settings, site_model=site_model, algorithm_version=__version__)


def predecessor_ref(previous: PreviousResult | None) -> Any:
    """The earlier SR as service.results.build.PredecessorRef (None for a first run)."""
    if previous is None:
        return None
    # service.results loads highdicom (about a second): imported when the first result is built
    from service.results.build import PredecessorRef  # noqa: PLC0415

    return PredecessorRef(study_instance_uid=previous.study_instance_uid,
                          series_instance_uid=previous.series_instance_uid,
                          sop_class_uid=previous.sr_sop_class_uid, sop_instance_uid=previous.sr_sop_instance_uid)


def algorithm_info(segmentation: SpineSegmentation) -> Any:
    # highdicom, as in predecessor_ref
    from service.results.common import AlgorithmInfo  # noqa: PLC0415

    return AlgorithmInfo(version=__version__, model_name=segmentation.model_name or "unknown",
                         model_version=segmentation.model_version or "unknown")


def build_objects(series: LoadedSeries, segmentation: SpineSegmentation, assessment: BmdAssessment,
                  previous: PreviousResult | None) -> tuple[EncodedObject, ...]:
    # highdicom, as in predecessor_ref
    from service.results.build import build_result_objects  # noqa: PLC0415

    built = build_result_objects(series.volume, segmentation, assessment.roi_labels, assessment.result,
                                 algorithm_info(segmentation), predecessor_ref(previous),
                                 source_headers=series.headers)
    # in sending order: SEG first (the SR references it), then SR, then key image; exports keep this order
    return tuple(encode_dataset(kind, dataset)
                 for kind, dataset in (("seg", built.seg), ("sr", built.sr), ("key_image", built.key_image)))
