"""Options of one synthetic phantom (``PhantomSpec``) and a strongly randomised spec for training (``random_spec``)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from service.domain.levels import VertebraLevel
from service.offline.phantom import density
from service.offline.phantom.anatomy import FRACTURE_TYPES

V = VertebraLevel

REGIONS = ("chest", "abdomen", "chest-abdomen")
LAST_RIB_SCALE_RANGE = (0.05, 1.0)
SHORT_LAST_RIB_PROBABILITY = 0.3
SHORT_LAST_RIB_RANGE = (0.1, 0.6)
LUMBAR_VARIANTS = ("normal", "lumbarised_s1", "sacralised_l5")
CALIBRATION_MATERIALS = ("k2hpo4", "hydroxyapatite")
HABITUS = ("slim", "average", "obese")
CALIBRATION_DENSITIES_MG_CM3: tuple[float, ...] = (0.0, 50.0, 100.0, 200.0)
"""Rod densities (Xiong 2025 QC phantom: 50/100/200 mg/cm3 hydroxyapatite, plus a 0 rod)."""
CALIBRATION_ROD_RADIUS_MM = 9.0
CALIBRATION_ROD_PITCH_MM = 45.0
CALIBRATION_HEIGHT_MM = 34.0
MANUFACTURER = "bmd-node phantom"
GENERATOR_VERSION = "1"
FRACTURE_LOSS_RANGE = (0.2, 0.5)
SCANNER_GAIN_RANGE = (0.95, 1.05)
SCANNER_OFFSET_LIMIT_HU = 20.0


def _level(value: VertebraLevel | str | int) -> VertebraLevel:
    if isinstance(value, VertebraLevel):
        return value
    if isinstance(value, str):
        return VertebraLevel.from_name(value)
    return VertebraLevel(int(value))


@dataclass(frozen=True)
class PhantomSpec:
    """All options of one phantom. Anything left None is drawn from the seed."""

    seed: int
    region: str = "chest"
    slice_thickness_mm: float = 1.0
    pixel_spacing_mm: float = 0.7
    rows: int = 512
    columns: int = 512
    kvp: int = 120
    contrast: bool = False
    low_dose: bool = False
    noise_free: bool = False
    feet_first: bool = False
    calibration_phantom: str | None = None
    fracture_levels: tuple[VertebraLevel, ...] = ()
    fracture_kind: str | None = None
    """'wedge', 'biconcave', 'crush' or None (drawn per level)."""
    fracture_height_loss: float | None = None
    """0.2-0.5, or None (drawn per level)."""
    rib_pairs: int = 12
    last_rib_scale: tuple[float, float] = (1.0, 1.0)
    """(left, right) share of its usual length the last rib keeps beyond its tubercle: 1 normal, 0.1-0.6 a short
    (hypoplastic) floating rib, thinned with it (radius x (0.55 + 0.45 x share)); the head and neck stay."""
    lumbar_variant: str = "normal"
    scoliosis_deg: float = 0.0
    bone_island_level: VertebraLevel | None = None
    pedicle_screw_levels: tuple[VertebraLevel, ...] = ()
    sex: str | None = None
    age_years: float | None = None
    category: str | None = None
    l1_l2_bmd_mg_cm3: float | None = None
    """Force the L1-L2 mean trabecular BMD (all levels scaled, the gradient kept); overrides ``category``."""
    habitus: str | None = None
    curvature_scale: float | None = None
    arms_in_fov: bool | None = None
    osteophytes: bool | None = None
    table: bool = True
    noise_scale: float = 1.0
    """Multiplies the modelled noise SD (reconstruction kernel / dose variety)."""
    fov_top_level: VertebraLevel | None = None
    fov_bottom_level: VertebraLevel | None = None
    fov_offset_mm: tuple[float, float] | None = None
    """(x, y) shift of the reconstruction centre from the patient centre; None = drawn (a few mm)."""
    scanner_gain: float | None = None
    """HU scale of the scanner, ``HU' = gain * HU + offset`` (physics.Scanner); None = drawn (SD 1 %, within 3 %)."""
    scanner_offset_hu: float | None = None
    """None = drawn (SD 3 HU, within 8 HU)."""

    def __post_init__(self) -> None:
        def fix(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        if self.region not in REGIONS:
            raise ValueError(f"region must be one of {REGIONS}, got {self.region!r}")
        if not 0.5 <= self.slice_thickness_mm <= 10.0:
            raise ValueError(f"slice_thickness_mm must be within 0.5..10, got {self.slice_thickness_mm}")
        if not 0.3 <= self.pixel_spacing_mm <= 5.0:
            raise ValueError(f"pixel_spacing_mm must be within 0.3..5, got {self.pixel_spacing_mm}")
        if not (16 <= self.rows <= 2048 and 16 <= self.columns <= 2048):
            raise ValueError(f"rows and columns must be within 16..2048, got {self.rows}x{self.columns}")
        if self.kvp not in density.SUPPORTED_KVP:
            raise ValueError(f"kvp must be one of {density.SUPPORTED_KVP}, got {self.kvp}")
        if self.calibration_phantom is not None and self.calibration_phantom not in CALIBRATION_MATERIALS:
            raise ValueError(f"calibration_phantom must be None or one of {CALIBRATION_MATERIALS}, "
                             f"got {self.calibration_phantom!r}")
        fix("fracture_levels", tuple(_level(v) for v in self.fracture_levels))
        fix("pedicle_screw_levels", tuple(_level(v) for v in self.pedicle_screw_levels))
        for lv in (*self.fracture_levels, *self.pedicle_screw_levels):
            if not V.C7 <= lv <= V.L5:
                raise ValueError(f"fracture and screw levels must be within C7..L5, got {lv.name}")
        if self.fracture_kind is not None and self.fracture_kind not in FRACTURE_TYPES:
            raise ValueError(f"fracture_kind must be one of {FRACTURE_TYPES} or None, got {self.fracture_kind!r}")
        if self.fracture_height_loss is not None and not (
            FRACTURE_LOSS_RANGE[0] <= self.fracture_height_loss <= FRACTURE_LOSS_RANGE[1]
        ):
            raise ValueError(f"fracture_height_loss must be within {FRACTURE_LOSS_RANGE}, "
                             f"got {self.fracture_height_loss}")
        if self.rib_pairs not in (11, 12, 13):
            raise ValueError(f"rib_pairs must be 11, 12 or 13, got {self.rib_pairs}")
        fix("last_rib_scale", (float(self.last_rib_scale[0]), float(self.last_rib_scale[1])))
        if not all(LAST_RIB_SCALE_RANGE[0] <= v <= LAST_RIB_SCALE_RANGE[1] for v in self.last_rib_scale):
            raise ValueError(f"last_rib_scale must be within {LAST_RIB_SCALE_RANGE} per side, "
                             f"got {self.last_rib_scale}")
        if self.lumbar_variant not in LUMBAR_VARIANTS:
            raise ValueError(f"lumbar_variant must be one of {LUMBAR_VARIANTS}, got {self.lumbar_variant!r}")
        if not 0.0 <= self.scoliosis_deg <= 45.0:
            raise ValueError(f"scoliosis_deg must be within 0..45, got {self.scoliosis_deg}")
        if self.bone_island_level is not None:
            fix("bone_island_level", _level(self.bone_island_level))
            if not V.T1 <= self.bone_island_level <= V.L5:
                raise ValueError(f"bone_island_level must be within T1..L5, got {self.bone_island_level.name}")
        if self.sex is not None:
            s = self.sex.strip().upper()[:1]
            if s not in ("F", "M"):
                raise ValueError(f"sex must be 'F' or 'M', got {self.sex!r}")
            fix("sex", s)
        if self.age_years is not None and not 18 <= self.age_years <= 100:
            raise ValueError(f"age_years must be within 18..100, got {self.age_years}")
        if self.category is not None and self.category not in density.CATEGORIES:
            raise ValueError(f"category must be one of {density.CATEGORIES} or None, got {self.category!r}")
        if self.l1_l2_bmd_mg_cm3 is not None and not 10.0 <= self.l1_l2_bmd_mg_cm3 <= 300.0:
            raise ValueError(f"l1_l2_bmd_mg_cm3 must be within 10..300, got {self.l1_l2_bmd_mg_cm3}")
        if self.habitus is not None and self.habitus not in HABITUS:
            raise ValueError(f"habitus must be one of {HABITUS} or None, got {self.habitus!r}")
        if self.curvature_scale is not None and not 0.0 <= self.curvature_scale <= 2.0:
            raise ValueError(f"curvature_scale must be within 0..2, got {self.curvature_scale}")
        if not 0.0 <= self.noise_scale <= 10.0:
            raise ValueError(f"noise_scale must be within 0..10, got {self.noise_scale}")
        for name in ("fov_top_level", "fov_bottom_level"):
            value = getattr(self, name)
            if value is not None:
                fix(name, _level(value))
        top, bottom = self.fov_top_level, self.fov_bottom_level
        if top is not None and bottom is not None and top > bottom:
            raise ValueError("fov_top_level must be cranial to fov_bottom_level")
        if self.scanner_gain is not None and not SCANNER_GAIN_RANGE[0] <= self.scanner_gain <= SCANNER_GAIN_RANGE[1]:
            raise ValueError(f"scanner_gain must be within {SCANNER_GAIN_RANGE}, got {self.scanner_gain}")
        if self.scanner_offset_hu is not None and not abs(self.scanner_offset_hu) <= SCANNER_OFFSET_LIMIT_HU:
            raise ValueError(f"scanner_offset_hu must be within +-{SCANNER_OFFSET_LIMIT_HU}, "
                             f"got {self.scanner_offset_hu}")
        if self.fov_offset_mm is not None:
            fix("fov_offset_mm", (float(self.fov_offset_mm[0]), float(self.fov_offset_mm[1])))

    def to_json_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, VertebraLevel):
                value = value.name
            elif isinstance(value, tuple):
                value = [v.name if isinstance(v, VertebraLevel) else v for v in value]
            out[f.name] = value
        return out


def draw_last_rib_scale(rng: np.random.Generator) -> tuple[float, float]:
    """A short last (floating) rib in SHORT_LAST_RIB_PROBABILITY of patients, on both sides in half of them: the 12th
    rib's length varies widely (a few centimetres to the length of the 11th), and a short one is what a rib anchor
    misses on real CT (issue 16's targeted reconstruction, the real CPTAC chest's one-sided short T12 rib)."""
    if rng.random() >= SHORT_LAST_RIB_PROBABILITY:
        return (1.0, 1.0)
    short = float(rng.uniform(*SHORT_LAST_RIB_RANGE))
    if rng.random() < 0.5:
        return (short, float(rng.uniform(*SHORT_LAST_RIB_RANGE)))
    return (short, 1.0) if rng.random() < 0.5 else (1.0, short)


def random_spec(rng: np.random.Generator, **overrides: Any) -> PhantomSpec:
    """A strongly randomised spec for training (every option varied); ``overrides`` fix any field."""
    region = str(rng.choice(REGIONS, p=[0.4, 0.35, 0.25]))
    thickness = float(rng.choice([0.625, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0], p=[.1, .25, .15, .1, .1, .1, .1, .1]))
    fracture_levels: tuple[VertebraLevel, ...] = ()
    if rng.random() < 0.2:
        n = int(rng.integers(1, 3))
        fracture_levels = tuple(sorted({VertebraLevel(int(v)) for v in rng.integers(V.T5, V.L4 + 1, size=n)}))
    screws: tuple[VertebraLevel, ...] = ()
    if rng.random() < 0.05:
        start = int(rng.integers(V.T10, V.L4))
        screws = tuple(VertebraLevel(v) for v in range(start, start + int(rng.integers(1, 3)) + 1) if v <= V.L5)
        fracture_levels = tuple(lv for lv in fracture_levels if lv not in screws)
    drawn: dict[str, Any] = {
        "seed": int(rng.integers(0, 2**31 - 1)),
        "region": region,
        "slice_thickness_mm": thickness,
        "pixel_spacing_mm": float(rng.uniform(0.5, 0.98)),
        "kvp": int(rng.choice(density.SUPPORTED_KVP, p=[0.1, 0.25, 0.5, 0.15])),
        "contrast": bool(rng.random() < 0.35),
        "low_dose": bool(rng.random() < 0.25),
        "feet_first": bool(rng.random() < 0.1),
        "calibration_phantom": (str(rng.choice(CALIBRATION_MATERIALS)) if rng.random() < 0.1 else None),
        "fracture_levels": fracture_levels,
        "rib_pairs": int(rng.choice([11, 12, 13], p=[0.05, 0.9, 0.05])),
        "lumbar_variant": str(rng.choice(LUMBAR_VARIANTS, p=[0.9, 0.05, 0.05])),
        "scoliosis_deg": float(rng.uniform(3.0, 25.0)) if rng.random() < 0.2 else 0.0,
        "bone_island_level": (VertebraLevel(int(rng.integers(V.T4, V.L5 + 1))) if rng.random() < 0.08 else None),
        "pedicle_screw_levels": screws,
        "habitus": str(rng.choice(HABITUS, p=[0.25, 0.5, 0.25])),
        "curvature_scale": float(rng.uniform(0.5, 1.5)),
        "arms_in_fov": bool(rng.random() < 0.3),
        "osteophytes": bool(rng.random() < 0.35),
        "table": bool(rng.random() < 0.9),
        "noise_scale": float(np.exp(rng.normal(0.0, 0.45))),
        "fov_offset_mm": (float(rng.normal(0, 15)), float(rng.normal(0, 20))),
    }
    if drawn["bone_island_level"] is not None and drawn["bone_island_level"] in screws:
        drawn["bone_island_level"] = None
    drawn["last_rib_scale"] = draw_last_rib_scale(rng)  # drawn last: the other fields of a seed stay as they were
    drawn.update(overrides)
    return PhantomSpec(**drawn)
