"""Where the scene sits around the anatomy: the field of view in z, the acquisition grid, the calibration phantom
under the patient (with the table height) and a bone island's place."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.domain.levels import VertebraLevel
from service.offline.phantom import density, physics
from service.offline.phantom import labels as L  # noqa: N812
from service.offline.phantom.anatomy import Anatomy
from service.offline.phantom.grid import Grid
from service.offline.phantom.spec import (
    CALIBRATION_DENSITIES_MG_CM3,
    CALIBRATION_HEIGHT_MM,
    CALIBRATION_ROD_PITCH_MM,
    CALIBRATION_ROD_RADIUS_MM,
    PhantomSpec,
)

V = VertebraLevel
BoneIsland = tuple[VertebraLevel, tuple[float, float, float], float]
"""(level, centre (LPS, mm), radius (mm)) of a sclerotic bone island."""


def _level_extent(anat: Anatomy, level: VertebraLevel) -> tuple[float, float]:
    vg = anat.vertebrae[level]
    return float(vg.centre[2] - vg.height_mm / 2), float(vg.centre[2] + vg.height_mm / 2)


def z_range_mm(spec: PhantomSpec, anat: Anatomy, rng: np.random.Generator) -> tuple[float, float]:
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


def acquisition_grid(spec: PhantomSpec, anat: Anatomy, rng: np.random.Generator, z_range: tuple[float, float],
                     spacing_mm: tuple[float, float, float] | None,
                     shape: tuple[int, int, int] | None) -> tuple[Grid, tuple[float, float]]:
    """The grid of the spec (or of ``spacing_mm`` / ``shape``) over ``z_range`` and the (x, y) offset of its centre
    from the patient centre (drawn when the spec leaves it None)."""
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
        yc = min(max(yc, cal_bottom - reach), _spine_in_field_max_yc(anat, z_range, xc, half))
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


def _spine_in_field_max_yc(anat: Anatomy, z_range: tuple[float, float], xc: float, radius_mm: float) -> float:
    """The most posterior field centre (y, mm) that keeps the anterior corners of every vertebral body in ``z_range``
    inside the reconstruction circle. The rods may pull the field down, never the spine out of it: a radiographer
    centres the reconstruction on the anatomy, and an obese patient under a 26 cm field otherwise lost T12-L5 off
    its anterior edge (s18 case_03, case_13, case_53)."""
    bound = math.inf
    for vg in anat.vertebrae.values():
        if not z_range[0] <= vg.centre[2] <= z_range[1]:
            continue
        for side in (-1.0, 1.0):
            corner = vg.centre + side * vg.frame[0] * vg.width_mm / 2 - vg.frame[1] * vg.depth_mm / 2
            dx = float(corner[0]) - xc
            if abs(dx) < radius_mm:
                bound = min(bound, float(corner[1]) + math.sqrt(radius_mm**2 - dx**2))
    return bound


@dataclass(frozen=True)
class CalibrationSetup:
    """The QCT calibration phantom under the patient (if any) and the table height it leaves."""

    truth: dict[str, Any] | None
    """The truth.json ``calibration_phantom`` entry; None without a phantom."""
    rods: tuple[tuple[float, float, float, float], ...]
    """(x, y, radius, hu) of each rod."""
    box: tuple[float, float, float, float] | None
    """(x0, x1, y0, y1) of the phantom body."""
    z_mm: tuple[float, float]
    table_y_mm: float


def calibration_setup(spec: PhantomSpec, anat: Anatomy, z_range: tuple[float, float], beam: physics.Beam,
                      scanner: physics.Scanner) -> CalibrationSetup:
    """Rods along z under the back (centred on L1, or T8 for a chest), the table below them (or below the back).

    Rod HU come from the rod material in ``beam`` (density.rod_hu); the painted value is before the scanner's gain and
    offset (applied to the whole canvas), the truth's ``hu`` after them."""
    zz = np.linspace(z_range[0], z_range[1], 50)
    back_max = float(np.max(anat.torso.at(zz, "back_y")))
    if spec.calibration_phantom is None:
        return CalibrationSetup(truth=None, rods=(), box=None, z_mm=(0.0, 0.0), table_y_mm=back_max + 1.0)
    n = len(CALIBRATION_DENSITIES_MG_CM3)
    y0 = back_max + 1.0
    y1 = y0 + CALIBRATION_HEIGHT_MM
    xs = [(k - (n - 1) / 2) * CALIBRATION_ROD_PITCH_MM for k in range(n)]
    anchor = V.L1 if spec.region != "chest" else V.T8
    zc = float(anat.vertebrae[anchor].centre[2])
    cal_z = (max(zc - 90.0, z_range[0] - 5.0), min(zc + 90.0, z_range[1] + 5.0))
    rod_specs: list[tuple[float, float, float, float]] = []
    rods = []
    for k, (x, dens) in enumerate(zip(xs, CALIBRATION_DENSITIES_MG_CM3, strict=True)):
        hu = density.rod_hu(dens, spec.calibration_phantom, spec.kvp, beam.water_path_cm)
        rod_specs.append((x, (y0 + y1) / 2, CALIBRATION_ROD_RADIUS_MM, hu))
        rods.append({"label": L.CALIBRATION_ROD_BASE + k, "density_mg_cm3": dens,
                     "hu": round(scanner.apply(hu), 2),
                     "centre_lps_mm": [round(x, 2), round((y0 + y1) / 2, 2)],
                     "z_range_mm": [round(cal_z[0], 2), round(cal_z[1], 2)],
                     "radius_mm": CALIBRATION_ROD_RADIUS_MM})
    k2hpo4 = spec.calibration_phantom == "k2hpo4"
    truth = {"material": spec.calibration_phantom, "body_label": L.CALIBRATION_BODY, "rods": rods,
             "k2hpo4_mg_per_declared_mg": round(density.K2HPO4_MG_PER_HA_MG, 5) if k2hpo4 else None,
             "note": "rods run along z; centre_lps_mm is (x, y); HU of the noise-free rod"}
    return CalibrationSetup(truth=truth, rods=tuple(rod_specs), box=(xs[0] - 30.0, xs[-1] + 30.0, y0, y1),
                            z_mm=cal_z, table_y_mm=y1 + 1.0)


def bone_island(spec: PhantomSpec, anat: Anatomy, rng: np.random.Generator) -> BoneIsland | None:
    """A sclerotic island (3-6 mm radius) somewhere in the body of ``spec.bone_island_level``; None without one."""
    if spec.bone_island_level is None:
        return None
    vg = anat.vertebrae[spec.bone_island_level]
    radius = float(rng.uniform(3.0, 6.0))
    local = (float(rng.uniform(-0.2, 0.2)) * vg.width_mm, float(rng.uniform(-0.15, 0.15)) * vg.depth_mm,
             float(rng.uniform(-0.1, 0.1)) * vg.height_mm)
    return spec.bone_island_level, tuple(float(v) for v in vg.to_world(*local)), radius  # type: ignore[return-value]
