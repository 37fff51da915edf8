"""Linear HU -> BMD maps: least-squares fit, the reference line, kVp and contrast handling, the default.

The reference relation (120 kVp, unenhanced trabecular bone, mg/cm3 calcium-hydroxyapatite equivalent, QCT scale):

    bmd_mg_cm3 = 0.75 * hu + 5

Phantomless and internally calibrated relations published for 120 kVp put BMD at about 0.7-0.8 * HU with an
intercept between about -5 and +20 mg/cm3 (asynchronous / internal calibration literature summarised by Pan 2020 and
Wang 2024, ``BMD = a * HU + b``); 0.75 / +5 maps the 80 and 120 mg/cm3 thresholds to 100 and 153 HU, close to the
L1 HU cut-offs in wide use (~100-110 HU osteoporosis, ~150-160 HU normal; Pickhardt 2013). The synthetic phantom does
not share it: its HU come from X-ray physics (service/offline/phantom/physics.py), and
service/offline/evaluation/calibration_accuracy.py measures this line's error per kVp against it.

kVp: the mineral part of bone HU scales with tube voltage relative to 120 kVp by MINERAL_KVP_FACTOR (100 kVp x1.12,
140 kVp x0.93; the order of published spectral shifts of trabecular HU, Garner 2017: ~ +10-15 % at 100 kVp); the
line at another kVp has slope 0.75 / factor and the same intercept. Other voltages interpolate linearly in kVp;
outside 80-140 kVp the nearest end is used and the result flagged.

IV contrast: portal-venous contrast raises vertebral trabecular HU by ~ 12 HU at 120 kVp (Pickhardt 2011: +11 HU at
L1; Pompe 2015: ~ +10-20 HU), more at lower kVp (iodine: x1.25 at 100 kVp, x0.85 at 140 kVp). The correction
subtracts that rise before applying the line: ``bmd = slope * (hu - rise) + intercept``. It is an average: the
result stays flagged 'contrast_enhanced'.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.domain.results import CalibrationKind, LinearCalibration

REFERENCE_KVP = 120.0
REFERENCE_SLOPE_PER_HU = 0.75  # see module doc (literature range 0.7-0.8 at 120 kVp; Pan 2020, Wang 2024)
REFERENCE_INTERCEPT_MG_CM3 = 5.0  # see module doc (literature range -5..+20 mg/cm3)
REFERENCE_SOURCE = "reference line bmd = 0.75*HU + 5 at 120 kVp (HA-equivalent QCT scale; Pan 2020/Wang 2024 range)"

# Mineral attenuation relative to 120 kVp (Garner 2017-like spectral shift of trabecular HU).
MINERAL_KVP_FACTOR: dict[float, float] = {80.0: 1.26, 100.0: 1.12, 120.0: 1.0, 140.0: 0.93}
# Iodine enhancement relative to 120 kVp.
IODINE_KVP_FACTOR: dict[float, float] = {80.0: 1.55, 100.0: 1.25, 120.0: 1.0, 140.0: 0.85}
CONTRAST_TRABECULAR_HU_RISE_120KVP = 12.0  # Pickhardt 2011 (+11 HU at L1), Pompe 2015 (+10-20 HU)
KVP_TOLERANCE = 2.0
"""kVp within this of 120 counts as 120 (no correction flag)."""

FLAG_UNCALIBRATED = "uncalibrated"
FLAG_CONTRAST = "contrast_enhanced"
FLAG_KVP_UNKNOWN = "kvp_unknown_assumed_120"


def _interp(table: dict[float, float], kvp: float) -> tuple[float, bool]:
    """Linear interpolation in kVp; (value, clamped)."""
    keys = sorted(table)
    clamped = kvp < keys[0] or kvp > keys[-1]
    return float(np.interp(kvp, keys, [table[k] for k in keys])), clamped


def mineral_kvp_factor(kvp: float) -> float:
    return _interp(MINERAL_KVP_FACTOR, kvp)[0]


def contrast_trabecular_rise_hu(kvp: float) -> float:
    return CONTRAST_TRABECULAR_HU_RISE_120KVP * _interp(IODINE_KVP_FACTOR, kvp)[0]


def kvp_flags(kvp: float | None) -> tuple[str, ...]:
    if kvp is None:
        return (FLAG_KVP_UNKNOWN,)
    if abs(kvp - REFERENCE_KVP) <= KVP_TOLERANCE:
        return ()
    flags = [f"kvp_corrected_from_{kvp:g}"]
    if _interp(MINERAL_KVP_FACTOR, kvp)[1]:
        flags.append("kvp_outside_80_140_clamped")
    return tuple(flags)


def reference_line(kvp: float | None) -> tuple[float, float]:
    """(slope, intercept) of the reference line at ``kvp`` (120 kVp when unknown)."""
    k = REFERENCE_KVP if kvp is None else float(kvp)
    if abs(k - REFERENCE_KVP) <= KVP_TOLERANCE:
        k = REFERENCE_KVP
    return REFERENCE_SLOPE_PER_HU / mineral_kvp_factor(k), REFERENCE_INTERCEPT_MG_CM3


@dataclass(frozen=True)
class LineFit:
    slope: float
    intercept: float
    r2: float
    residual_sd: float
    n: int


def fit_line(x: Sequence[float], y: Sequence[float], weights: Sequence[float] | None = None) -> LineFit:
    """Weighted least squares ``y = slope * x + intercept`` (Wang 2024 eq. 2-3 when unweighted)."""
    xa = np.asarray(x, dtype=np.float64)
    ya = np.asarray(y, dtype=np.float64)
    if xa.shape != ya.shape or xa.ndim != 1:
        raise ValueError(f"x and y must be 1-D of equal length, got {xa.shape} and {ya.shape}")
    if xa.size < 2:
        raise ValueError(f"need at least 2 points to fit a line, got {xa.size}")
    wa = np.ones_like(xa) if weights is None else np.asarray(weights, dtype=np.float64)
    if wa.shape != xa.shape or np.any(wa < 0) or wa.sum() <= 0:
        raise ValueError("weights must be non-negative, one per point, not all zero")
    xm = float(np.average(xa, weights=wa))
    ym = float(np.average(ya, weights=wa))
    sxx = float(np.sum(wa * (xa - xm) ** 2))
    if sxx <= 0:
        raise ValueError("x values must not all be equal")
    slope = float(np.sum(wa * (xa - xm) * (ya - ym)) / sxx)
    intercept = ym - slope * xm
    resid = ya - (slope * xa + intercept)
    ss_res = float(np.sum(wa * resid**2))
    ss_tot = float(np.sum(wa * (ya - ym) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    dof = max(1, xa.size - 2)
    residual_sd = float(np.sqrt(ss_res / wa.sum() * xa.size / dof))
    return LineFit(slope=slope, intercept=intercept, r2=r2, residual_sd=residual_sd, n=int(xa.size))


def default_calibration(kvp: float | None, scanner: str = "") -> LinearCalibration:
    """The documented reference line at the scan's kVp, flagged 'uncalibrated'."""
    slope, intercept = reference_line(kvp)
    return LinearCalibration(
        kind=CalibrationKind.DEFAULT,
        slope=slope,
        intercept=intercept,
        scanner=scanner,
        source=REFERENCE_SOURCE + (f"; mineral kVp factor {mineral_kvp_factor(kvp):.3f}" if kvp else ""),
        flags=(FLAG_UNCALIBRATED, *kvp_flags(kvp)),
    )


def with_contrast_correction(calibration: LinearCalibration, kvp: float | None) -> LinearCalibration:
    """The same line applied to ``hu - rise`` (see module doc), flagged."""
    rise = contrast_trabecular_rise_hu(REFERENCE_KVP if kvp is None else float(kvp))
    flags = tuple(f for f in calibration.flags if f != FLAG_CONTRAST)
    return dataclasses.replace(
        calibration,
        intercept=calibration.intercept - calibration.slope * rise,
        flags=(*flags, FLAG_CONTRAST, f"contrast_corrected_minus_{rise:.1f}_hu"),
        source=calibration.source + f"; IV contrast: trabecular HU reduced by {rise:.1f} HU (Pickhardt 2011)",
    )


def with_flags(calibration: LinearCalibration, *flags: str) -> LinearCalibration:
    new = tuple(f for f in flags if f not in calibration.flags)
    return dataclasses.replace(calibration, flags=(*calibration.flags, *new))
