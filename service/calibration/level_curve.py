"""Xiong 2025 thoracolumbar calibration curve: ``HU_cal = k * n + intercept`` over T5 (n = 1) ... L2 (n = 10).

Per patient the curve is a least-squares line through the mean trabecular HU of the evaluable levels of T5..L2
(at least ``MIN_CURVE_LEVELS``). It gives a lumbar-equivalent HU for chest CT without L1-L2: the mean of the curve
at L1 (n = 9) and L2 (n = 10). A site-trained slope ``k`` (training issue) replaces the per-patient slope when set;
the intercept is then the patient's own (mean of ``hu - k * n``), since a fixed intercept would ignore the patient.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy import stats

from service.calibration.linear import fit_line
from service.domain.levels import VertebraLevel
from service.domain.results import CurveFit

MIN_CURVE_LEVELS = 3
"""A line through fewer evaluable levels of T5..L2 is not trusted (two points always give R2 = 1)."""
LUMBAR_EQUIVALENT_LEVELS: tuple[VertebraLevel, ...] = (VertebraLevel.L1, VertebraLevel.L2)

# --- when the curve's lumbar-equivalent value may stand as the patient's summary (issue 15, quality gates) -------
GATE_MIN_LEVELS = 4
"""Evaluable levels of T5..L2 the curve needs before its value is reported: with 3 points one outlier (a level
half in a fracture, a bone island) sets the slope."""
GATE_MIN_SPAN_LEVELS = 4
"""Index distance between the first and last level used (e.g. T5..T9 or T8..T12): the curve is extrapolated to
L1-L2 (index 9.5); over a shorter span a slope error grows with the distance of the extrapolation."""
GATE_SLOPE_P = 0.05
"""A per-patient slope is used only when it differs from zero at this two-sided level (t test of the slope). In
terms of R2 that is R2 >= t^2 / (t^2 + N - 2), t the Student quantile: 0.90 with 4 levels, 0.66 with 6, 0.50 with
8. A fixed R2 threshold would be wrong both ways: a patient whose HU is truly flat across levels has R2 near 0 and an
excellent extrapolation, and with 4 levels R2 0.8 still arises from noise one time in ten. When the slope is not
determined, the patient's own data cannot tell the lumbar value from the thoracic ones, and the summary is
indeterminate (the per-level values are still reported)."""
GATE_MAX_LUMBAR_SE_HU = 10.0
"""Standard error of the lumbar-equivalent HU (the regression's prediction error of the mean at index 9.5). 10 HU is
about 8 mg/cm3 on a typical calibration (0.75-0.8 mg/cm3 per HU), a fifth of the 40 mg/cm3 osteopenia band: above
it, a 95 % interval spans most of a category."""
LUMBAR_EQUIVALENT_INDEX = 9.5


def curve_gate(curve: CurveFit, hu_by_level: Mapping[VertebraLevel, float]) -> str | None:
    """Why the curve's lumbar-equivalent value must not stand as the summary, or None when it may."""
    n = np.array([lv.xiong_index for lv in curve.levels_used], dtype=np.float64)
    hu = np.array([float(hu_by_level[lv]) for lv in curve.levels_used], dtype=np.float64)
    names = f"{curve.levels_used[0].name}-{curve.levels_used[-1].name}"
    if len(n) < GATE_MIN_LEVELS:
        return f"{len(n)} evaluable levels of T5-L2 ({names}); the curve needs {GATE_MIN_LEVELS}"
    if n.max() - n.min() < GATE_MIN_SPAN_LEVELS:
        return f"levels {names} span {int(n.max() - n.min())} levels; the curve needs {GATE_MIN_SPAN_LEVELS}"
    residuals = hu - (curve.k * n + curve.intercept)
    per_patient = curve.source != "site_model"
    dof = len(n) - (2 if per_patient else 1)
    residual_sd = float(np.sqrt(np.sum(residuals**2) / dof))
    sxx = float(np.sum((n - n.mean()) ** 2))
    if per_patient:
        t = float(stats.t.ppf(1.0 - GATE_SLOPE_P / 2.0, dof))
        r2_needed = t * t / (t * t + dof)
        if curve.r2 < r2_needed:
            return (f"slope over {names} not determined (R2 {curve.r2:.2f} < {r2_needed:.2f}, the p < "
                    f"{GATE_SLOPE_P:g} bound for {len(n)} levels)")
        se = residual_sd * float(np.sqrt(1.0 / len(n) + (LUMBAR_EQUIVALENT_INDEX - n.mean()) ** 2 / sxx))
    else:
        se = residual_sd / float(np.sqrt(len(n)))
    if se > GATE_MAX_LUMBAR_SE_HU:
        return f"lumbar-equivalent HU uncertain (standard error {se:.1f} HU > {GATE_MAX_LUMBAR_SE_HU:g})"
    return None


def fit_level_curve(hu_by_level: Mapping[VertebraLevel, float], site_k: float | None = None) -> CurveFit | None:
    """The curve through the given levels of T5..L2 (others ignored); None with too few levels."""
    points = sorted((lv, float(hu)) for lv, hu in hu_by_level.items() if lv.xiong_index is not None)
    if len(points) < MIN_CURVE_LEVELS:
        return None
    n = np.array([lv.xiong_index for lv, _ in points], dtype=np.float64)
    hu = np.array([h for _, h in points], dtype=np.float64)
    levels = tuple(lv for lv, _ in points)
    if site_k is not None:
        intercept = float(np.mean(hu - site_k * n))
        pred = site_k * n + intercept
        ss_tot = float(np.sum((hu - hu.mean()) ** 2))
        r2 = 1.0 - float(np.sum((hu - pred) ** 2)) / ss_tot if ss_tot > 0 else 1.0
        return CurveFit(k=float(site_k), intercept=intercept, r2=r2, levels_used=levels, source="site_model")
    fit = fit_line(n, hu)
    return CurveFit(k=fit.slope, intercept=fit.intercept, r2=fit.r2, levels_used=levels, source="per_patient")


def lumbar_equivalent_hu(curve: CurveFit) -> float:
    """Mean of the curve at L1 and L2."""
    return float(np.mean([curve.hu_at(lv) for lv in LUMBAR_EQUIVALENT_LEVELS]))
