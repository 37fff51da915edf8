"""Patient and bone-density model of the synthetic CT phantom (pure numpy).

Everything the phantom says about bone density is derived here, so the renderer, the calibration rods and
``truth.json`` share one declared relation.

HU <-> BMD (the declared relation)
    At 120 kVp, without contrast, trabecular bone of ``bmd`` mg/cm3 (calcium-hydroxyapatite equivalent, the
    QCT scale of the ACR 2018 / Chinese 2018 QCT guidelines) has

        bmd = BMD_SLOPE_PER_HU * hu + BMD_INTERCEPT_MG_CM3      (0.75 * hu + 5)

    i.e. ``hu = HU_SLOPE_PER_MG_CM3 * bmd + HU_INTERCEPT``  (1.333 * bmd - 6.7).
    Choice: phantomless / internally calibrated relations published for 120 kVp put BMD at about
    0.7-0.8 * HU with an intercept between about -5 and +20 mg/cm3 (e.g. the asynchronous / internal calibration
    literature summarised in Pan 2020 and Wang 2024: ``BMD = a * HU + b``); 0.75 / +5 sits in the middle and maps
    the 80 and 120 mg/cm3 thresholds to 100 and 153 HU, close to the widely used L1 HU cut-offs (~100-110 HU for
    osteoporosis, ~150-160 HU for normal, Pickhardt 2013). The marrow (0 mg/cm3) is then -6.7 HU.

kVp dependence
    Mineral attenuation rises at lower tube voltage. The mineral part of bone HU (trabecular and cortical, and
    the calibration rods) is multiplied by ``MINERAL_KVP_FACTOR[kvp]`` (100 kVp: x1.12, 140 kVp: x0.93 relative to
    120 kVp; the order of the published spectral shifts of trabecular HU, e.g. Garner 2017 ~ +10-15 % at 100 kVp).
    Consequently the HU->BMD line at another kVp has slope ``BMD_SLOPE_PER_HU / factor`` and the same intercept
    (``hu_to_bmd_line(kvp)``).

IV contrast
    Portal-venous contrast raises vertebral trabecular HU by about 10-15 HU at 120 kVp (Pickhardt 2011:
    +11 HU at L1; Pompe 2015: ~ +10-20 HU). ``CONTRAST_TRABECULAR_HU_RISE_120KVP = 12`` is added to the
    trabecular HU, scaled by the iodine kVp factor ``IODINE_KVP_FACTOR`` (iodine enhancement ~ +25 % at 100 kVp,
    ~ -15 % at 140 kVp). The HU->BMD line is that of the unenhanced bone: a contrast phantom overestimates BMD,
    as real contrast CT does.

Cohort and thoracolumbar gradient
    Category mix of the Xiong 2025 cohort (Table 1, training set): 21.8 % normal, 41.8 % osteopenia, 36.4 %
    osteoporosis; 62.4 % women; median age 66 (IQR 57-73). Categories by the L1-L2 mean BMD with the QCT
    guideline thresholds of ``service.domain.guidelines`` (>120 normal, 80-120 osteopenia, <80 osteoporosis).
    Trabecular BMD is higher in thoracic than in lumbar vertebrae and decreases roughly linearly from T5 to L2
    (the Xiong 2025 thoracolumbar calibration curve ``HU = k * n + intercept``, n = 1 (T5) .. 10 (L2), k < 0).
    The relative drop per level is drawn per patient (mean 1.8 % of the L1-L2 BMD per level, i.e. ~ +15 %
    from L1-L2 to T5, compatible with Rühling 2022's cervicothoracic vs lumbar vBMD).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from service.domain.guidelines import NORMAL_ABOVE_MG_CM3, OSTEOPOROSIS_BELOW_MG_CM3, Category, categorize
from service.domain.levels import VertebraLevel

logger = logging.getLogger(__name__)

# --- the declared HU <-> BMD relation at 120 kVp (see module docstring for the source of the choice) ---
BMD_SLOPE_PER_HU = 0.75
BMD_INTERCEPT_MG_CM3 = 5.0
HU_SLOPE_PER_MG_CM3 = 1.0 / BMD_SLOPE_PER_HU
HU_INTERCEPT = -BMD_INTERCEPT_MG_CM3 / BMD_SLOPE_PER_HU
"""HU of marrow without mineral (0 mg/cm3) at 120 kVp: -6.67 HU."""

REFERENCE_KVP = 120
SUPPORTED_KVP: tuple[int, ...] = (100, 120, 140)
MINERAL_KVP_FACTOR: dict[int, float] = {100: 1.12, 120: 1.0, 140: 0.93}
"""Multiplier of the mineral part of bone HU relative to 120 kVp (Garner 2017-like spectral shift)."""
IODINE_KVP_FACTOR: dict[int, float] = {100: 1.25, 120: 1.0, 140: 0.85}
"""Multiplier of iodine enhancement relative to 120 kVp."""
FAT_HU_BY_KVP: dict[int, float] = {100: -108.0, 120: -100.0, 140: -95.0}
"""Adipose tissue HU: more negative at lower kVp."""

CONTRAST_TRABECULAR_HU_RISE_120KVP = 12.0
"""Portal-venous rise of vertebral trabecular HU (Pickhardt 2011 ~ +11 HU; Pompe 2015 ~ +10-20 HU)."""

# Cortical bone: compact bone is ~1.8-1.9 g/cm3; vertebral shells measure 400-1000 HU on clinical CT depending
# on thickness (partial volume). The shell is drawn from this range (120 kVp, before partial-volume blur).
CORTICAL_HU_RANGE_120KVP: tuple[float, float] = (650.0, 1100.0)

# --- QCT categories: the guideline thresholds (ACR 2018 / Chinese QCT guideline 2018, used by Xiong 2025) are the
# clinical definition in service.domain.guidelines (NORMAL_ABOVE_MG_CM3 / OSTEOPOROSIS_BELOW_MG_CM3 come from there);
# only the physics above is the phantom's own.
CATEGORIES: tuple[str, ...] = (Category.NORMAL.value, Category.OSTEOPENIA.value, Category.OSTEOPOROSIS.value)
CATEGORY_MIX: tuple[float, float, float] = (0.218, 0.418, 0.364)
"""Xiong 2025 Table 1 (training set): normal, osteopenia, osteoporosis."""
FEMALE_FRACTION = 0.624
"""Xiong 2025 Table 1 (training set): 266 of 426 women."""

THORACOLUMBAR_DROP_PER_LEVEL = 0.018
"""Mean relative BMD decrease per level from T5 towards L2, as a fraction of the L1-L2 mean."""
THORACOLUMBAR_DROP_SD = 0.006
LEVEL_NOISE_SD = 0.03
"""Independent relative scatter of each level around the patient's curve."""

MIN_BMD_MG_CM3 = 15.0
MAX_BMD_MG_CM3 = 260.0

PHANTOM_LEVELS: tuple[VertebraLevel, ...] = tuple(
    VertebraLevel(v) for v in range(VertebraLevel.C7, VertebraLevel.S1 + 1)
)
"""The levels the phantom draws: C7..S1."""


def category_of(bmd_mg_cm3: float) -> str:
    """QCT category of an L1-L2 mean BMD by the guideline thresholds: 'normal', 'osteopenia' or 'osteoporosis'."""
    category = categorize(bmd_mg_cm3)
    if category is Category.INDETERMINATE:
        raise ValueError(f"bmd_mg_cm3 must be a finite number, got {bmd_mg_cm3!r}")
    return category.value


def _check_kvp(kvp: int) -> int:
    if int(kvp) not in MINERAL_KVP_FACTOR:
        raise ValueError(f"kvp must be one of {SUPPORTED_KVP}, got {kvp}")
    return int(kvp)


def hu_to_bmd_line(kvp: int = REFERENCE_KVP) -> tuple[float, float]:
    """(slope, intercept) with ``bmd_mg_cm3 = slope * hu + intercept`` for unenhanced bone at ``kvp``."""
    factor = MINERAL_KVP_FACTOR[_check_kvp(kvp)]
    return BMD_SLOPE_PER_HU / factor, BMD_INTERCEPT_MG_CM3


def bmd_to_hu(bmd_mg_cm3: float, kvp: int = REFERENCE_KVP, contrast: bool = False) -> float:
    """Trabecular HU of bone with ``bmd_mg_cm3`` at ``kvp``, with the contrast rise when ``contrast``."""
    slope, intercept = hu_to_bmd_line(kvp)
    hu = (bmd_mg_cm3 - intercept) / slope
    if contrast:
        hu += contrast_trabecular_rise_hu(kvp)
    return float(hu)


def bmd_from_hu(hu: float, kvp: int = REFERENCE_KVP) -> float:
    """Inverse of ``bmd_to_hu`` for unenhanced bone."""
    slope, intercept = hu_to_bmd_line(kvp)
    return float(slope * hu + intercept)


def contrast_trabecular_rise_hu(kvp: int = REFERENCE_KVP) -> float:
    return CONTRAST_TRABECULAR_HU_RISE_120KVP * IODINE_KVP_FACTOR[_check_kvp(kvp)]


def mineral_hu(base_hu: float, mineral_hu_120: float, kvp: int) -> float:
    """HU of a material whose mineral part measures ``mineral_hu_120`` above ``base_hu`` at 120 kVp."""
    return float(base_hu + mineral_hu_120 * MINERAL_KVP_FACTOR[_check_kvp(kvp)])


def rod_hu(density_mg_cm3: float, material: str, kvp: int = REFERENCE_KVP) -> float:
    """HU of a QCT calibration rod of ``density_mg_cm3`` of ``material`` ('k2hpo4' or 'hydroxyapatite').

    Both materials are rendered on the patient's BMD scale (the rods define it, as in QCT), so a synchronous
    calibration fitted on the rods recovers ``hu_to_bmd_line(kvp)`` exactly. The 0 mg/cm3 rod (water-equivalent
    resin / solution) measures the marrow HU of the line, -6.7 HU at 120 kVp.
    """
    if material not in ("k2hpo4", "hydroxyapatite"):
        raise ValueError(f"material must be 'k2hpo4' or 'hydroxyapatite', got {material!r}")
    return bmd_to_hu(density_mg_cm3, kvp, contrast=False)


@dataclass(frozen=True)
class PatientDensity:
    sex: str
    """'F' or 'M' (DICOM PatientSex)."""
    age_years: float
    category: str
    """Category of the L1-L2 mean BMD."""
    l1_l2_bmd_mg_cm3: float
    bmd_by_level: dict[VertebraLevel, float]
    """Trabecular BMD (mg/cm3) of every level C7..S1."""
    thoracolumbar_drop_per_level: float
    """Relative drop per level used for this patient (fraction of the L1-L2 mean)."""

    def __post_init__(self) -> None:
        if self.sex not in ("F", "M"):
            raise ValueError(f"sex must be 'F' or 'M', got {self.sex!r}")
        if not (18 <= self.age_years <= 100):
            raise ValueError(f"age_years must be within 18..100, got {self.age_years}")
        if self.category not in CATEGORIES:
            raise ValueError(f"category must be one of {CATEGORIES}, got {self.category!r}")
        missing = [lv.name for lv in PHANTOM_LEVELS if lv not in self.bmd_by_level]
        if missing:
            raise ValueError(f"bmd_by_level misses levels {missing}")
        if category_of(self.l1_l2_bmd_mg_cm3) != self.category:
            raise ValueError(f"category {self.category!r} does not match L1-L2 BMD {self.l1_l2_bmd_mg_cm3:.1f}")

    def trabecular_hu(self, level: VertebraLevel, kvp: int = REFERENCE_KVP, contrast: bool = False) -> float:
        return bmd_to_hu(self.bmd_by_level[level], kvp, contrast)


def _normalise_sex(sex: str | None) -> str | None:
    if sex is None:
        return None
    s = sex.strip().upper()[:1]
    if s not in ("F", "M"):
        raise ValueError(f"sex must be 'F' or 'M' (or female/male), got {sex!r}")
    return s


def expected_l1_l2_bmd(sex: str, age_years: float) -> float:
    """Mean L1-L2 trabecular BMD for sex and age (QCT reference-curve shape, mg/cm3).

    Peak ~ 175 (women) / 170 (men) until 35-40, then a near-linear decline, steeper in women after menopause
    (Chinese QCT reference data, Cheng 2019-like: ~ 2.5 mg/cm3/year women after 48, ~ 1.6 men after 40).
    """
    if sex == "F":
        return 175.0 - 1.0 * max(0.0, age_years - 35.0) - 1.5 * max(0.0, age_years - 48.0)
    return 170.0 - 1.6 * max(0.0, age_years - 40.0)


BMD_SD_AROUND_EXPECTED = 24.0
AGE_BY_CATEGORY: dict[str, tuple[float, float]] = {"normal": (54.0, 11.0), "osteopenia": (63.0, 9.0),
                                                   "osteoporosis": (70.0, 9.0)}
"""Age mean and SD by category, chosen so the pooled median is ~ 65 with IQR ~ 57-73 as in Xiong 2025."""
FEMALE_FRACTION_BY_CATEGORY: dict[str, float] = {"normal": 0.45, "osteopenia": 0.60, "osteoporosis": 0.73}


def _draw_bmd_in_category(rng: np.random.Generator, category: str, centre: float) -> float:
    """A BMD inside the category band, pulled towards ``centre`` (age/sex expectation)."""
    bands = {
        "normal": (NORMAL_ABOVE_MG_CM3 + 0.5, 220.0),
        "osteopenia": (OSTEOPOROSIS_BELOW_MG_CM3, NORMAL_ABOVE_MG_CM3),
        "osteoporosis": (30.0, OSTEOPOROSIS_BELOW_MG_CM3 - 0.5),
    }
    low, high = bands[category]
    for _ in range(50):
        value = float(rng.normal(centre, BMD_SD_AROUND_EXPECTED))
        if low <= value <= high:
            return value
    return float(rng.uniform(low, high))


def draw_patient(
    rng: np.random.Generator,
    *,
    sex: str | None = None,
    age_years: float | None = None,
    category: str | None = None,
) -> PatientDensity:
    """Draw a patient: sex, age, and per-level trabecular BMD for C7..S1.

    Without arguments the cohort follows the Xiong 2025 category mix (22 / 42 / 36 %). ``category`` forces the
    category of the L1-L2 mean; ``sex`` ('F'/'M') and ``age_years`` fix those. When age or sex is given but not
    the category, the L1-L2 BMD follows the age/sex expectation (so the category follows from it).
    """
    sex_n = _normalise_sex(sex)
    if category is not None and category not in CATEGORIES:
        raise ValueError(f"category must be one of {CATEGORIES} or None, got {category!r}")
    if age_years is not None and not (18 <= age_years <= 100):
        raise ValueError(f"age_years must be within 18..100, got {age_years}")

    cat = category
    if cat is None and sex_n is None and age_years is None:
        cat = CATEGORIES[int(rng.choice(3, p=np.asarray(CATEGORY_MIX)))]
    if sex_n is None:
        female_p = FEMALE_FRACTION_BY_CATEGORY[cat] if cat is not None else FEMALE_FRACTION
        sex_n = "F" if rng.random() < female_p else "M"
    if age_years is None:
        mean, sd = AGE_BY_CATEGORY[cat] if cat is not None else (64.0, 11.0)
        age = float(np.clip(rng.normal(mean, sd), 25.0, 95.0))
    else:
        age = float(age_years)
    centre = expected_l1_l2_bmd(sex_n, age)
    if cat is None:
        l12 = float(np.clip(rng.normal(centre, BMD_SD_AROUND_EXPECTED), 30.0, 230.0))
        cat = category_of(l12)
    else:
        l12 = _draw_bmd_in_category(rng, cat, centre)
    age = round(age, 1)

    drop = float(max(0.0, rng.normal(THORACOLUMBAR_DROP_PER_LEVEL, THORACOLUMBAR_DROP_SD)))
    bmd_by_level: dict[VertebraLevel, float] = {}
    l12_centre = 0.5 * (VertebraLevel.L1 + VertebraLevel.L2)
    for level in PHANTOM_LEVELS:
        v = int(level)
        if v <= VertebraLevel.L2:
            # linear from the L1-L2 centre upwards; flattens above T4 (T1-T4 and C7 close to T5)
            steps = l12_centre - max(v, int(VertebraLevel.T4))
            rel = 1.0 + drop * steps - 0.004 * max(0, int(VertebraLevel.T4) - v)
        elif v <= VertebraLevel.L5:
            rel = 1.0 - 0.5 * drop * (v - l12_centre)  # lumbar L3-L5 continue a little lower
        else:
            rel = 0.85 - 0.5 * drop * 3.5  # S1 (sacral body) lower than L5
        noise = rng.normal(0.0, LEVEL_NOISE_SD)
        bmd_by_level[level] = l12 * rel * (1.0 + noise)
    # make the L1-L2 mean exactly the drawn value (keeps the category exact)
    shift = l12 - 0.5 * (bmd_by_level[VertebraLevel.L1] + bmd_by_level[VertebraLevel.L2])
    for level in (VertebraLevel.L1, VertebraLevel.L2):
        bmd_by_level[level] += shift
    bmd_by_level = {lv: round(float(np.clip(b, MIN_BMD_MG_CM3, MAX_BMD_MG_CM3)), 2) for lv, b in bmd_by_level.items()}
    l12_final = 0.5 * (bmd_by_level[VertebraLevel.L1] + bmd_by_level[VertebraLevel.L2])
    return PatientDensity(
        sex=sex_n,
        age_years=age,
        category=category_of(l12_final),
        l1_l2_bmd_mg_cm3=l12_final,
        bmd_by_level=bmd_by_level,
        thoracolumbar_drop_per_level=drop,
    )


def with_l1_l2_bmd(patient: PatientDensity, l1_l2_bmd_mg_cm3: float) -> PatientDensity:
    """The same patient with every level scaled so that the L1-L2 mean is ``l1_l2_bmd_mg_cm3`` exactly."""
    factor = l1_l2_bmd_mg_cm3 / patient.l1_l2_bmd_mg_cm3
    levels = {lv: round(float(np.clip(b * factor, MIN_BMD_MG_CM3 * 0.5, MAX_BMD_MG_CM3 * 1.2)), 4)
              for lv, b in patient.bmd_by_level.items()}
    shift = l1_l2_bmd_mg_cm3 - 0.5 * (levels[VertebraLevel.L1] + levels[VertebraLevel.L2])
    levels[VertebraLevel.L1] += shift
    levels[VertebraLevel.L2] += shift
    mean = 0.5 * (levels[VertebraLevel.L1] + levels[VertebraLevel.L2])
    return PatientDensity(sex=patient.sex, age_years=patient.age_years, category=category_of(mean),
                          l1_l2_bmd_mg_cm3=mean, bmd_by_level=levels,
                          thoracolumbar_drop_per_level=patient.thoracolumbar_drop_per_level)
