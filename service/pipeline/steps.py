"""The screening steps, each with typed inputs and outputs. Heavy modules (torch, highdicom) are imported
lazily so that importing the pipeline stays cheap and the CLI starts fast.

    load_series(paths, series settings)                      -> LoadedSeries (volume + slice headers)
    SegmentStep(segmentation settings)(volume)               -> SpineSegmentation   (model loaded once)
    assess(volume, segmentation, Config.bmd, site model)     -> BmdAssessment (ScreeningResult + ROI labels)
    build_objects(series, segmentation, assessment, ...)     -> tuple[EncodedObject, ...]  (SEG, SR, key image)
    build_indeterminate_objects(series named with reasons)   -> tuple[EncodedObject, ...]  (SR, key image)

A series in which the segmentation finds no vertebra raises NoVertebraFoundError (a PipelineRejectedError): the
job ends rejected, and with ``[results] report_unassessable`` the worker sends the indeterminate report for it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from service import __version__
from service.calibration.assess import BmdAssessment, assess_bmd
from service.calibration.settings import BmdSettings
from service.domain.paths import resolve_model_path
from service.domain.segmentation import SpineSegmentation
from service.domain.site_model import SiteModelPredictor
from service.domain.trend import TREND_KEY, TrendPoint, compute_trend, dicom_date, trend_point_of
from service.domain.volume import CTVolume
from service.pipeline.encode import encode_dataset
from service.pipeline.types import EncodedObject, PipelineRejectedError, PreviousResult
from service.segmentation.settings import SegmentationSettings
from service.series.settings import SeriesSettings
from service.series.volume_loader import LoadedSeries, SeriesRejectedError, read_series
from service.site_models.registry import load_active_predictor
from service.site_models.settings import SiteModelsSettings

log = logging.getLogger(__name__)

NO_VERTEBRA_REASON = "no vertebra found in the series"


class NoVertebraFoundError(PipelineRejectedError):
    """The segmentation found no vertebra in the series: a permanent rejection that an indeterminate report names."""

    def __init__(self) -> None:
        super().__init__(NO_VERTEBRA_REASON)


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
            # torch and MONAI (seconds to import) load with the model (warm_up or the first job), not with the
            # pipeline. Loaded through the start-up check: a missing or broken bundle file raises
            # ModelPreflightError naming it, and a tiny forward pass has run before the first job (issue 19 pt 6).
            from service.segmentation.preflight import load_checked_segmenter  # noqa: PLC0415

            started = time.monotonic()
            settings = dataclasses.replace(self.settings, bundle_dir=resolve_model_path(self.settings.bundle_dir))
            self._segmenter = load_checked_segmenter(settings)
            log.info("segmenter %s %s loaded in %.1f s", getattr(self._segmenter, "name", "?"),
                     getattr(self._segmenter, "version", "?"), time.monotonic() - started)
        return self._segmenter

    def __call__(self, volume: CTVolume) -> SpineSegmentation:
        segmentation: SpineSegmentation = self.segmenter.segment(volume)
        if not segmentation.vertebrae:
            raise NoVertebraFoundError
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


def with_trend(assessment: BmdAssessment, series: LoadedSeries, prior: TrendPoint | None,
               settings: BmdSettings) -> BmdAssessment:
    """The assessment whose result carries the trend since ``prior`` (``extra["trend"]``, so result.json, the SR,
    the key image and the dashboard show it); unchanged without a prior or without this study's Study Date."""
    if prior is None:
        return assessment
    result = assessment.result
    study_date = dicom_date(str(series.headers[0].get("StudyDate", "") or "")) if series.headers else None
    if study_date is None or study_date <= prior.study_date or prior.study_instance_uid == result.study_instance_uid:
        log.warning("prior study given but this study's date is missing or not later: no trend")
        return assessment
    trend = compute_trend(trend_point_of(result, study_date, series.volume.kvp), prior, settings.precision_percent)
    log.info("trend since %s: %s", trend.prior_study_date, trend.comparison)
    extra = {**result.extra, TREND_KEY: trend.to_json_dict()}
    return dataclasses.replace(assessment, result=dataclasses.replace(result, extra=extra))


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


def _first_readable_header(paths: Sequence[Path]) -> pydicom.Dataset | None:
    """The header of the first readable instance (SOP UIDs taken from the file meta when the dataset lacks them)."""
    for path in sorted(paths):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
            log.warning("indeterminate report: cannot read %s: %s", Path(path).name, type(exc).__name__)
            continue
        meta = getattr(ds, "file_meta", None)
        for keyword, meta_keyword in (("SOPClassUID", "MediaStorageSOPClassUID"),
                                      ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
            if not ds.get(keyword) and meta is not None and meta.get(meta_keyword):
                setattr(ds, keyword, meta.get(meta_keyword))
        return ds
    return None


def build_indeterminate_objects(named: Sequence[tuple[str, str, Sequence[Path]]], *, summary: str,
                                predecessor_sr: tuple[str, str, str, str] | None = None
                                ) -> tuple[EncodedObject, ...]:
    """The indeterminate SR and key image naming each series. ``named``: (Series Instance UID, reason, stored
    instance paths) per series; one instance of each gives its number and description, the first readable one the
    patient and study. ``predecessor_sr``: (study, series, SOP class, SOP instance) UIDs of an earlier
    indeterminate SR this one replaces."""
    # highdicom, as in predecessor_ref
    from service.results.build import PredecessorRef  # noqa: PLC0415
    from service.results.common import AlgorithmInfo  # noqa: PLC0415
    from service.results.unassessable import UnusableSeries  # noqa: PLC0415
    from service.results.unassessable import build_indeterminate_objects as build  # noqa: PLC0415

    headers: list[pydicom.Dataset] = []
    unusable: list[Any] = []
    for series_uid, reason, paths in named:
        header = _first_readable_header(paths)
        if header is not None:
            headers.append(header)
        unusable.append(UnusableSeries(
            series_instance_uid=series_uid, reason=reason,
            series_number=str(header.get("SeriesNumber", "") or "") if header is not None else "",
            series_description=str(header.get("SeriesDescription", "") or "") if header is not None else ""))
    if not headers:
        raise ValueError(f"no stored instance of the {len(named)} series named could be read")
    predecessor = PredecessorRef(*predecessor_sr).to_item() if predecessor_sr is not None else None
    # No segmentation model ran for a study none of whose series was used; for "no vertebra" its name is not kept.
    algorithm = AlgorithmInfo(version=__version__, model_name="not applicable", model_version="-")
    built = build(headers, unusable, algorithm, summary=summary, predecessor=predecessor)
    return tuple(encode_dataset(kind, dataset) for kind, dataset in (("sr", built.sr), ("key_image", built.key_image)))
