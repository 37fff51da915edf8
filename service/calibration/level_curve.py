"""Xiong 2025 thoracolumbar calibration curve: ``HU_cal = k * n + intercept`` over T5 (n = 1) ... L2 (n = 10).

Per patient the curve is a least-squares line through the mean trabecular HU of the evaluable levels of T5..L2
(at least ``MIN_CURVE_LEVELS``). It gives a lumbar-equivalent HU for chest CT without L1-L2: the mean of the curve
at L1 (n = 9) and L2 (n = 10). A site-trained slope ``k`` (training issue) replaces the per-patient slope when set;
the intercept is then the patient's own (mean of ``hu - k * n``), since a fixed intercept would ignore the patient.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from service.calibration.linear import fit_line
from service.domain.levels import VertebraLevel
from service.domain.results import CurveFit

MIN_CURVE_LEVELS = 3
"""A line through fewer evaluable levels of T5..L2 is not trusted (two points always give R2 = 1)."""
LUMBAR_EQUIVALENT_LEVELS: tuple[VertebraLevel, ...] = (VertebraLevel.L1, VertebraLevel.L2)


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
