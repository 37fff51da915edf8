"""Per-level trabecular HU for a cohort row, from the same numbers the node serves with.

Three sources, in this order of preference for a row:
1. the ``hu_T5`` ... ``hu_L2`` columns (extracted earlier by the node, or synthetic);
2. the node's stored ``result.json`` for the series (``vertebrae[].trabecular_hu_mean`` of evaluable levels);
3. the CT series folder, run through the node's own pipeline: ``service.series.volume_loader.load_series`` ->
   ``service.segmentation.inference.load_segmenter(SegmentationSettings()).segment`` ->
   ``service.calibration.assess.assess_bmd(volume, seg, BmdSettings(calibration_store_dir=None))``; the
   segmenter (torch) is imported when the first CT row needs it.

Levels that are not evaluable (fracture, metal, ...) are absent from the returned mapping, exactly as the node's
pipeline would hand them to a site model at serving time.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from service.calibration.assess import assess_bmd
from service.calibration.settings import BmdSettings
from service.domain.levels import VertebraLevel
from service.segmentation.settings import SegmentationSettings
from service.series.volume_loader import load_series
from service.site_models.cohort import FEATURE_LEVELS, Cohort, CohortRow

logger = logging.getLogger(__name__)


class FeatureExtractionError(RuntimeError):
    """A row's features could not be extracted (names the row and the source)."""


def hu_from_result_dict(document: dict[str, Any]) -> dict[VertebraLevel, float]:
    """T5..L2 trabecular HU means of evaluable levels from a result.json document."""
    vertebrae = document.get("vertebrae")
    if not isinstance(vertebrae, list):
        raise ValueError("result document has no 'vertebrae' list")
    out: dict[VertebraLevel, float] = {}
    for entry in vertebrae:
        try:
            level = VertebraLevel.from_name(str(entry["level"]))
        except (KeyError, ValueError):
            continue
        if level not in FEATURE_LEVELS or not entry.get("evaluable", False):
            continue
        hu = entry.get("trabecular_hu_mean")
        if hu is None:
            continue
        out[level] = float(hu)
    return out


def hu_from_result_json(path: Path) -> dict[VertebraLevel, float]:
    with Path(path).open(encoding="utf-8") as fh:
        return hu_from_result_dict(json.load(fh))


def hu_from_screening_result(result: Any) -> dict[VertebraLevel, float]:
    """From what ``assess_bmd`` returns (a BmdAssessment with ``.result``, a ScreeningResult, or measurements)."""
    inner = getattr(result, "result", None)
    if inner is not None and hasattr(inner, "to_json_dict"):
        result = inner
    if hasattr(result, "to_json_dict"):
        return hu_from_result_dict(result.to_json_dict())
    vertebrae = getattr(result, "vertebrae", None)
    if vertebrae is None and isinstance(result, tuple | list):
        vertebrae = result
    if vertebrae is None:
        raise TypeError(f"cannot read vertebra measurements from {type(result).__name__}")
    out: dict[VertebraLevel, float] = {}
    for m in vertebrae:
        if m.level in FEATURE_LEVELS and m.evaluable and m.trabecular_hu_mean is not None:
            out[VertebraLevel(m.level)] = float(m.trabecular_hu_mean)
    return out


def series_files(folder: Path) -> list[Path]:
    """The files of a series folder (``*.dcm`` when present, else every regular file), sorted."""
    folder = Path(folder)
    dcm = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".dcm")
    if dcm:
        return dcm
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def default_ct_pipeline() -> Callable[[Path], dict[VertebraLevel, float]]:
    """The node's own pipeline as a callable folder -> HU by level (segmenter loaded once)."""
    # torch and MONAI (seconds to import) only when a row has to be segmented
    from service.segmentation.inference import load_segmenter  # noqa: PLC0415

    segmenter = load_segmenter(SegmentationSettings())
    settings = BmdSettings(calibration_store_dir=None)  # the cohort tool does not read the node's phantom store

    def run(folder: Path) -> dict[VertebraLevel, float]:
        volume = load_series(series_files(folder))
        seg = segmenter.segment(volume)
        return hu_from_screening_result(assess_bmd(volume, seg, settings))

    return run


def extract_features(
    cohort: Cohort, *, ct_pipeline: Callable[[Path], dict[VertebraLevel, float]] | None = None,
    on_error: str = "raise",
) -> Cohort:
    """A cohort whose rows carry ``hu_by_level`` (rows that already have HU columns are kept as they are).

    ``on_error="skip"``: a row whose source fails (unreadable series, segmentation error) keeps no HU, is logged
    by row number and is left out by every model (its features are missing); ``"raise"`` stops at the first one.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    rows: list[CohortRow] = []
    pipeline = ct_pipeline
    n_json = n_ct = 0
    failed: list[int] = []
    for r in tqdm(cohort.rows, desc="cohort features", unit="row", disable=None):  # no bar when not a terminal
        if r.hu_by_level:
            rows.append(r)
            continue
        try:
            if r.result_json is not None:
                hu = hu_from_result_json(r.result_json)
                n_json += 1
            elif r.ct_series_dir is not None:
                if pipeline is None:
                    pipeline = default_ct_pipeline()
                hu = pipeline(r.ct_series_dir)
                n_ct += 1
            else:
                raise FeatureExtractionError("no feature source")
        except Exception as exc:  # any failure of one row's source is reported with the row
            if on_error == "raise":
                raise FeatureExtractionError(
                    f"row {r.row} ({r.patient_ref}): feature extraction failed: {exc}") from exc
            logger.warning("row %d: feature extraction failed, row left without features: %s", r.row, exc)
            failed.append(r.row)
            hu = {}
        rows.append(replace(r, hu_by_level=hu))
    if n_json or n_ct or failed:
        logger.info("features extracted: %d rows from result.json, %d rows from CT through the node pipeline, "
                    "%d rows failed", n_json, n_ct, len(failed))
    return Cohort(cohort.path, tuple(rows))
