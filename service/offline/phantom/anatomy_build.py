"""Draw the anatomy of one phantom patient: vertebral sizes and curvature, the spine's centre line, vertebrae,
sacrum, then the torso and ribs (anatomy_torso) and the organ positions.

Sizes: vertebral bodies from the morphometric literature (Panjabi 1991/1992: lumbar bodies 40-50 mm wide,
25-30 mm high; thoracic bodies 27-40 mm wide), discs 4-7 mm thoracic, 9-12 mm lumbar.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from service.domain.levels import VertebraLevel
from service.offline.phantom.anatomy import (
    Anatomy,
    AnatomyOptions,
    Torso,
    VertebraGeom,
    frame_from_tangent,
    unit_vector,
)
from service.offline.phantom.anatomy_torso import build_ribs, build_torso
from service.offline.phantom.density import CORTICAL_MINERAL_RANGE_MG_CM3

V = VertebraLevel

# (body width, depth, height, disc height below) in mm for an average adult (scaled per patient).
BODY_SIZE_MM: dict[VertebraLevel, tuple[float, float, float, float]] = {
    V.C7: (26.0, 17.0, 14.0, 5.0),
    V.T1: (27.0, 17.0, 15.0, 4.0),
    V.T2: (28.0, 18.0, 16.0, 4.0),
    V.T3: (28.0, 19.0, 16.5, 4.0),
    V.T4: (28.5, 21.0, 17.0, 4.5),
    V.T5: (29.0, 23.0, 17.5, 4.5),
    V.T6: (30.0, 25.0, 18.0, 5.0),
    V.T7: (31.0, 27.0, 19.0, 5.0),
    V.T8: (32.0, 28.0, 19.5, 5.5),
    V.T9: (34.0, 29.0, 20.0, 6.0),
    V.T10: (36.0, 30.0, 21.0, 6.5),
    V.T11: (38.0, 31.0, 22.0, 7.0),
    V.T12: (40.0, 31.0, 23.0, 8.0),
    V.L1: (42.0, 32.0, 25.0, 9.0),
    V.L2: (44.0, 33.0, 26.0, 10.0),
    V.L3: (46.0, 34.0, 27.0, 11.0),
    V.L4: (48.0, 34.0, 27.0, 11.0),
    V.L5: (50.0, 34.0, 26.0, 11.0),
    V.S1: (48.0, 32.0, 26.0, 0.0),
}
# Tangent angle from vertical when moving caudally (deg; positive = the spine runs posteriorly going down).
# Gives thoracic kyphosis T4-T12 ~ 33 deg and lumbar lordosis L1-S1 ~ 55 deg at scale 1.
THETA_DEG: dict[VertebraLevel, float] = {
    V.C7: 18.0, V.T1: 22.0, V.T2: 20.0, V.T3: 18.0, V.T4: 15.0, V.T5: 10.0, V.T6: 5.0, V.T7: 0.0,
    V.T8: -5.0, V.T9: -9.0, V.T10: -14.0, V.T11: -16.0, V.T12: -18.0, V.L1: -17.0, V.L2: -12.0,
    V.L3: -3.0, V.L4: 8.0, V.L5: 20.0, V.S1: 38.0,
}
# sacral segments below S1: (width, depth, height) and tangent angle
SACRAL_SEGMENTS: tuple[tuple[float, float, float, float], ...] = (
    (40.0, 26.0, 22.0, 45.0),
    (32.0, 22.0, 18.0, 40.0),
    (25.0, 18.0, 15.0, 25.0),
    (18.0, 14.0, 12.0, 10.0),
    (11.0, 10.0, 10.0, -10.0),
    (8.0, 8.0, 10.0, -20.0),
)

Dims = dict[VertebraLevel, tuple[float, float, float, float]]
"""(body width, depth, height, disc height below) in mm per level."""


def build_anatomy(rng: np.random.Generator, opts: AnatomyOptions) -> Anatomy:
    """Draw the anatomy of one patient."""
    size = float(rng.normal(1.0, 0.06)) * (1.05 if opts.sex == "M" else 1.0)
    kyph = opts.curvature_scale * float(rng.uniform(0.75, 1.25))
    lord = opts.curvature_scale * float(rng.uniform(0.75, 1.25))
    dims = _body_dims(rng, opts, size)
    theta = _tangent_angles(opts, dims, kyph, lord)
    line = _centre_line(rng, opts, dims, theta, size)
    vertebrae = _vertebrae(rng, opts, dims, line, size)
    sacral = _sacral_segments(opts, line, size)
    torso = build_torso(rng, opts, vertebrae, line.s_fine, line.x_fine, line.y_fine + line.y0,
                        line.z_fine + line.z0, size)
    extras = {"size_factor": size, "kyphosis_scale": kyph, "lordosis_scale": lord, "scoliosis_amp_mm": line.amp}
    return _with_organs(rng, opts, vertebrae, sacral, torso, size, extras)


def _body_dims(rng: np.random.Generator, opts: AnatomyOptions, size: float) -> Dims:
    """Per-level body and disc sizes: the average adult scaled by ``size`` with a few % jitter each."""
    dims: Dims = {}
    for lv in BODY_SIZE_MM:
        w, d, h, disc = BODY_SIZE_MM[lv]
        j = rng.normal(1.0, 0.03, size=3)
        disc_scale = float(rng.uniform(0.75, 1.2)) * (float(rng.uniform(0.5, 0.9)) if opts.osteophytes else 1.0)
        dims[lv] = (w * size * j[0], d * size * j[1], h * size * j[2], disc * size * disc_scale)
    if opts.lumbar_variant == "lumbarised_s1":
        w, d, h, _ = dims[V.L5]
        dims[V.S1] = (w * 0.98, d * 0.98, h * 0.96, 8.0 * size)
    if opts.lumbar_variant == "sacralised_l5":
        w, d, h, _ = dims[V.L5]
        dims[V.L5] = (w, d, h * 0.95, 3.0 * size)  # rudimentary L5/S1 disc
    return dims


def _tangent_angles(opts: AnatomyOptions, dims: Dims, kyph: float, lord: float) -> dict[VertebraLevel, float]:
    """Tangent angle (deg) of each level: kyphosis and lordosis scaled, transitional vertebrae, wedge fractures."""
    theta = {}
    for lv in BODY_SIZE_MM:
        base = THETA_DEG[lv]
        if lv <= V.T12:
            theta[lv] = base * kyph if lv >= V.T1 else base
        else:
            theta[lv] = base * lord if lv <= V.L5 else base
    if opts.lumbar_variant == "lumbarised_s1":
        theta[V.L5] = 12.0 * lord
        theta[V.S1] = 26.0
    if opts.lumbar_variant == "sacralised_l5":
        theta[V.L5] = 30.0
        theta[V.S1] = 40.0
    for lv, fr in opts.fractures.items():
        if fr.kind == "wedge":  # local kyphosis at a wedge fracture
            theta[lv] = theta[lv] - np.rad2deg(np.arctan(fr.height_loss * dims[lv][2] / dims[lv][1])) * 0.5
    return theta


@dataclass(frozen=True, eq=False)
class CentreLine:
    """The spine's centre line, sampled every 0.5 mm of arc length s from C7 down (x lateral, y AP, z axial)."""

    s_levels: npt.NDArray[np.float64]
    """Arc length of each level centre (C7..S1)."""
    s_sacral: list[float]
    """Arc length of each sacral segment below S1."""
    s_fine: npt.NDArray[np.float64]
    x_fine: npt.NDArray[np.float64]
    y_fine: npt.NDArray[np.float64]
    z_fine: npt.NDArray[np.float64]
    y0: float
    z0: float
    s_t1: float
    span: float
    """Arc length T1..L5 (the scoliosis span)."""
    amp: float
    """Lateral amplitude (mm, signed) of the scoliosis."""

    def point(self, s: float) -> npt.NDArray[np.float64]:
        return np.array([np.interp(s, self.s_fine, self.x_fine), np.interp(s, self.s_fine, self.y_fine) + self.y0,
                         np.interp(s, self.s_fine, self.z_fine) + self.z0])

    def tangent_up(self, s: float) -> npt.NDArray[np.float64]:
        return unit_vector(self.point(s - 1.0) - self.point(s + 1.0))


def _centre_line(rng: np.random.Generator, opts: AnatomyOptions, dims: Dims, theta: dict[VertebraLevel, float],
                 size: float) -> CentreLine:
    levels = list(BODY_SIZE_MM)
    # arc-length position of each level centre (fractures shorten the column)
    eff_h = {}
    for lv in levels:
        fr = opts.fractures.get(lv)
        mean_loss = 0.0 if fr is None else (fr.height_loss * (0.5 if fr.kind != "crush" else 1.0))
        eff_h[lv] = dims[lv][2] * (1.0 - mean_loss)
    s_levels = [0.0]
    for a, b in itertools.pairwise(levels):
        s_levels.append(s_levels[-1] + eff_h[a] / 2 + dims[a][3] + eff_h[b] / 2)
    s_arr = np.array(s_levels)
    th_arr = np.deg2rad([theta[lv] for lv in levels])

    # sacral segments continue below S1
    s_sac = []
    prev_h = eff_h[V.S1]
    s_cur = s_arr[-1]
    extra_disc = 4.0 if opts.lumbar_variant == "lumbarised_s1" else 0.0
    for idx, (_w, _d, h, _th) in enumerate(SACRAL_SEGMENTS):
        s_cur = s_cur + prev_h / 2 + (extra_disc if idx == 0 else 0.0) + h * size / 2
        s_sac.append(s_cur)
        prev_h = h * size
    s_all = np.concatenate([s_arr, s_sac])
    th_all = np.concatenate([th_arr, np.deg2rad([d[3] for d in SACRAL_SEGMENTS])])

    # scoliosis: lateral sine offset over T1..L5 with the requested Cobb angle
    s_t1, s_l5 = s_arr[levels.index(V.T1)], s_arr[levels.index(V.L5)]
    span = s_l5 - s_t1
    amp = span * np.tan(np.deg2rad(opts.scoliosis_deg) / 2) / np.pi if opts.scoliosis_deg else 0.0
    amp *= 1 if rng.random() < 0.5 else -1

    ds = 0.5
    s_fine = np.arange(0.0, s_all[-1] + 20.0, ds)
    th_fine = np.interp(s_fine, s_all, th_all)
    y_fine = np.concatenate([[0.0], np.cumsum(np.sin(th_fine[:-1]) * ds)])
    z_fine = np.concatenate([[0.0], np.cumsum(-np.cos(th_fine[:-1]) * ds)])
    x_fine = amp * np.sin(np.pi * np.clip((s_fine - s_t1) / span, 0.0, 1.0))
    y0 = float(rng.uniform(-40.0, 40.0))
    z0 = float(rng.uniform(-150.0, 250.0))
    return CentreLine(s_levels=s_arr, s_sacral=s_sac, s_fine=s_fine, x_fine=x_fine, y_fine=y_fine, z_fine=z_fine,
                      y0=y0, z0=z0, s_t1=s_t1, span=span, amp=amp)


def _vertebrae(rng: np.random.Generator, opts: AnatomyOptions, dims: Dims, line: CentreLine,
               size: float) -> dict[VertebraLevel, VertebraGeom]:
    """Geometry of every level C7..S1 along the centre line (rotated with the scoliosis)."""
    rot_amp = float(opts.scoliosis_deg) * 0.4 * np.sign(line.amp) if line.amp else 0.0
    vertebrae: dict[VertebraLevel, VertebraGeom] = {}
    cortical = float(rng.uniform(0.6, 1.0))
    for lv, s in zip(BODY_SIZE_MM, line.s_levels, strict=True):
        w, d, h, disc = dims[lv]
        u = np.clip((s - line.s_t1) / line.span, 0.0, 1.0)
        frame = frame_from_tangent(line.tangent_up(s), rot_amp * np.sin(np.pi * u) + float(rng.normal(0, 1.5)))
        kind = lv.region
        if lv == V.S1:
            kind = "lumbar" if opts.lumbar_variant == "lumbarised_s1" else "sacral"
        if lv == V.L5 and opts.lumbar_variant == "sacralised_l5":
            kind = "sacralised"
        lumbar_like = kind in ("lumbar", "sacralised")
        tl = {V.C7: 18.0, V.T1: 24.0, V.T11: 14.0, V.T12: 9.0, V.L1: 16.0, V.L2: 20.0, V.L3: 26.0, V.L4: 22.0,
              V.L5: 20.0}.get(lv, 22.0)
        vertebrae[lv] = VertebraGeom(
            level=lv,
            centre=line.point(s),
            frame=frame,
            width_mm=w,
            depth_mm=d,
            height_mm=h,
            disc_below_mm=disc,
            cortical_mm=cortical * float(rng.uniform(0.9, 1.1)),
            endplate_concavity_mm=float(rng.uniform(0.6, 1.8)),
            waist=float(rng.uniform(0.03, 0.09)),
            osteophyte_mm=float(rng.uniform(1.0, 5.0)) if opts.osteophytes and lv >= V.T6 else 0.0,
            fracture=opts.fractures.get(lv),
            kind=kind,
            canal_width_mm=(22.0 if lumbar_like else 17.0 if kind == "thoracic" else 24.0) * size,
            canal_depth_mm=(17.0 if lumbar_like else 15.0) * size,
            pedicle_radius_mm=(5.0 if lumbar_like else 3.5) * size * float(rng.uniform(0.9, 1.1)),
            pedicle_length_mm=(10.0 if lumbar_like else 8.0) * size,
            transverse_length_mm=tl * size * float(rng.uniform(0.85, 1.15)) * (1.6 if kind == "sacralised" else 1.0),
            transverse_angle_deg=(8.0 if lumbar_like else 35.0),
            spinous_length_mm=(30.0 if lumbar_like else 40.0 if kind == "thoracic" else 35.0) * size,
            spinous_angle_deg=(8.0 if lumbar_like else 20.0 if lv in (V.C7, V.T1, V.T2) else 50.0 if lv < V.T11
                               else 30.0),
        )
    return vertebrae


def _sacral_segments(opts: AnatomyOptions, line: CentreLine, size: float
                     ) -> list[tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], float, float, float]]:
    sacral = []
    first = 1 if opts.lumbar_variant == "lumbarised_s1" else 0
    for idx, s in enumerate(line.s_sacral):
        w, d, h, _ = SACRAL_SEGMENTS[idx]
        sc = size * (1.08 if idx < first + 1 else 1.0)
        sacral.append((line.point(s), frame_from_tangent(line.tangent_up(s)), w * sc, d * sc, h * size))
    return sacral


def _with_organs(rng: np.random.Generator, opts: AnatomyOptions, vertebrae: dict[VertebraLevel, VertebraGeom],
                 sacral: list[tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], float, float, float]],
                 torso: Torso, size: float, extras: dict[str, float]) -> Anatomy:
    """The anatomy with the diaphragm, lung apex, ribs and sternum, heart, liver and kidney shifts drawn."""
    dome_r = float(vertebrae[V.T10].centre[2] + rng.uniform(-10.0, 25.0))
    dome_l = dome_r - float(rng.uniform(8.0, 25.0))
    apex = float(vertebrae[V.T1].centre[2] + rng.uniform(8.0, 25.0))
    ribs, sternum_path, sternum_w = build_ribs(rng, opts, vertebrae, torso, size)
    cav_ant = float(torso.at(dome_l + 40, "front_y")) + torso.subcut_fat_mm + torso.wall_muscle_mm
    heart_centre = np.array([
        float(rng.uniform(10.0, 35.0)),
        cav_ant + float(rng.uniform(55.0, 70.0)),
        dome_l + float(rng.uniform(45.0, 62.0)),
    ])
    heart_axes = (float(rng.uniform(55.0, 70.0)) * size, float(rng.uniform(42.0, 52.0)) * size,
                  float(rng.uniform(45.0, 58.0)) * size)
    return Anatomy(
        vertebrae=vertebrae,
        sacral_segments=sacral,
        ribs=ribs,
        torso=torso,
        diaphragm_right_z=dome_r,
        diaphragm_left_z=dome_l,
        lung_apex_z=apex,
        heart_centre=heart_centre,
        heart_axes_mm=heart_axes,
        sternum_path=sternum_path,
        sternum_width_mm=sternum_w,
        liver_shift=(float(rng.normal(0, 8)), float(rng.normal(0, 8)), float(rng.normal(0, 10))),
        kidney_shift_mm=float(rng.normal(0, 10)),
        arms_in_fov=opts.arms_in_fov,
        osteophytes=opts.osteophytes,
        cortical_mineral_mg_cm3=float(rng.uniform(*CORTICAL_MINERAL_RANGE_MG_CM3)),
        lumbar_variant=opts.lumbar_variant,
        extras={**extras, "breast_size": float(rng.uniform(0.3, 1.3)) if opts.sex == "F" else 0.0},
    )
