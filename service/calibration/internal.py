"""Internal (phantomless) calibration from the patient's air, subcutaneous fat, paraspinal muscle and blood.

Reference HU of the tissues (unenhanced, by tube voltage):
    air   -1000 at every kVp (definition of the HU scale)
    fat   -120 / -108 / -100 / -95 at 80 / 100 / 120 / 140 kVp (adipose tissue -90..-120 HU, more negative at lower kVp;
          e.g. Lamba et al., AJR 2014, soft-tissue HU on unenhanced abdominal CT)
    muscle +50, blood +42 (skeletal muscle 40-60 HU, unenhanced blood 35-50 HU by haematocrit; Lamba 2014; 42 is
          also the phantom's blood); with IV contrast
          muscle +58 (portal-venous enhancement ~ +8 HU at 120 kVp, scaled by the iodine kVp factor), blood unused
Each tissue's "equivalent density" is the value of the reference line at the scan's kVp (linear.reference_line)
at its reference HU (e.g. fat at 120 kVp: 0.75 * -100 + 5 = -70 mg/cm3 HA-equivalent, muscle 42.5).

Fit. The measured tissue HU ``m_t`` are mapped to the reference HU ``r_t`` by ``r = gain * m + offset``, a weighted
least-squares fit with per-tissue uncertainty ``TISSUE_SD_HU`` (between-patient and measurement spread: air is the
least reliable - clipping at -1024, blankets, sharp-kernel noise - so its weight is low) and a Gaussian prior on the
gain (1 +- GAIN_PRIOR_SD), so two soft tissues a few HU off cannot tilt the line. The BMD line is the reference line
at the scan's kVp applied to the normalised HU: ``slope = s_kVp * gain``, ``intercept = s_kVp * offset + c_kVp``,
which is the same as fitting measured tissue HU to their equivalent densities.

What it can and cannot do: it corrects the scanner's HU scale (offset, gain) as seen in soft tissue and air; it
cannot measure the energy dependence of mineral, which comes from the documented kVp factor of the reference line.
Its accuracy on the physics phantom (tissues and bone from their composition, not from these constants) is measured
by service/offline/evaluation/calibration_accuracy.py. Contrast-enhanced scans leave blood out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from service.calibration.linear import (
    CONTRAST_TRABECULAR_HU_RISE_120KVP,
    REFERENCE_KVP,
    contrast_trabecular_rise_hu,
    kvp_flags,
    reference_line,
)
from service.calibration.tissues import TissueSurvey
from service.domain.results import CalibrationKind, LinearCalibration

logger = logging.getLogger(__name__)

AIR_HU = -1000.0
FAT_HU_BY_KVP: dict[float, float] = {80.0: -120.0, 100.0: -108.0, 120.0: -100.0, 140.0: -95.0}
"""80 kVp: subcutaneous fat on the low-kVp images of dual-energy CT reads about -110..-125 HU (fat grows more
negative as the beam softens); -120 continues the 100-140 kVp trend. No single source: see docs/phantom/README.md."""
MUSCLE_HU = 50.0
MUSCLE_CONTRAST_RISE_HU_120KVP = 8.0
"""Portal-venous enhancement of skeletal muscle (~ +5-15 HU), scaled by the iodine kVp factor."""
BLOOD_HU = 42.0
TISSUE_SD_HU: dict[str, float] = {"air": 60.0, "fat": 25.0, "muscle": 8.0, "blood": 40.0}
"""Weights of the fit (1/SD^2). Muscle, sampled in a large homogeneous region, is the most reliable; fat reads
high in thin layers (partial volume with skin and muscle: -93 instead of -100 in slim patients); the blood sample
cannot be told from other soft tissue without contrast (the sampler often lands on spleen, kidney or bowel wall,
45-56 HU), so it weighs little; air suffers clipping, blankets and streaks."""
MUSCLE_SD_CONTRAST_HU = 15.0
"""With IV contrast muscle enhancement depends on phase and timing (~0-15 HU): muscle weighs less."""
TISSUE_TOLERANCE_HU: dict[str, float] = {"air": 120.0, "fat": 30.0, "muscle": 40.0, "blood": 20.0}
"""A measured value further than this from its reference is taken as mis-sampled and left out."""
GAIN_PRIOR_SD = 0.05
GAIN_LIMITS = (0.90, 1.10)
OFFSET_LIMIT_HU = 40.0
SOURCE = ("internal calibration: air -1000, fat -120/-108/-100/-95 (80/100/120/140 kVp), muscle +50, blood +42 HU "
          "(Lamba 2014); reference line at scan kVp")


def reference_tissue_hu(kvp: float | None, contrast: bool = False) -> dict[str, float]:
    k = REFERENCE_KVP if kvp is None else float(kvp)
    keys = sorted(FAT_HU_BY_KVP)
    fat = float(np.interp(k, keys, [FAT_HU_BY_KVP[x] for x in keys]))
    muscle = MUSCLE_HU
    if contrast:
        muscle += MUSCLE_CONTRAST_RISE_HU_120KVP * contrast_trabecular_rise_hu(k) / CONTRAST_TRABECULAR_HU_RISE_120KVP
    return {"air": AIR_HU, "fat": fat, "muscle": muscle, "blood": BLOOD_HU}


def equivalent_density_mg_cm3(tissue: str, kvp: float | None) -> float:
    """The tissue's density on the BMD scale: the reference line at its reference HU."""
    slope, intercept = reference_line(kvp)
    return slope * reference_tissue_hu(kvp)[tissue] + intercept


@dataclass(frozen=True)
class InternalFit:
    gain: float
    offset_hu: float
    tissues_used: tuple[str, ...]
    measured_hu: dict[str, float]
    rejected: tuple[str, ...]


def fit_hu_normalisation(measured: dict[str, float | None], kvp: float | None, use_blood: bool = True
                         ) -> InternalFit | None:
    """Gain and offset mapping measured tissue HU to reference HU (see module doc); None if not enough tissues.

    ``use_blood=False`` means a contrast-enhanced scan: blood is left out and muscle's reference includes its
    enhancement.
    """
    ref = reference_tissue_hu(kvp, contrast=not use_blood)
    m, r, w, used, rejected = [], [], [], [], []
    for tissue in ("air", "fat", "muscle", "blood"):
        value = measured.get(tissue)
        if value is None or (tissue == "blood" and not use_blood):
            continue
        if abs(value - ref[tissue]) > TISSUE_TOLERANCE_HU[tissue]:
            rejected.append(tissue)
            continue
        m.append(value)
        r.append(ref[tissue])
        sd = MUSCLE_SD_CONTRAST_HU if (tissue == "muscle" and not use_blood) else TISSUE_SD_HU[tissue]
        w.append(1.0 / sd**2)
        used.append(tissue)
    if not any(t in used for t in ("fat", "muscle", "blood")):
        return None
    ma, ra, wa = np.asarray(m), np.asarray(r), np.asarray(w)
    lam = 1.0 / GAIN_PRIOR_SD**2
    a = np.array([[np.sum(wa * ma * ma) + lam, np.sum(wa * ma)], [np.sum(wa * ma), np.sum(wa)]])
    b = np.array([np.sum(wa * ma * ra) + lam, np.sum(wa * ra)])
    gain, offset = np.linalg.solve(a, b)
    return InternalFit(gain=float(gain), offset_hu=float(offset), tissues_used=tuple(used),
                       measured_hu={t: float(v) for t, v in measured.items() if v is not None},
                       rejected=tuple(rejected))


def internal_calibration(survey: TissueSurvey, kvp: float | None, contrast: bool, scanner: str = ""
                         ) -> LinearCalibration | None:
    """The internal calibration, or None when the tissues do not allow one (caller falls back to the default)."""
    fit = fit_hu_normalisation(survey.as_dict(), kvp, use_blood=not contrast)
    if fit is None:
        logger.info("internal calibration impossible: no usable soft-tissue reference")
        return None
    if not (GAIN_LIMITS[0] <= fit.gain <= GAIN_LIMITS[1]) or abs(fit.offset_hu) > OFFSET_LIMIT_HU:
        logger.warning("internal calibration rejected: gain %.3f, offset %.1f HU outside limits", fit.gain,
                       fit.offset_hu)
        return None
    slope, intercept = reference_line(kvp)
    measured = ", ".join(f"{t} {fit.measured_hu[t]:.0f}" for t in fit.tissues_used)
    flags = list(kvp_flags(kvp))
    if fit.rejected:
        flags.append("internal_rejected_" + "_".join(fit.rejected))
    if contrast and survey.blood_hu is not None:
        flags.append("internal_blood_excluded_contrast")
    return LinearCalibration(
        kind=CalibrationKind.INTERNAL,
        slope=slope * fit.gain,
        intercept=slope * fit.offset_hu + intercept,
        scanner=scanner,
        source=f"{SOURCE}; measured HU: {measured}; gain {fit.gain:.4f}, offset {fit.offset_hu:+.1f} HU",
        flags=tuple(flags),
    )
