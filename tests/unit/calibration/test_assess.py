"""assess_bmd end to end on one small phantom: exclusions from the segmentation, summary rules, site model, ROI map."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

import service.calibration.assess as assess_module
from service.calibration.assess import BmdAssessment, assess_bmd
from service.calibration.settings import BmdSettings
from service.domain.levels import VertebraLevel as V
from service.domain.results import CalibrationKind, Category, ExclusionReason, SitePrediction
from service.domain.segmentation import SpineSegmentation
from service.offline.phantom.api import Phantom, PhantomSpec, generate
from tests.unit.calibration.phantom_cases import truth_segmentation

os.environ.setdefault("OMP_NUM_THREADS", "1")
SETTINGS = BmdSettings(detect_synchronous_phantom=False, calibration_store_dir=None)


@pytest.fixture(scope="module")
def case() -> tuple[Phantom, SpineSegmentation, BmdAssessment]:
    phantom = generate(PhantomSpec(seed=77, region="abdomen", fov_top_level=V.T11, fov_bottom_level=V.L4),
                       spacing_mm=(2.0, 2.0, 3.0))
    seg = truth_segmentation(phantom)
    return phantom, seg, assess_bmd(phantom.volume, seg, SETTINGS)


def test_every_level_reported_and_roi_map_on_the_grid(case: tuple[Phantom, SpineSegmentation, BmdAssessment]
                                                      ) -> None:
    phantom, seg, assessment = case
    result = assessment.result
    assert [m.level for m in result.vertebrae] == sorted(v.level for v in seg.vertebrae)
    assert assessment.roi_labels.shape == phantom.volume.shape and assessment.roi_labels.dtype == np.int16
    for m in result.vertebrae:
        painted = int(np.count_nonzero(assessment.roi_labels == int(m.level)))
        assert painted == m.voxel_count
        # the ROI lies inside the body
        assert np.all(seg.body_labels[assessment.roi_labels == int(m.level)] == int(m.level))
    assert result.calibration.kind is CalibrationKind.INTERNAL
    doc = result.to_json_dict()
    assert doc["summary"]["threshold_set"] == "ACR2018-ISCD-v1 (<80 / 80-120 / >120 mg/cm3)"
    assert doc["summary"]["levels_used"] == ["L1", "L2"]
    assert result.algorithm_version == ""  # the caller names the version (the pipeline: the node's)


def test_level_uncertain_and_cut_by_fov_are_excluded(case: tuple[Phantom, SpineSegmentation, BmdAssessment]
                                                     ) -> None:
    phantom, seg, _ = case
    vertebrae = tuple(
        dataclasses.replace(v, level_uncertain=True, uncertainty_reason="transitional vertebra")
        if v.level == V.L2 else dataclasses.replace(v, cut_by_fov=True) if v.level == V.L1 else v
        for v in seg.vertebrae)
    edited = dataclasses.replace(seg, vertebrae=vertebrae)
    result = assess_bmd(phantom.volume, edited, SETTINGS).result
    by_level = {m.level: m for m in result.vertebrae}
    assert by_level[V.L2].exclusion_reason is ExclusionReason.LEVEL_UNCERTAIN and by_level[V.L2].level_uncertain
    assert by_level[V.L2].exclusion_detail == "transitional vertebra"
    assert by_level[V.L1].exclusion_reason is ExclusionReason.CUT_BY_FOV
    assert by_level[V.L1].trabecular_hu_mean is not None and by_level[V.L1].bmd_mg_cm3 is None
    # L1 -> T12, L2 -> L3 (nearest, caudal first)
    assert result.summary.levels_used == (V.T12, V.L3)
    assert any("replaced by T12" in n for n in result.summary.notes)


def test_configured_summary_levels(case: tuple[Phantom, SpineSegmentation, BmdAssessment]) -> None:
    phantom, seg, _ = case
    settings = dataclasses.replace(SETTINGS, summary_levels=(V.L1, V.L2, V.L3))
    result = assess_bmd(phantom.volume, seg, settings).result
    bmd = {m.level: m.bmd_mg_cm3 for m in result.vertebrae}
    assert result.summary.levels_used == (V.L1, V.L2, V.L3)
    assert result.summary.bmd_mg_cm3 == pytest.approx(np.mean([bmd[V.L1], bmd[V.L2], bmd[V.L3]]))
    assert "L1-L3" in result.summary.method


class _SiteModel:
    name = "site-x v3"

    def __init__(self, answer: SitePrediction | None) -> None:
        self.answer = answer
        self.seen: dict[V, float] = {}

    def predict(self, hu_by_level: dict[V, float], sex: str, age_years: float | None) -> SitePrediction | None:
        self.seen = hu_by_level
        return self.answer


def test_site_model_gives_summary_when_it_answers(case: tuple[Phantom, SpineSegmentation, BmdAssessment]) -> None:
    phantom, seg, assessment = case
    model = _SiteModel(SitePrediction(model_name="site-x v3", bmd_mg_cm3=70.0, category=None))
    result = assess_bmd(phantom.volume, seg, SETTINGS, site_model=model).result
    assert result.summary.bmd_mg_cm3 == 70.0 and result.summary.category is Category.OSTEOPOROSIS
    assert "site-x v3" in result.summary.method
    assert result.calibration.kind is CalibrationKind.INTERNAL  # per-level values keep their calibration
    assert V.L1 in model.seen
    silent = assess_bmd(phantom.volume, seg, SETTINGS, site_model=_SiteModel(None)).result
    assert silent.summary == assessment.result.summary


def test_no_evaluable_level_is_indeterminate(case: tuple[Phantom, SpineSegmentation, BmdAssessment]) -> None:
    phantom, seg, _ = case
    vertebrae = tuple(dataclasses.replace(v, cut_by_fov=True) for v in seg.vertebrae)
    result = assess_bmd(phantom.volume, dataclasses.replace(seg, vertebrae=vertebrae), SETTINGS,
                        algorithm_version="9.9").result
    assert result.summary.category is Category.INDETERMINATE and result.summary.bmd_mg_cm3 is None
    assert result.algorithm_version == "9.9"
    assert all(not m.evaluable for m in result.vertebrae)


def test_settings_validate() -> None:
    with pytest.raises(ValueError, match="erosion_mm"):
        BmdSettings(erosion_mm=-1.0)
    with pytest.raises(ValueError, match="fracture_height_loss"):
        BmdSettings(fracture_height_loss=1.5)
    with pytest.raises(ValueError, match="summary_levels"):
        BmdSettings(summary_levels=())
    with pytest.raises(ValueError, match="min_roi_volume_mm3"):
        BmdSettings(min_roi_volume_mm3=-1.0)
    with pytest.raises(ValueError, match="threshold_set"):
        BmdSettings(threshold_set="")


def test_series_warnings_reach_the_result_notes(case: tuple[Phantom, SpineSegmentation, BmdAssessment]) -> None:
    """What the series checks decided (e.g. a gap: only the longest part used) is in the result, not only the log."""
    phantom, seg, plain = case
    assert not any(n.startswith("series:") for n in plain.result.summary.notes)
    warned = dataclasses.replace(phantom.volume, extra={**phantom.volume.extra,
                                                        "series_warnings": "gap of 4.00 mm ...; used the longest"})
    notes = assess_bmd(warned, seg, SETTINGS).result.summary.notes
    assert "series: gap of 4.00 mm ...; used the longest" in notes


def test_a_level_whose_height_measurement_fails_is_not_measurable_and_the_study_goes_on(
        case: tuple[Phantom, SpineSegmentation, BmdAssessment], monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in one level's height measurement (BMD set s7 case_07 raised ValueError on a 5 mm scan) must not fail the
    study: that level's fracture outcome is 'height not measurable' with the reason; the others are measured."""
    phantom, seg, _ = case
    measure = assess_module.measure_level

    def failing_at_l1(volume, body, frame):  # type: ignore[no-untyped-def]
        if frame.origin_lps_mm == next(v.centroid_lps_mm for v in seg.vertebrae if v.level == V.L1):
            raise ValueError("anterior_mm must be positive, got -0.96")
        return measure(volume, body, frame)

    monkeypatch.setattr(assess_module, "measure_level", failing_at_l1)
    result = assess_bmd(phantom.volume, seg, SETTINGS).result
    by_level = {m.level: m for m in result.vertebrae}
    assert "height measurement failed (ValueError)" in (by_level[V.L1].fracture_detail or "")
    assert by_level[V.L2].fracture_detail and "failed" not in by_level[V.L2].fracture_detail
    assert result.summary is not None
