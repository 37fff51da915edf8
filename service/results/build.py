"""The entry point the worker calls: SEG, TID 1500 SR and key image for one screened series.

Building makes new UIDs every time; the worker builds once per job, persists the bytes and re-sends the same
bytes on retry. When a series is processed again, pass the previous SR as ``predecessor``: the new SR names it in
its Predecessor Documents Sequence.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from service.domain.results import ScreeningResult
from service.domain.segmentation import SpineSegmentation
from service.domain.volume import CTVolume
from service.results.common import AlgorithmInfo, read_source_headers
from service.results.keyimage import build_key_image
from service.results.planar_roi import centre_slice_ellipses
from service.results.seg import build_seg
from service.results.sr import build_sr

__all__ = ["AlgorithmInfo", "PredecessorRef", "ResultObjects", "build_result_objects"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredecessorRef:
    """The previous SR of the same series (when a series is processed again)."""

    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    sop_instance_uid: str

    def __post_init__(self) -> None:
        for name in ("study_instance_uid", "series_instance_uid", "sop_class_uid", "sop_instance_uid"):
            value = getattr(self, name)
            if not value or len(value) > 64:
                raise ValueError(f"{name} must be a UID of 1..64 characters, got {value!r}")

    def to_item(self) -> Dataset:
        """One item of the Predecessor Documents Sequence (SOP Instance Reference Macro, hierarchical)."""
        sop = Dataset()
        sop.ReferencedSOPClassUID = self.sop_class_uid
        sop.ReferencedSOPInstanceUID = self.sop_instance_uid
        series = Dataset()
        series.SeriesInstanceUID = self.series_instance_uid
        series.ReferencedSOPSequence = [sop]
        item = Dataset()
        item.StudyInstanceUID = self.study_instance_uid
        item.ReferencedSeriesSequence = [series]
        return item


@dataclass(frozen=True, eq=False)
class ResultObjects:
    seg: pydicom.Dataset
    sr: pydicom.Dataset
    key_image: pydicom.Dataset

    def datasets(self) -> list[pydicom.Dataset]:
        """In sending order: SEG first (the SR references it), then SR, then key image."""
        return [self.seg, self.sr, self.key_image]


def build_result_objects(
    volume: CTVolume,
    segmentation: SpineSegmentation,
    roi_labels: np.ndarray,
    result: ScreeningResult,
    algorithm: AlgorithmInfo,
    predecessor: PredecessorRef | None = None,
    source_headers: Sequence[Dataset] | None = None,
) -> ResultObjects:
    """SEG (bodies + trabecular ROIs), Comprehensive 3D SR (TID 1500) and Secondary Capture key image.

    ``source_headers``: the CT headers in slice order as the loader read them (``LoadedSeries.headers``); without
    them the headers are read again from ``volume.source_paths``.
    """
    if not volume.source_paths:
        raise ValueError("volume.source_paths is empty: result objects need the source CT files")
    if source_headers is not None and len(source_headers) != volume.shape[2]:
        raise ValueError(f"source_headers must have one entry per slice ({volume.shape[2]}), got "
                         f"{len(source_headers)}")
    if roi_labels.shape != volume.shape:
        raise ValueError(f"roi_labels shape {roi_labels.shape} must equal the volume shape {volume.shape}")
    if segmentation.body_labels.shape != volume.shape:
        raise ValueError(f"segmentation.body_labels shape {segmentation.body_labels.shape} must equal the volume "
                         f"shape {volume.shape}")
    if volume.series_instance_uid and result.series_instance_uid \
            and volume.series_instance_uid != result.series_instance_uid:
        raise ValueError("result.series_instance_uid differs from volume.series_instance_uid")
    headers = list(source_headers) if source_headers is not None else read_source_headers(volume)
    study_uids = {str(h.get("StudyInstanceUID", "") or "") for h in headers}
    if "" in study_uids:
        raise ValueError("a source image has no StudyInstanceUID: result objects cannot join its study")
    if len(study_uids) != 1:
        raise ValueError(f"source images belong to {len(study_uids)} studies; expected one")
    if predecessor is not None and predecessor.study_instance_uid not in study_uids:
        raise ValueError("predecessor.study_instance_uid differs from the source study")

    when = dt.datetime.now().replace(microsecond=0)
    seg, numbers = build_seg(headers, segmentation.body_labels, roi_labels, algorithm, when,
                             summary_levels=result.summary.levels_used)
    # Each level's ellipse is drawn from the mask its TID 1411 group references: the trabecular ROI, else the body.
    levels = tuple(m.level for m in result.vertebrae)
    planar = centre_slice_ellipses(segmentation.body_labels, levels)
    planar.update(centre_slice_ellipses(roi_labels, levels))
    sr = build_sr(headers, seg, numbers, result, algorithm, when,
                  predecessor=predecessor.to_item() if predecessor is not None else None, planar_rois=planar)
    key_image = build_key_image(volume, segmentation, roi_labels, result, algorithm, headers[0], when)
    logger.info("result objects built for one series: SEG %d segments, SR %d levels, key image %dx%d",
                len(seg.SegmentSequence), len(result.vertebrae), int(key_image.Columns), int(key_image.Rows))
    return ResultObjects(seg=seg, sr=sr, key_image=key_image)
