"""Quality gates of the thoracolumbar curve (issue 15 point 5): when its lumbar-equivalent value may stand as the
patient's summary. Truth: hand-made HU series and the t test of a regression slope computed here with numpy/scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from service.calibration.level_curve import curve_gate, fit_level_curve
from service.domain.levels import VertebraLevel as V

THORACIC = (V.T5, V.T6, V.T7, V.T8, V.T9, V.T10, V.T11, V.T12)


def _series(levels: tuple[V, ...], k: float, noise: tuple[float, ...] = ()) -> dict[V, float]:
    noise = noise or (0.0,) * len(levels)
    return {lv: 180.0 + k * (lv.xiong_index or 0) + e for lv, e in zip(levels, noise, strict=True)}


def test_a_clear_slope_over_a_wide_span_is_used() -> None:
    hu = _series(THORACIC, k=-4.0, noise=(1.0, -2.0, 1.5, -1.0, 0.5, 2.0, -1.5, 0.0))
    curve = fit_level_curve(hu)
    assert curve is not None and curve_gate(curve, hu) is None


def test_flat_noisy_thoracic_hu_is_refused_whatever_its_value() -> None:
    """The real chest CT's pattern: per-level HU scattered around a flat line (R2 ~0.06)."""
    hu = dict(zip(THORACIC, (112.1, 102.1, 115.0, 106.8, 114.4, 120.3, 101.5, 100.0), strict=True))
    curve = fit_level_curve(hu)
    assert curve is not None
    slope = stats.linregress([lv.xiong_index for lv in THORACIC], list(hu.values()))
    assert slope.pvalue > 0.05  # independent: scipy's own test of the slope
    reason = curve_gate(curve, hu)
    assert reason is not None and "not determined" in reason


@pytest.mark.parametrize("n_levels", [4, 5, 6, 8])
def test_the_r2_bound_is_the_slope_t_test(n_levels: int) -> None:
    """Just above / below the p = 0.05 bound of the slope: the gate agrees with scipy's linregress p-value."""
    levels = THORACIC[:n_levels] if n_levels > 4 else (V.T5, V.T7, V.T9, V.T11)
    x = np.array([lv.xiong_index for lv in levels], dtype=float)
    rng = np.random.default_rng(n_levels)
    for _ in range(40):
        y = 150.0 - 2.0 * x + rng.normal(0.0, 3.0, size=len(x))
        hu = dict(zip(levels, y.tolist(), strict=True))
        curve = fit_level_curve(hu)
        assert curve is not None
        significant = stats.linregress(x, y).pvalue < 0.05
        reason = curve_gate(curve, hu)
        slope_refused = reason is not None and "not determined" in reason
        assert slope_refused == (not significant), (reason, stats.linregress(x, y).pvalue)


def test_too_few_levels_or_too_short_a_span_is_refused() -> None:
    three = _series((V.T8, V.T10, V.T12), k=-5.0)
    curve = fit_level_curve(three)
    assert curve is not None
    assert "needs 4" in (curve_gate(curve, three) or "")
    short = _series((V.T8, V.T9, V.T10, V.T11), k=-5.0, noise=(0.5, -0.5, 0.3, -0.3))
    curve = fit_level_curve(short)
    assert curve is not None
    assert "span 3 levels" in (curve_gate(curve, short) or "")


def test_a_significant_but_scattered_slope_extrapolates_too_far() -> None:
    hu = _series(THORACIC, k=-12.0, noise=(14.0, -16.0, 12.0, -15.0, 15.0, -12.0, 16.0, -14.0))
    curve = fit_level_curve(hu)
    assert curve is not None and stats.linregress([lv.xiong_index for lv in THORACIC],
                                                  list(hu.values())).pvalue < 0.05
    assert "standard error" in (curve_gate(curve, hu) or "")


def test_site_slope_is_gated_on_the_scatter_only() -> None:
    flat = dict(zip(THORACIC, (110.0, 104.0, 112.0, 106.0, 111.0, 108.0, 103.0, 107.0), strict=True))
    curve = fit_level_curve(flat, site_k=-2.5)
    assert curve is not None and curve.source == "site_model"
    assert curve_gate(curve, flat) is None  # a fixed slope needs no slope test
    scattered = dict(zip(THORACIC, (150.0, 90.0, 160.0, 80.0, 155.0, 85.0, 150.0, 70.0), strict=True))
    curve = fit_level_curve(scattered, site_k=-2.5)
    assert curve is not None and "standard error" in (curve_gate(curve, scattered) or "")
