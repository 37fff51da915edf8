"""Public API of the synthetic CT phantom: spec, generation, writing.

    spec = PhantomSpec(seed=7, region="abdomen", kvp=120)
    phantom = generate(spec)                     # acquisition grid (512 x 512, slice thickness)
    coarse = generate(spec, spacing_mm=(3, 3, 3))  # fast coarse grid for segmentation training
    write_phantom(phantom, Path("out"))           # out/dicom/*.dcm, out/labels.nii.gz, out/truth.json

Geometry: ``Phantom.volume`` follows the project convention (``CTVolume``: hu[i=column, j=row, k=slice], k along
the slice normal of the DICOM orientation). ``Phantom.labels`` is on the same grid. Head-first supine images
have ImageOrientationPatient (1,0,0,0,1,0) (k towards the head); feet-first supine (-1,0,0,0,1,0) (k towards the
feet). Acquisition order (InstanceNumber) is superior -> inferior head-first and inferior -> superior feet-first.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from service.domain.levels import VertebraLevel
from service.domain.volume import CTVolume
from service.offline.phantom import density
from service.offline.phantom import labels as L  # noqa: N812
from service.offline.phantom.acquisition import finish, noise_sd_hu, to_dicom_order
from service.offline.phantom.anatomy import FRACTURE_TYPES, Anatomy, AnatomyOptions, Fracture, build_anatomy
from service.offline.phantom.grid import Grid
from service.offline.phantom.render import RenderOptions, render

logger = logging.getLogger(__name__)
V = VertebraLevel

REGIONS = ("chest", "abdomen", "chest-abdomen")
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
        "kvp": int(rng.choice([100, 120, 140], p=[0.25, 0.6, 0.15])),
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
    drawn.update(overrides)
    return PhantomSpec(**drawn)


@dataclass(frozen=True, eq=False)
class Phantom:
    volume: CTVolume
    labels: npt.NDArray[np.int16]
    """Same grid as ``volume.hu`` (see labels.py for the scheme)."""
    truth: dict[str, Any]
    """The truth.json content."""
    spec: PhantomSpec | None = None
    instance_numbers: tuple[int, ...] = field(default=())
    """InstanceNumber of each slice k (acquisition order)."""

    def __post_init__(self) -> None:
        if self.labels.shape != self.volume.hu.shape:
            raise ValueError(f"labels shape {self.labels.shape} differs from the volume {self.volume.hu.shape}")


def body_mask(labels: npt.NDArray[np.integer], level: VertebraLevel) -> npt.NDArray[np.bool_]:
    """Vertebral body of ``level`` including its trabecular core."""
    return L.body_mask(labels, level)


# ------------------------------------------------------------------------------------------- generation


def _streams(spec: PhantomSpec) -> dict[str, np.random.Generator]:
    ss = np.random.SeedSequence([int(spec.seed) & 0xFFFFFFFF, 0xB3D])
    names = ("patient", "anatomy", "findings", "render", "acquisition", "defaults")
    return {n: np.random.default_rng(s) for n, s in zip(names, ss.spawn(len(names)), strict=True)}


def _level_extent(anat: Anatomy, level: VertebraLevel) -> tuple[float, float]:
    vg = anat.vertebrae[level]
    return float(vg.centre[2] - vg.height_mm / 2), float(vg.centre[2] + vg.height_mm / 2)


def _z_range(spec: PhantomSpec, anat: Anatomy, rng: np.random.Generator) -> tuple[float, float]:
    """(bottom, top) of the field of view in z (mm)."""
    vt = anat.vertebrae
    chest_top = anat.lung_apex_z + float(rng.uniform(5.0, 30.0))
    chest_bottom = float(vt[V.L1].centre[2] - rng.uniform(5.0, 40.0))
    abd_top = float(vt[V.T10].centre[2] + rng.uniform(0.0, 35.0))
    abd_bottom = float(vt[V.S1].centre[2] - rng.uniform(40.0, 90.0))
    top, bottom = {"chest": (chest_top, chest_bottom), "abdomen": (abd_top, abd_bottom),
                   "chest-abdomen": (chest_top, abd_bottom)}[spec.region]
    if spec.fov_top_level is not None:
        top = _level_extent(anat, spec.fov_top_level)[1] + 5.0
    if spec.fov_bottom_level is not None:
        bottom = _level_extent(anat, spec.fov_bottom_level)[0] - 5.0
    return bottom, top


def _acquisition_grid(spec: PhantomSpec, anat: Anatomy, rng: np.random.Generator, z_range: tuple[float, float],
                      spacing_mm: tuple[float, float, float] | None,
                      shape: tuple[int, int, int] | None) -> tuple[Grid, tuple[float, float]]:
    bottom, top = z_range
    t = anat.torso
    zmid = (bottom + top) / 2
    offset = spec.fov_offset_mm if spec.fov_offset_mm is not None else (float(rng.normal(0, 5)),
                                                                         float(rng.normal(0, 8)))
    xc = float(t.at(zmid, "spine_x")) * 0.5 + offset[0]
    back = float(t.at(zmid, "back_y")) + (CALIBRATION_HEIGHT_MM + 10.0 if spec.calibration_phantom else 0.0)
    yc = float((t.at(zmid, "front_y") + back) / 2) + 10.0 + offset[1]
    fov_x = spec.columns * spec.pixel_spacing_mm
    fov_y = spec.rows * spec.pixel_spacing_mm
    if spec.calibration_phantom:
        # keep the rods inside the reconstruction circle: shift the centre down when needed
        cal_bottom = float(np.max(t.at(np.linspace(bottom, top, 50), "back_y"))) + CALIBRATION_HEIGHT_MM + 5.0
        half = 0.95 * min(fov_x, fov_y) / 2
        reach = math.sqrt(max(half**2 - 90.0**2, 1.0))
        yc = max(yc, cal_bottom - reach)
    if spacing_mm is None and shape is None:
        dz = spec.slice_thickness_mm
        nz = math.floor((top - bottom) / dz) + 1
        sp = (spec.pixel_spacing_mm, spec.pixel_spacing_mm, dz)
        shp = (spec.columns, spec.rows, nz)
    else:
        if spacing_mm is not None:
            sp = tuple(float(s) for s in spacing_mm)  # type: ignore[assignment]
            shp = shape or (max(1, round(fov_x / sp[0])), max(1, round(fov_y / sp[1])),
                            math.floor((top - bottom) / sp[2]) + 1)
        else:
            assert_shape = shape
            if assert_shape is None:
                raise ValueError("shape or spacing_mm is required")
            shp = assert_shape
            sp = (fov_x / shp[0], fov_y / shp[1], (top - bottom) / max(shp[2] - 1, 1))
        if len(sp) != 3 or min(sp) <= 0:
            raise ValueError(f"spacing_mm must be 3 positive values, got {spacing_mm}")
        if len(shp) != 3 or min(shp) <= 0:
            raise ValueError(f"shape must be 3 positive values, got {shape}")
    z0 = top - (shp[2] - 1) * sp[2]
    if shape is not None and spacing_mm is not None:
        z0 = (bottom + top) / 2 - (shp[2] - 1) * sp[2] / 2
    origin = (xc - (shp[0] - 1) / 2 * sp[0], yc - (shp[1] - 1) / 2 * sp[1], z0)
    return Grid(origin_mm=origin, spacing_mm=sp, shape=tuple(int(s) for s in shp)), offset  # type: ignore[arg-type]


def generate(
    spec: PhantomSpec,
    *,
    spacing_mm: tuple[float, float, float] | None = None,
    shape: tuple[int, int, int] | None = None,
) -> Phantom:
    """Render a phantom: on the acquisition grid of the spec, or on ``spacing_mm`` / ``shape`` (fast, coarse)."""
    t0 = time.perf_counter()
    rs = _streams(spec)
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
    anat = build_anatomy(rs["anatomy"], AnatomyOptions(
        rib_pairs=spec.rib_pairs, lumbar_variant=spec.lumbar_variant, scoliosis_deg=spec.scoliosis_deg,
        fractures=fractures, sex=patient.sex, habitus=habitus, curvature_scale=curvature, arms_in_fov=arms,
        osteophytes=osteo))
    z_range = _z_range(spec, anat, d)
    grid, fov_offset = _acquisition_grid(spec, anat, d, z_range, spacing_mm, shape)
    trab_hu = {lv: patient.trabecular_hu(lv, spec.kvp, spec.contrast) for lv in density.PHANTOM_LEVELS}

    # table, calibration phantom, findings
    zz = np.linspace(z_range[0], z_range[1], 50)
    back_max = float(np.max(anat.torso.at(zz, "back_y")))
    cal = None
    table_y = back_max + 1.0
    rod_specs: list[tuple[float, float, float, float]] = []
    cal_box = None
    cal_z = (0.0, 0.0)
    if spec.calibration_phantom is not None:
        n = len(CALIBRATION_DENSITIES_MG_CM3)
        y0 = back_max + 1.0
        y1 = y0 + CALIBRATION_HEIGHT_MM
        xs = [(k - (n - 1) / 2) * CALIBRATION_ROD_PITCH_MM for k in range(n)]
        anchor = V.L1 if spec.region != "chest" else V.T8
        zc = float(anat.vertebrae[anchor].centre[2])
        cal_z = (max(zc - 90.0, z_range[0] - 5.0), min(zc + 90.0, z_range[1] + 5.0))
        cal_box = (xs[0] - 30.0, xs[-1] + 30.0, y0, y1)
        rods = []
        for k, (x, dens) in enumerate(zip(xs, CALIBRATION_DENSITIES_MG_CM3, strict=True)):
            hu = density.rod_hu(dens, spec.calibration_phantom, spec.kvp)
            rod_specs.append((x, (y0 + y1) / 2, CALIBRATION_ROD_RADIUS_MM, hu))
            rods.append({"label": L.CALIBRATION_ROD_BASE + k, "density_mg_cm3": dens, "hu": round(hu, 2),
                         "centre_lps_mm": [round(x, 2), round((y0 + y1) / 2, 2)],
                         "z_range_mm": [round(cal_z[0], 2), round(cal_z[1], 2)],
                         "radius_mm": CALIBRATION_ROD_RADIUS_MM})
        cal = {"material": spec.calibration_phantom, "body_label": L.CALIBRATION_BODY, "rods": rods,
               "note": "rods run along z; centre_lps_mm is (x, y); HU of the noise-free rod"}
        table_y = y1 + 1.0
    island = None
    if spec.bone_island_level is not None:
        vg = anat.vertebrae[spec.bone_island_level]
        radius = float(rf.uniform(3.0, 6.0))
        local = (float(rf.uniform(-0.2, 0.2)) * vg.width_mm, float(rf.uniform(-0.15, 0.15)) * vg.depth_mm,
                 float(rf.uniform(-0.1, 0.1)) * vg.height_mm)
        island = (spec.bone_island_level, tuple(float(v) for v in vg.to_world(*local)), radius)

    # reconstruction-kernel resolution: sharp ~0.45 mm, standard ~0.65 mm, smooth ~0.85 mm Gaussian sigma
    blur_mm = 0.45 if spec.noise_scale > 1.6 else 0.65 if spec.noise_scale > 0.7 else 0.85
    ropts = RenderOptions(
        kvp=spec.kvp, contrast=spec.contrast, trabecular_hu=trab_hu, table=spec.table,
        calibration_rods=tuple(rod_specs), calibration_box=cal_box, calibration_z=cal_z, table_y=table_y,
        bone_island=island, screw_levels=spec.pedicle_screw_levels,
        blur_xy_mm=blur_mm, blur_z_mm=max(spec.slice_thickness_mm, grid.spacing_mm[2]) / 2.355,
    )
    cv = render(anat, grid, ropts, rs["render"])
    t_render = time.perf_counter() - t0
    size_factor = float(np.max(anat.torso.half_width) / 165.0)
    noise = 0.0 if spec.noise_free else noise_sd_hu(spec.kvp, spec.slice_thickness_mm, spec.low_dose, size_factor,
                                                    spec.noise_scale)
    if spacing_mm is not None or shape is not None:
        acq_voxel = spec.pixel_spacing_mm**2 * spec.slice_thickness_mm
        noise *= math.sqrt(min(1.0, acq_voxel / float(np.prod(grid.spacing_mm))))
    acquired = finish(cv, rs["acquisition"], slice_thickness_mm=spec.slice_thickness_mm, noise_sd=noise,
                      in_plane_blur_mm=blur_mm)
    vertebrae = _vertebra_truth(anat, grid, acquired.labels, patient, trab_hu, spec, island)
    hu_arr, affine = to_dicom_order(acquired.hu, grid, spec.feet_first)
    lab_arr, _ = to_dicom_order(acquired.labels, grid, spec.feet_first)
    nz = grid.shape[2]
    # Acquisition order: HFS superior -> inferior with k = 0 the most inferior slice; FFS inferior -> superior
    # with k = 0 the most superior slice. In both cases the first acquired slice is k = nz - 1.
    instance_numbers = tuple(nz - k for k in range(nz))
    uids = _uids(spec, nz, spacing_mm, shape)
    kernel = "SHARP" if spec.noise_scale > 1.6 else "STANDARD" if spec.noise_scale > 0.7 else "SMOOTH"
    volume = CTVolume(
        hu=hu_arr.astype(np.float32, copy=False),
        affine_lps=affine,
        study_instance_uid=uids["study"],
        series_instance_uid=uids["series"],
        frame_of_reference_uid=uids["frame_of_reference"],
        sop_instance_uids=tuple(uids["sop"]),
        kvp=float(spec.kvp),
        manufacturer=MANUFACTURER,
        manufacturer_model_name="synthetic CT",
        station_name="PHANTOM",
        convolution_kernel=kernel,
        contrast_bolus_agent="IODINE" if spec.contrast else "",
        patient_sex=patient.sex,
        patient_age_years=patient.age_years,
    )
    slope, intercept = density.hu_to_bmd_line(spec.kvp)
    s120, i120 = density.hu_to_bmd_line(120)
    truth: dict[str, Any] = {
        "generator": {"name": MANUFACTURER, "version": GENERATOR_VERSION},
        "seed": spec.seed,
        "spec": spec.to_json_dict(),
        "patient": {
            "sex": patient.sex,
            "age_years": patient.age_years,
            "category": patient.category,
            "l1_l2_bmd_mg_cm3": round(patient.l1_l2_bmd_mg_cm3, 3),
            "bmd_by_level_mg_cm3": {lv.name: b for lv, b in patient.bmd_by_level.items()},
            "habitus": habitus,
        },
        "hu_to_bmd": {"slope": slope, "intercept": intercept, "kvp": spec.kvp,
                      "applies_to": "unenhanced trabecular bone at this kVp; bmd = slope * hu + intercept"},
        "hu_to_bmd_120kvp": {"slope": s120, "intercept": i120},
        "contrast_trabecular_rise_hu": round(density.contrast_trabecular_rise_hu(spec.kvp), 3) if spec.contrast
        else 0.0,
        "acquisition": {
            "region": spec.region,
            "kvp": spec.kvp,
            "contrast": spec.contrast,
            "low_dose": spec.low_dose,
            "noise_free": spec.noise_free,
            "noise_sd_hu": round(noise, 3),
            "convolution_kernel": kernel,
            "slice_thickness_mm": spec.slice_thickness_mm,
            "pixel_spacing_mm": [grid.spacing_mm[1], grid.spacing_mm[0]],
            "spacing_mm": list(grid.spacing_mm),
            "shape": list(hu_arr.shape),
            "n_slices": nz,
            "patient_position": "FFS" if spec.feet_first else "HFS",
            "image_orientation_patient": [float(v) for v in (affine[:3, 0] / grid.spacing_mm[0])]
            + [float(v) for v in (affine[:3, 1] / grid.spacing_mm[1])],
            "affine_lps": affine.tolist(),
            "acquisition_order": "superior_to_inferior" if not spec.feet_first else "inferior_to_superior",
            "fov_z_range_mm": [round(z_range[0], 3), round(z_range[1], 3)],
            "fov_offset_mm": list(fov_offset),
            "coarse_grid": spacing_mm is not None or shape is not None,
        },
        "variants": {
            "rib_pairs": spec.rib_pairs,
            "last_rib_level": VertebraLevel(int(V.T1) + spec.rib_pairs - 1).name,
            "lumbar_variant": spec.lumbar_variant,
            "transitional": spec.lumbar_variant != "normal",
            "lumbar_vertebra_count": 5 + (1 if spec.lumbar_variant == "lumbarised_s1" else 0)
            - (1 if spec.lumbar_variant == "sacralised_l5" else 0),
            "scoliosis_deg": spec.scoliosis_deg,
            "osteophytes": osteo,
            "arms_in_fov": arms,
        },
        "vertebrae": vertebrae,
        "calibration_phantom": cal,
        "findings": {
            "fractures": [{"level": lv.name, "kind": f.kind, "height_loss": round(f.height_loss, 4)}
                          for lv, f in fractures.items()],
            "bone_island": None if island is None else {"level": island[0].name,
                                                        "centre_lps_mm": [round(v, 2) for v in island[1]],
                                                        "radius_mm": round(island[2], 2)},
            "pedicle_screw_levels": [lv.name for lv in spec.pedicle_screw_levels],
        },
        "label_scheme": {
            "body_shell": "1..25 = VertebraLevel value", "trabecular_core": "200 + level value",
            "posterior_elements": "40 + level value", "left_ribs": "71..83", "right_ribs": "91..103",
            **{name: value for value, name in L.NAMES.items()},
        },
        "uids": {"study": uids["study"], "series": uids["series"], "frame_of_reference": uids["frame_of_reference"]},
    }
    logger.info("phantom seed %d rendered in %.2f s (%.2f s anatomy+paint), grid %s", spec.seed,
                time.perf_counter() - t0, t_render, grid.shape)
    return Phantom(volume=volume, labels=lab_arr, truth=truth, spec=spec, instance_numbers=instance_numbers)


def _uids(spec: PhantomSpec, nz: int, spacing_mm: Any, shape: Any) -> dict[str, Any]:
    from pydicom.uid import generate_uid

    key = hashlib.sha256(repr((spec, spacing_mm, shape)).encode()).hexdigest()
    return {
        "study": generate_uid(entropy_srcs=["bmd-node-phantom", "study", key]),
        "series": generate_uid(entropy_srcs=["bmd-node-phantom", "series", key]),
        "frame_of_reference": generate_uid(entropy_srcs=["bmd-node-phantom", "for", key]),
        "sop": [generate_uid(entropy_srcs=["bmd-node-phantom", "sop", key, str(k)]) for k in range(nz)],
    }


def _vertebra_truth(anat: Anatomy, grid: Grid, labels: npt.NDArray[np.int16], patient: density.PatientDensity,
                    trab_hu: dict[VertebraLevel, float], spec: PhantomSpec,
                    island: tuple[VertebraLevel, tuple[float, float, float], float] | None) -> list[dict[str, Any]]:
    out = []
    aff = grid.affine()
    for lv in density.PHANTOM_LEVELS:
        vg = anat.vertebrae[lv]
        r = max(vg.width_mm, vg.depth_mm, vg.height_mm) / 2 + 10.0
        blk = grid.block(vg.centre - r, vg.centre + r)
        if blk is None:
            continue
        sub = labels[blk.slices]
        body = (sub == L.body_shell(lv)) | (sub == L.body_core(lv))
        n = int(body.sum())
        if n == 0:
            continue
        idx = np.argwhere(body).mean(axis=0) + np.array([s.start for s in blk.slices])
        centroid = aff[:3, :3] @ idx + aff[:3, 3]
        kz = np.nonzero(body.any(axis=(0, 1)))[0] + blk.slices[2].start
        cut = bool(kz.min() == 0 or kz.max() == grid.shape[2] - 1)
        f = vg.fracture
        h = vg.height_mm

        def height(b_norm: float, r_norm: float, conc: float, fr: Fracture | None = f, hh: float = h) -> float:
            loss = 0.0 if fr is None else float(fr.loss_at(np.float32(b_norm), np.float32(r_norm)))
            return round(hh * (1.0 - loss) - 2.0 * conc, 2)

        conc = vg.endplate_concavity_mm
        out.append({
            "level": lv.name,
            "bmd_mg_cm3": patient.bmd_by_level[lv],
            "trabecular_hu": round(trab_hu[lv], 4),
            "centroid_lps_mm": [round(float(c), 3) for c in centroid],
            "model_centre_lps_mm": [round(float(c), 3) for c in vg.centre],
            "axis_superior": [round(float(c), 5) for c in vg.frame[2]],
            "axis_posterior": [round(float(c), 5) for c in vg.frame[1]],
            "fractured": f is not None,
            "fracture": None if f is None else {"kind": f.kind, "height_loss": round(f.height_loss, 4)},
            "heights_mm": {"anterior": height(-0.6, 0.6, conc * (1 - 0.36)), "middle": height(0.0, 0.0, conc),
                           "posterior": height(0.6, 0.6, conc * (1 - 0.36))},
            "body_size_mm": {"width": round(vg.width_mm, 2), "depth": round(vg.depth_mm, 2),
                             "height": round(vg.height_mm, 2)},
            "voxel_count": n,
            "core_voxel_count": int((sub == L.body_core(lv)).sum()),
            "cut_by_fov": cut,
            "bone_island": island is not None and island[0] == lv,
            "metal": lv in spec.pedicle_screw_levels,
            "kind": vg.kind,
        })
    return out


def write_phantom(phantom: Phantom, out_dir: Path, *, jpeg2000: bool = False) -> list[Path]:
    """Write DIR/dicom/*.dcm, DIR/labels.nii.gz and DIR/truth.json; returns the written paths."""
    import json

    from service.offline.phantom.dicom_writer import write_labels_nifti, write_series

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = write_series(phantom, out_dir / "dicom", jpeg2000=jpeg2000)
    paths.append(write_labels_nifti(phantom, out_dir / "labels.nii.gz"))
    truth_path = out_dir / "truth.json"
    truth = dict(phantom.truth)
    truth["files"] = {"dicom": "dicom/", "labels": "labels.nii.gz", "transfer_syntax":
                      "JPEG2000Lossless" if jpeg2000 else "ExplicitVRLittleEndian"}
    truth_path.write_text(json.dumps(truth, indent=1))
    paths.append(truth_path)
    return paths


__all__ = ["Phantom", "PhantomSpec", "body_mask", "generate", "random_spec", "write_phantom"]
