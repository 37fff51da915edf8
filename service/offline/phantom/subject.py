"""The patient a spec and its seed give: bone density, habitus, curvature, arms, osteophytes and fractures.

Each choice the spec leaves None is drawn from its own random stream (``patient``, ``defaults``, ``findings``),
so that fixing one option does not change the others.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.domain.levels import VertebraLevel
from service.offline.phantom import density, physics
from service.offline.phantom.anatomy import FRACTURE_TYPES, AnatomyOptions, Fracture
from service.offline.phantom.spec import FRACTURE_LOSS_RANGE, HABITUS, PhantomSpec

STREAMS = ("patient", "anatomy", "findings", "render", "acquisition", "defaults", "scanner")
"""Names of the independent random streams of one phantom, in the order they are spawned from the seed (a new
stream goes at the end, so that the existing ones keep their numbers)."""


def streams(spec: PhantomSpec) -> dict[str, np.random.Generator]:
    ss = np.random.SeedSequence([int(spec.seed) & 0xFFFFFFFF, 0xB3D])
    return {n: np.random.default_rng(s) for n, s in zip(STREAMS, ss.spawn(len(STREAMS)), strict=True)}


@dataclass(frozen=True)
class Subject:
    """The drawn patient of one phantom."""

    patient: density.PatientDensity
    habitus: str
    curvature_scale: float
    arms_in_fov: bool
    osteophytes: bool
    fractures: dict[VertebraLevel, Fracture]

    def __post_init__(self) -> None:
        if self.habitus not in HABITUS:
            raise ValueError(f"habitus must be one of {HABITUS}, got {self.habitus!r}")

    def anatomy_options(self, spec: PhantomSpec) -> AnatomyOptions:
        return AnatomyOptions(
            rib_pairs=spec.rib_pairs, last_rib_scale=spec.last_rib_scale, lumbar_variant=spec.lumbar_variant,
            scoliosis_deg=spec.scoliosis_deg,
            fractures=self.fractures, sex=self.patient.sex, habitus=self.habitus,
            curvature_scale=self.curvature_scale, arms_in_fov=self.arms_in_fov, osteophytes=self.osteophytes)


def draw_subject(spec: PhantomSpec, rs: dict[str, np.random.Generator]) -> Subject:
    """The patient of ``spec``: what it fixes is kept, the rest is drawn from the streams ``rs``."""
    d = rs["defaults"]
    patient = density.draw_patient(rs["patient"], sex=spec.sex, age_years=spec.age_years, category=spec.category)
    if spec.l1_l2_bmd_mg_cm3 is not None:
        patient = density.with_l1_l2_bmd(patient, spec.l1_l2_bmd_mg_cm3)
    habitus = spec.habitus or str(d.choice(HABITUS, p=[0.25, 0.5, 0.25]))
    curvature = spec.curvature_scale if spec.curvature_scale is not None else float(d.uniform(0.7, 1.3))
    arms = spec.arms_in_fov if spec.arms_in_fov is not None else bool(d.random() < 0.2)
    osteo = spec.osteophytes if spec.osteophytes is not None else bool(d.random() < min(0.8, patient.age_years / 100))
    rf = rs["findings"]
    fractures = {}
    for lv in spec.fracture_levels:
        kind = spec.fracture_kind or str(rf.choice(FRACTURE_TYPES, p=[0.6, 0.3, 0.1]))
        loss = spec.fracture_height_loss if spec.fracture_height_loss is not None else float(
            rf.uniform(*FRACTURE_LOSS_RANGE))
        fractures[lv] = Fracture(kind, loss)
    return Subject(patient=patient, habitus=habitus, curvature_scale=curvature, arms_in_fov=arms,
                   osteophytes=osteo, fractures=fractures)


SCANNER_GAIN_SD = 0.01
SCANNER_OFFSET_SD_HU = 3.0


def draw_scanner(spec: PhantomSpec, rng: np.random.Generator) -> physics.Scanner:
    """The scanner's HU scale: what the spec fixes, else gain ~ N(1, 1 %) within 3 %, offset ~ N(0, 3 HU) within 8 HU
    (between-scanner differences of water and soft-tissue HU of a few HU and a few per cent)."""
    gain = float(np.clip(rng.normal(1.0, SCANNER_GAIN_SD), 0.97, 1.03))
    offset = float(np.clip(rng.normal(0.0, SCANNER_OFFSET_SD_HU), -8.0, 8.0))
    return physics.Scanner(gain=spec.scanner_gain if spec.scanner_gain is not None else round(gain, 4),
                           offset_hu=spec.scanner_offset_hu if spec.scanner_offset_hu is not None else round(offset, 2))


def water_path_cm(size_factor: float) -> float:
    """The patient's water-equivalent path for the spectrum: the reference path scaled by the size factor (max torso
    half width / 165 mm), within 15..45 cm."""
    return float(np.clip(physics.REFERENCE_WATER_PATH_CM * size_factor, 15.0, 45.0))
