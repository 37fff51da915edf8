"""Patient and bone-density model of the synthetic CT phantom (pure numpy), and the HU of its bone.

The phantom's truth is the BMD it puts in: mg/cm3 of calcium hydroxyapatite (HA) per cm3 of trabecular bone, the QCT
scale of the ACR 2018 / Chinese 2018 QCT guidelines. The HU of that bone are computed by ``physics`` from the
composition, never from the calibration's line (service/calibration/linear.py), so a calibration error shows.

Bone (``bone_hu``)
    Trabecular bone = HA at ``bmd`` mg/cm3 dissolved in a water-equivalent base (red marrow and organic matrix taken
    as water-equivalent, the convention of the HA-equivalent QCT scale and of HA phantoms such as the ESP; marrow fat,
    a known QCT error source, is not modelled). With IV contrast the marrow holds ``MARROW_IODINE_MG_ML`` of iodine
    (a vascular fraction of ~9 % of blood at ``BLOOD_IODINE_MG_ML``); its HU follow from iodine's attenuation.
    Cortical bone: HA at the anatomy's apparent shell mineral density in the same base.
Calibration rods (``rod_hu``)
    'hydroxyapatite': HA at the declared density in water-equivalent resin. 'k2hpo4': dipotassium phosphate whose
    declared density is on the HA (BMD) scale, as the phantom definitions declare it: the rod holds
    ``K2HPO4_MG_PER_HA_MG`` mg of K2HPO4 per declared mg, the amount that matches HA in the reference beam
    (120 kVp, average patient). At other tube voltages and sizes K2HPO4 and HA differ slightly, as real rods do.
Scanner and beam: ``physics.Beam`` (kVp, patient size: beam hardening) and ``physics.Scanner`` (gain, offset).

Cohort and thoracolumbar gradient
    Category mix of the Xiong 2025 cohort (Table 1, training set): 21.8 % normal, 41.8 % osteopenia, 36.4 %
    osteoporosis; 62.4 % women; median age 66 (IQR 57-73). Categories by the L1-L2 mean BMD with the QCT
    guideline thresholds of ``service.domain.guidelines``.
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
from service.offline.phantom import physics

logger = logging.getLogger(__name__)

REFERENCE_KVP = 120
SUPPORTED_KVP: tuple[int, ...] = physics.SUPPORTED_KVP
BLOOD_IODINE_MG_ML = 5.0
"""Portal-venous blood iodine: ~ +125 HU over unenhanced blood at 120 kVp (aorta ~ 170 HU)."""
MARROW_IODINE_MG_ML = 0.45
"""Vertebral marrow iodine in the portal-venous phase: ~ 9 % vascular fraction of ``BLOOD_IODINE_MG_ML``."""
CORTICAL_MINERAL_RANGE_MG_CM3: tuple[float, float] = (525.0, 825.0)
"""Apparent HA density of the vertebral shell before partial-volume blur (vertebral shells measure ~ 400-1000 HU)."""

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


def _beam(kvp: int, water_path_cm: float) -> physics.Beam:
    return physics.beam(int(kvp), water_path_cm)


def bone_hu(bmd_mg_cm3: float, beam: physics.Beam, contrast: bool = False) -> float:
    """Trabecular HU (before the scanner's gain and offset) of bone with ``bmd_mg_cm3`` HA in ``beam``."""
    hu = beam.hu_solution("hydroxyapatite", bmd_mg_cm3)
    if contrast:
        hu += MARROW_IODINE_MG_ML * beam.hu_per_mg("iodine")
    return float(hu)


def hu_to_bmd_line(kvp: int = REFERENCE_KVP, water_path_cm: float = physics.REFERENCE_WATER_PATH_CM,
                   scanner: physics.Scanner | None = None) -> tuple[float, float]:
    """(slope, intercept) with ``bmd_mg_cm3 = slope * hu + intercept`` for unenhanced bone in this acquisition."""
    sc = scanner or physics.Scanner()
    beam = _beam(kvp, water_path_cm)
    hu0 = sc.apply(bone_hu(0.0, beam))
    per_mg = sc.gain * beam.hu_per_mg("hydroxyapatite")
    return 1.0 / per_mg, -hu0 / per_mg


def bmd_to_hu(bmd_mg_cm3: float, kvp: int = REFERENCE_KVP, contrast: bool = False,
              water_path_cm: float = physics.REFERENCE_WATER_PATH_CM) -> float:
    """Trabecular HU of bone with ``bmd_mg_cm3`` at ``kvp`` (average patient, ideal scanner)."""
    return bone_hu(bmd_mg_cm3, _beam(kvp, water_path_cm), contrast)


def bmd_from_hu(hu: float, kvp: int = REFERENCE_KVP) -> float:
    """Inverse of ``bmd_to_hu`` for unenhanced bone."""
    slope, intercept = hu_to_bmd_line(kvp)
    return float(slope * hu + intercept)


def contrast_trabecular_rise_hu(kvp: int = REFERENCE_KVP,
                                water_path_cm: float = physics.REFERENCE_WATER_PATH_CM) -> float:
    return float(MARROW_IODINE_MG_ML * _beam(kvp, water_path_cm).hu_per_mg("iodine"))


_REFERENCE_BEAM = physics.beam(REFERENCE_KVP)
K2HPO4_MG_PER_HA_MG = _REFERENCE_BEAM.hu_per_mg("hydroxyapatite") / _REFERENCE_BEAM.hu_per_mg("k2hpo4")
"""mg of K2HPO4 that attenuate like 1 mg of HA in the reference beam (120 kVp, average patient)."""
HU_SLOPE_PER_MG_CM3 = _REFERENCE_BEAM.hu_per_mg("hydroxyapatite")
HU_INTERCEPT = bmd_to_hu(0.0)
"""HU of the mineral-free base (0 mg/cm3) at 120 kVp: water-equivalent, 0 HU."""


def rod_hu(density_mg_cm3: float, material: str, kvp: int = REFERENCE_KVP,
           water_path_cm: float = physics.REFERENCE_WATER_PATH_CM) -> float:
    """HU (ideal scanner) of a QCT calibration rod of declared ``density_mg_cm3`` ('k2hpo4' or 'hydroxyapatite')."""
    beam = _beam(kvp, water_path_cm)
    if material == "hydroxyapatite":
        return float(beam.hu_solution("hydroxyapatite", density_mg_cm3))
    if material == "k2hpo4":
        return float(beam.hu_solution("k2hpo4", density_mg_cm3 * K2HPO4_MG_PER_HA_MG))
    raise ValueError(f"material must be 'k2hpo4' or 'hydroxyapatite', got {material!r}")


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

    def trabecular_hu(self, level: VertebraLevel, beam: physics.Beam, contrast: bool = False) -> float:
        """HU of the level's trabecular bone in ``beam`` (before the scanner's gain and offset)."""
        return bone_hu(self.bmd_by_level[level], beam, contrast)


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
