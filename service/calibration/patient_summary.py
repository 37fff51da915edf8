"""The patient summary of an assessment (``summarise``): the configured levels' mean (default L1-L2, with adjacent
substitution), else the thoracolumbar curve's lumbar-equivalent value, else a single level, else the category of the
levels around L1-L2 when only their names are uncertain, else indeterminate (rules: service/calibration/summary.py).
"""

from __future__ import annotations

import numpy as np

from service.calibration import summary
from service.calibration.contrast import ContrastFinding
from service.calibration.level_curve import curve_gate, lumbar_equivalent_hu
from service.calibration.settings import BmdSettings
from service.domain import guidelines as diagnosis
from service.domain.levels import VertebraLevel
from service.domain.results import Category, CurveFit, LinearCalibration, PatientSummary, RoiMethod


def _method_text(settings: BmdSettings, calibration: LinearCalibration) -> str:
    roi = ("3 mm erosion ROI" if settings.roi_method is RoiMethod.EROSION_3MM and settings.erosion_mm == 3.0
           else f"{settings.erosion_mm:g} mm erosion ROI" if settings.roi_method is RoiMethod.EROSION_3MM
           else "Pan 2020 elliptical cylinder VOI")
    return f"{roi}, {calibration.kind.value.replace('_', ' ')} calibration"


def summarise(bmd_by_level: dict[VertebraLevel, float], hu_by_level: dict[VertebraLevel, float],
               curve: CurveFit | None, calibration: LinearCalibration, settings: BmdSettings,
               contrast: ContrastFinding, uncertain_bmd: dict[VertebraLevel, float]) -> PatientSummary:
    thresholds = settings.thresholds
    levels, notes = summary.summary_levels(settings.summary_levels, bmd_by_level.keys())
    extra_notes: list[str] = []
    if "uncalibrated" in calibration.flags:
        extra_notes.append("uncalibrated: documented 120 kVp reference line, no phantom or internal calibration")
    if contrast.enhanced:
        extra_notes.append(f"IV contrast ({contrast.evidence}); BMD "
                           + ("corrected by the documented average rise" if settings.correct_contrast
                              else "not corrected, overestimated"))
    target_names = "-".join([settings.summary_levels[0].name, settings.summary_levels[-1].name]) \
        if len(settings.summary_levels) > 1 else settings.summary_levels[0].name
    method = _method_text(settings, calibration)
    if len(levels) >= summary.MIN_SUMMARY_LEVELS:
        value = float(np.mean([bmd_by_level[lv] for lv in levels]))
        return PatientSummary(
            bmd_mg_cm3=value, levels_used=levels, category=diagnosis.categorize(value, thresholds),
            method=f"{'+'.join(lv.name for lv in levels)} mean (standard {target_names}), {method}",
            threshold_set=thresholds.identifier, thresholds=thresholds, notes=(*notes, *extra_notes),
        )
    curve_refused = None if curve is None else curve_gate(curve, hu_by_level)
    if curve_refused is not None:
        extra_notes.append(f"thoracolumbar curve not used: {curve_refused}")
    if curve is not None and curve_refused is None:
        hu_eq = lumbar_equivalent_hu(curve)
        value = calibration.bmd_mg_cm3(hu_eq)
        first, last = curve.levels_used[0].name, curve.levels_used[-1].name
        return PatientSummary(
            bmd_mg_cm3=value, levels_used=curve.levels_used, category=diagnosis.categorize(value, thresholds),
            method=(f"lumbar-equivalent L1-L2 via thoracolumbar curve (Xiong 2025) over {first}-{last} "
                    f"(k {curve.k:.2f} HU/level, R2 {curve.r2:.2f}, {curve.source}), {method}"),
            threshold_set=thresholds.identifier, thresholds=thresholds, lumbar_equivalent=True,
            notes=(*notes, f"lumbar-equivalent HU {hu_eq:.1f}", *extra_notes),
        )
    if len(levels) == 1:
        value = bmd_by_level[levels[0]]
        return PatientSummary(
            bmd_mg_cm3=value, levels_used=levels, category=diagnosis.categorize(value, thresholds),
            method=f"{levels[0].name} only (single evaluable level), {method}",
            threshold_set=thresholds.identifier, thresholds=thresholds,
            notes=(*notes, "single level: less reliable", *extra_notes),
        )
    by_category = summary.uncertain_names_category(uncertain_bmd, settings.summary_levels,
                                                   lambda value: diagnosis.categorize(value, thresholds))
    if by_category is not None:
        category, near = by_category
        values = [uncertain_bmd[level] for level in near]
        return PatientSummary(
            bmd_mg_cm3=None, levels_used=(), category=category,
            method=(f"category only: every measurable level named {near[0].name}?-{near[-1].name}? is "
                    f"{category.value} ({min(values):.0f}-{max(values):.0f} mg/cm3); level names uncertain, so no "
                    f"{target_names} value, {method}"),
            threshold_set=thresholds.identifier, thresholds=thresholds,
            notes=(*notes, "level names uncertain: the category holds for every level around "
                   f"{target_names}; no value is given", *extra_notes),
        )
    return PatientSummary(
        bmd_mg_cm3=None, levels_used=(), category=Category.INDETERMINATE,
        method=(f"no evaluable level for {target_names} and no usable thoracolumbar curve"
                + (f" ({curve_refused})" if curve_refused else "") + f", {method}"),
        threshold_set=thresholds.identifier, thresholds=thresholds, notes=(*notes, *extra_notes),
    )
