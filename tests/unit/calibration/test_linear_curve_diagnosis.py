"""Line fitting, reference line, contrast, curve, summary rule, diagnosis (accuracy on the phantom:
test_calibration_accuracy)."""

from __future__ import annotations

import numpy as np
import pytest

from service.calibration import linear
from service.calibration.internal import (
    equivalent_density_mg_cm3,
    fit_hu_normalisation,
    internal_calibration,
    reference_tissue_hu,
)
from service.calibration.level_curve import fit_level_curve, lumbar_equivalent_hu
from service.calibration.summary import summary_levels
from service.calibration.tissues import TissueSurvey
from service.domain import guidelines as diagnosis
from service.domain.levels import VertebraLevel as V
from service.domain.results import CalibrationKind, Category
from service.offline.phantom import density


def test_fit_line_by_hand() -> None:
    fit = linear.fit_line([0.0, 100.0, 200.0], [5.0, 80.0, 155.0])
    assert fit.slope == pytest.approx(0.75) and fit.intercept == pytest.approx(5.0) and fit.r2 == pytest.approx(1.0)
    # y = 2x + 1 with residuals +1, -2, +1 at x = 0, 1, 2: LSQ slope stays 2, intercept 1, R2 = 1 - 6 / 14
    fit = linear.fit_line([0.0, 1.0, 2.0], [2.0, 1.0, 6.0])
    assert fit.slope == pytest.approx(2.0) and fit.intercept == pytest.approx(1.0)
    assert fit.r2 == pytest.approx(1 - 6 / 14)
    with pytest.raises(ValueError, match="at least 2"):
        linear.fit_line([1.0], [1.0])


def test_default_calibration_flags() -> None:
    cal = linear.default_calibration(120.0)
    assert cal.kind is CalibrationKind.DEFAULT and cal.flags == ("uncalibrated",)
    cal100 = linear.default_calibration(100.0)
    assert cal100.slope == pytest.approx(0.75 / 1.12)
    assert "kvp_corrected_from_100" in cal100.flags
    assert "kvp_unknown_assumed_120" in linear.default_calibration(None).flags


def test_contrast_correction_removes_the_declared_rise() -> None:
    plain = linear.default_calibration(120.0)
    cal = linear.with_contrast_correction(plain, 120.0)
    hu_enhanced = 140.0 + linear.contrast_trabecular_rise_hu(120.0)
    assert cal.bmd_mg_cm3(hu_enhanced) == pytest.approx(plain.bmd_mg_cm3(140.0))
    assert "contrast_enhanced" in cal.flags


@pytest.mark.parametrize("kvp", [80, 100, 120, 140])
@pytest.mark.parametrize("contrast", [False, True])
def test_internal_calibration_recovers_the_reference_line_from_reference_tissues(kvp: int, contrast: bool) -> None:
    ref = reference_tissue_hu(kvp, contrast=contrast)
    survey = TissueSurvey(air_hu=-1000.0, fat_hu=ref["fat"], muscle_hu=ref["muscle"],
                          blood_hu=None if contrast else ref["blood"], enhanced_vessel_hu=None, enhanced_fraction=0.0,
                          n_slices=5)
    cal = internal_calibration(survey, float(kvp), contrast)
    assert cal is not None and cal.kind is CalibrationKind.INTERNAL
    slope, intercept = linear.reference_line(kvp)
    assert cal.slope == pytest.approx(slope, rel=1e-9) and cal.intercept == pytest.approx(intercept, abs=1e-9)


def test_internal_fit_corrects_an_offset_and_rejects_nonsense() -> None:
    # every tissue reads 10 HU high (scanner offset): the fit finds offset -10 (gain pulled to 1 by the prior)
    ref = reference_tissue_hu(120.0)
    fit = fit_hu_normalisation({t: v + 10.0 for t, v in ref.items()}, 120.0)
    assert fit is not None
    assert fit.gain == pytest.approx(1.0, abs=0.01) and fit.offset_hu == pytest.approx(-10.0, abs=1.0)
    # fat measured at +40 HU is far outside its tolerance and is left out
    fit = fit_hu_normalisation({"air": -1000.0, "fat": 40.0, "muscle": 50.0, "blood": 40.0}, 120.0)
    assert fit is not None and "fat" in fit.rejected
    assert fit_hu_normalisation({"air": -1000.0}, 120.0) is None
    # equivalent density: the reference line at the tissue HU (fat at 120 kVp: 0.75 * -100 + 5)
    assert equivalent_density_mg_cm3("fat", 120.0) == pytest.approx(-70.0)


def test_level_curve_by_hand() -> None:
    # HU = -5 * n + 200 at T5 (n=1) .. T10 (n=6): the L1/L2 values are 155 and 150
    hu = {V(V.T5 + i): 200.0 - 5.0 * (i + 1) for i in range(6)}
    curve = fit_level_curve(hu)
    assert curve is not None
    assert curve.k == pytest.approx(-5.0) and curve.intercept == pytest.approx(200.0) and curve.r2 == 1.0
    assert lumbar_equivalent_hu(curve) == pytest.approx(152.5)
    assert curve.levels_used == tuple(V(V.T5 + i) for i in range(6))
    # site slope: intercept is the patient's own mean of hu - k n
    site = fit_level_curve(hu, site_k=-4.0)
    assert site is not None and site.source == "site_model"
    assert site.intercept == pytest.approx(np.mean([hu[lv] + 4.0 * lv.xiong_index for lv in hu]))
    assert fit_level_curve({V.T5: 1.0, V.T6: 2.0}) is None  # fewer than 3 levels
    assert fit_level_curve({V.C7: 1.0, V.L4: 2.0, V.L5: 3.0}) is None  # outside T5..L2


def test_summary_levels_substitution_rule() -> None:
    assert summary_levels((V.L1, V.L2), {V.T12, V.L1, V.L2, V.L3}) == ((V.L1, V.L2), ())
    used, notes = summary_levels((V.L1, V.L2), {V.T12, V.L2, V.L3})  # L1 fractured -> T12 (nearest)
    assert used == (V.T12, V.L2) and "replaced by T12" in notes[0]
    used, _ = summary_levels((V.L1, V.L2), {V.T12, V.L1, V.L3})  # L2 out -> L3 (caudal first)
    assert used == (V.L1, V.L3)
    used, notes = summary_levels((V.L1, V.L2), {V.T5, V.T6})
    assert used == () and len(notes) == 2


@pytest.mark.parametrize(("bmd", "category"), [
    (79.9, Category.OSTEOPOROSIS), (80.0, Category.OSTEOPENIA), (120.0, Category.OSTEOPENIA),
    (120.1, Category.NORMAL), (None, Category.INDETERMINATE), (float("nan"), Category.INDETERMINATE)])
def test_categories(bmd: float | None, category: Category) -> None:
    assert diagnosis.categorize(bmd) is category


def test_thresholds_agree_with_phantom_and_validate() -> None:
    # the phantom's truth categories are the guideline's (clinical definition), not a copy of its numbers
    for bmd in (79.9, 80.0, 120.0, 120.1):
        assert density.category_of(bmd) == diagnosis.categorize(bmd).value
    assert diagnosis.Thresholds().identifier == "ACR2018-ISCD-v1 (<80 / 80-120 / >120 mg/cm3)"
    assert diagnosis.Thresholds(name="ACR2018-ISCD-v1").identifier.startswith("ACR2018-ISCD-v1 (")
    with pytest.raises(ValueError, match="must be below"):
        diagnosis.Thresholds(osteoporosis_below_mg_cm3=130.0)
