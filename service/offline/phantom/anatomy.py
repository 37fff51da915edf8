"""Random anatomy of one phantom patient: spine, ribs, torso outline, organs (parameters only, no voxels).

Coordinates are DICOM patient coordinates (LPS, mm): x to the patient's left, y posterior, z superior.
Sizes: vertebral bodies from the morphometric literature (Panjabi 1991/1992: lumbar bodies 40-50 mm wide,
25-30 mm high; thoracic bodies 27-40 mm wide), discs 4-7 mm thoracic, 9-12 mm lumbar.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from service.domain.levels import VertebraLevel

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

FRACTURE_TYPES = ("wedge", "biconcave", "crush")


@dataclass(frozen=True)
class Fracture:
    kind: str
    """'wedge' (anterior height loss), 'biconcave' (middle) or 'crush' (uniform)."""
    height_loss: float
    """Fraction 0.2-0.5 of the normal height lost at the most affected point."""

    def loss_at(self, b_norm: npt.NDArray[np.float32], r_norm: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Fraction of height lost at normalised AP position b (-1 anterior .. +1 posterior) and radius r."""
        if self.kind == "wedge":
            return np.float32(self.height_loss) * np.clip((1.0 - b_norm) / 2.0, 0.0, 1.0) ** 1.2
        if self.kind == "biconcave":
            return np.float32(self.height_loss) * np.clip(1.0 - r_norm**2, 0.0, 1.0)
        return np.float32(self.height_loss) * np.ones_like(b_norm)


@dataclass(frozen=True, eq=False)
class VertebraGeom:
    level: VertebraLevel
    centre: npt.NDArray[np.float64]
    frame: npt.NDArray[np.float64]
    """Rows: lateral (to patient left), AP (posterior), axial (superior) unit vectors."""
    width_mm: float
    depth_mm: float
    height_mm: float
    disc_below_mm: float
    cortical_mm: float
    endplate_concavity_mm: float
    waist: float
    osteophyte_mm: float
    fracture: Fracture | None
    kind: str
    """'cervical', 'thoracic', 'lumbar', 'sacral' (S1 fused into the sacrum) or 'sacralised' (L5 fused)."""
    canal_width_mm: float
    canal_depth_mm: float
    pedicle_radius_mm: float
    pedicle_length_mm: float
    transverse_length_mm: float
    transverse_angle_deg: float
    spinous_length_mm: float
    spinous_angle_deg: float

    def to_world(self, a: float, b: float, c: float) -> npt.NDArray[np.float64]:
        return self.centre + a * self.frame[0] + b * self.frame[1] + c * self.frame[2]


@dataclass(frozen=True, eq=False)
class RibGeom:
    side: str
    number: int
    level: VertebraLevel
    path: npt.NDArray[np.float64]
    """(n, 3) centreline points from the head to the anterior bony end."""
    cartilage: npt.NDArray[np.float64] | None
    """(m, 3) costal cartilage centreline from the bony end towards the sternum, or None."""
    radius_mm: float
    z_scale: float


@dataclass(frozen=True, eq=False)
class Torso:
    """Torso outline and cavities as smooth functions of z (sampled on ``z_mm``)."""

    z_mm: npt.NDArray[np.float64]
    spine_y: npt.NDArray[np.float64]
    """AP position of the vertebral-body centre line at each z."""
    spine_x: npt.NDArray[np.float64]
    half_width: npt.NDArray[np.float64]
    """Skin: lateral semi-axis."""
    front_y: npt.NDArray[np.float64]
    back_y: npt.NDArray[np.float64]
    subcut_fat_mm: float
    wall_muscle_mm: float
    back_muscle_mm: float
    exponent: float
    """Superellipse exponent of the skin outline (2 = ellipse, larger = boxier)."""
    cage_half_width: npt.NDArray[np.float64]
    """Lateral semi-axis limit of the thoracic cage (cone-shaped towards the apex; large below mid-thorax)."""
    cage_half_depth: npt.NDArray[np.float64]
    """AP semi-axis limit of the thoracic cage."""

    def at(self, z: npt.ArrayLike, name: str) -> npt.NDArray[np.float64]:
        return np.interp(np.asarray(z, dtype=np.float64), self.z_mm, getattr(self, name))


@dataclass(frozen=True, eq=False)
class Anatomy:
    vertebrae: dict[VertebraLevel, VertebraGeom]
    sacral_segments: list[tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], float, float, float]]
    """(centre, frame, width, depth, height) of S2..coccyx (or S2.. after a lumbarised S1)."""
    ribs: list[RibGeom]
    torso: Torso
    diaphragm_right_z: float
    diaphragm_left_z: float
    lung_apex_z: float
    heart_centre: npt.NDArray[np.float64]
    heart_axes_mm: tuple[float, float, float]
    sternum_path: npt.NDArray[np.float64]
    sternum_width_mm: float
    liver_shift: tuple[float, float, float]
    kidney_shift_mm: float
    arms_in_fov: bool
    osteophytes: bool
    cortical_hu_120: float
    lumbar_variant: str
    extras: dict[str, float] = field(default_factory=dict)

    def level_z(self, level: VertebraLevel) -> float:
        return float(self.vertebrae[level].centre[2])


def _unit(v: npt.ArrayLike) -> npt.NDArray[np.float64]:
    a = np.asarray(v, dtype=np.float64)
    return a / np.linalg.norm(a)


def frame_from_tangent(t_up: npt.ArrayLike, rotation_deg: float = 0.0) -> npt.NDArray[np.float64]:
    """Rows (lateral, posterior, superior) with the superior axis along ``t_up`` and a rotation about it."""
    t = _unit(t_up)
    lat = np.array([1.0, 0.0, 0.0]) - t[0] * t
    lat = _unit(lat)
    ap = np.cross(t, lat)
    if rotation_deg:
        r = np.deg2rad(rotation_deg)
        lat, ap = np.cos(r) * lat + np.sin(r) * ap, -np.sin(r) * lat + np.cos(r) * ap
    return np.stack([lat, ap, t])


@dataclass(frozen=True)
class AnatomyOptions:
    rib_pairs: int = 12
    lumbar_variant: str = "normal"
    scoliosis_deg: float = 0.0
    fractures: dict[VertebraLevel, Fracture] = field(default_factory=dict)
    sex: str = "F"
    habitus: str = "average"
    curvature_scale: float = 1.0
    arms_in_fov: bool = False
    osteophytes: bool = False


def build_anatomy(rng: np.random.Generator, opts: AnatomyOptions) -> Anatomy:
    """Draw the anatomy of one patient."""
    size = float(rng.normal(1.0, 0.06)) * (1.05 if opts.sex == "M" else 1.0)
    levels = list(BODY_SIZE_MM)
    kyph = opts.curvature_scale * float(rng.uniform(0.75, 1.25))
    lord = opts.curvature_scale * float(rng.uniform(0.75, 1.25))

    dims: dict[VertebraLevel, tuple[float, float, float, float]] = {}
    for lv in levels:
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

    theta = {}
    for lv in levels:
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
    seg_defs = list(SACRAL_SEGMENTS)
    s_sac = []
    prev_h = eff_h[V.S1]
    s_cur = s_arr[-1]
    extra_disc = 4.0 if opts.lumbar_variant == "lumbarised_s1" else 0.0
    for idx, (_w, _d, h, _th) in enumerate(seg_defs):
        s_cur = s_cur + prev_h / 2 + (extra_disc if idx == 0 else 0.0) + h * size / 2
        s_sac.append(s_cur)
        prev_h = h * size
    s_all = np.concatenate([s_arr, s_sac])
    th_all = np.concatenate([th_arr, np.deg2rad([d[3] for d in seg_defs])])

    # scoliosis: lateral sine offset over T1..L5 with the requested Cobb angle
    s_t1, s_l5 = s_arr[levels.index(V.T1)], s_arr[levels.index(V.L5)]
    span = s_l5 - s_t1
    amp = span * np.tan(np.deg2rad(opts.scoliosis_deg) / 2) / np.pi if opts.scoliosis_deg else 0.0
    amp *= 1 if rng.random() < 0.5 else -1

    def x_of(s: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        u = np.clip((s - s_t1) / span, 0.0, 1.0)
        return amp * np.sin(np.pi * u)

    ds = 0.5
    s_fine = np.arange(0.0, s_all[-1] + 20.0, ds)
    th_fine = np.interp(s_fine, s_all, th_all)
    y_fine = np.concatenate([[0.0], np.cumsum(np.sin(th_fine[:-1]) * ds)])
    z_fine = np.concatenate([[0.0], np.cumsum(-np.cos(th_fine[:-1]) * ds)])
    x_fine = x_of(s_fine)
    y0 = float(rng.uniform(-40.0, 40.0))
    z0 = float(rng.uniform(-150.0, 250.0))

    def point(s: float) -> npt.NDArray[np.float64]:
        return np.array([np.interp(s, s_fine, x_fine), np.interp(s, s_fine, y_fine) + y0,
                         np.interp(s, s_fine, z_fine) + z0])

    def tangent_up(s: float) -> npt.NDArray[np.float64]:
        return _unit(point(s - 1.0) - point(s + 1.0))

    rot_amp = float(opts.scoliosis_deg) * 0.4 * np.sign(amp) if amp else 0.0
    vertebrae: dict[VertebraLevel, VertebraGeom] = {}
    cortical = float(rng.uniform(0.6, 1.0))
    for lv, s in zip(levels, s_arr, strict=True):
        w, d, h, disc = dims[lv]
        u = np.clip((s - s_t1) / span, 0.0, 1.0)
        frame = frame_from_tangent(tangent_up(s), rot_amp * np.sin(np.pi * u) + float(rng.normal(0, 1.5)))
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
            centre=point(s),
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
    sacral = []
    first = 1 if opts.lumbar_variant == "lumbarised_s1" else 0
    for idx, s in enumerate(s_sac):
        w, d, h, _ = seg_defs[idx]
        sc = size * (1.08 if idx < first + 1 else 1.0)
        sacral.append((point(s), frame_from_tangent(tangent_up(s)), w * sc, d * sc, h * size))

    torso = _build_torso(rng, opts, vertebrae, s_fine, x_fine, y_fine + y0, z_fine + z0, size)
    t = {lv: vertebrae[lv] for lv in vertebrae}
    dome_r = float(t[V.T10].centre[2] + rng.uniform(-10.0, 25.0))
    dome_l = dome_r - float(rng.uniform(8.0, 25.0))
    apex = float(t[V.T1].centre[2] + rng.uniform(8.0, 25.0))

    ribs, sternum_path, sternum_w = _build_ribs(rng, opts, vertebrae, torso, size)
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
        cortical_hu_120=float(rng.uniform(700.0, 1100.0)),
        lumbar_variant=opts.lumbar_variant,
        extras={"size_factor": size, "kyphosis_scale": kyph, "lordosis_scale": lord, "scoliosis_amp_mm": amp,
                "breast_size": float(rng.uniform(0.3, 1.3)) if opts.sex == "F" else 0.0},
    )


HABITUS = {
    # half-width chest (mm), AP depth factor, subcutaneous fat (mm), abdomen width factor
    "slim": ((120.0, 150.0), (0.68, 0.85), (3.0, 10.0), (0.92, 1.0)),
    "average": ((140.0, 170.0), (0.66, 0.80), (8.0, 22.0), (0.98, 1.08)),
    "obese": ((165.0, 200.0), (0.70, 0.85), (22.0, 45.0), (1.05, 1.2)),
}


def _build_torso(
    rng: np.random.Generator,
    opts: AnatomyOptions,
    vertebrae: dict[VertebraLevel, VertebraGeom],
    s_fine: npt.NDArray[np.float64],
    x_fine: npt.NDArray[np.float64],
    y_fine: npt.NDArray[np.float64],
    z_fine: npt.NDArray[np.float64],
    size: float,
) -> Torso:
    hw_range, ap_range, fat_range, abd_range = HABITUS[opts.habitus]
    half_width = float(rng.uniform(*hw_range)) * size
    ap_factor = float(rng.uniform(*ap_range))
    fat = float(rng.uniform(*fat_range))
    abd = float(rng.uniform(*abd_range))
    wall = float(rng.uniform(8.0, 18.0))
    back = float(rng.uniform(4.0, 20.0)) * size
    order = np.argsort(z_fine)
    zs = z_fine[order]
    ys = y_fine[order]
    xs = x_fine[order]
    z_grid = np.arange(zs[0] - 150.0, zs[-1] + 120.0, 2.0)
    spine_y = np.interp(z_grid, zs, ys)
    spine_x = np.interp(z_grid, zs, xs)
    depth = np.interp(z_grid, [vertebrae[lv].centre[2] for lv in reversed(list(vertebrae))],
                      [vertebrae[lv].depth_mm for lv in reversed(list(vertebrae))])
    z_t1 = vertebrae[V.T1].centre[2]
    z_t12 = vertebrae[V.T12].centre[2]
    z_l4 = vertebrae[V.L4].centre[2]
    # posterior skin: behind the vertebral body by half depth + posterior elements + back muscles + fat
    back_y = spine_y + depth / 2 + 45.0 * size + back + fat
    # smooth the back (the skin does not follow the whole spinal curvature)
    k = np.ones(25) / 25
    back_y = np.convolve(np.pad(back_y, 12, mode="edge"), k, mode="valid")
    # lateral half-width along z: chest, narrower waist, hips; shoulders at the top
    hw = np.interp(
        z_grid,
        [z_l4 - 120, z_l4 - 30, z_l4 + 10, z_t12 - 40, z_t12, z_t1 - 80, z_t1 - 10, z_t1 + 30, z_t1 + 80],
        [1.12 * abd, 1.1 * abd, 1.0 * abd, 0.97 * abd, 1.0, 1.02, 1.05, 1.12, 0.55],
    ) * half_width
    ap_total = 2.0 * half_width * ap_factor
    ap = np.interp(z_grid, [z_l4 - 100, z_l4, z_t12, z_t1 - 60, z_t1, z_t1 + 60],
                   [0.9, 0.95 * abd, 1.0, 1.0, 0.85, 0.55]) * ap_total
    front_y = back_y - ap
    # thoracic cage: a cone narrowing towards the first rib (T1 about 45 % of the mid-thoracic width)
    inset = fat + wall
    z_t8 = vertebrae[V.T8].centre[2]
    lv = [V.C7, V.T1, V.T2, V.T3, V.T4, V.T5, V.T6, V.T7, V.T8]
    lz = [vertebrae[x].centre[2] for x in reversed(lv)]
    w_factor = np.interp(z_grid, lz, [1.0, 0.97, 0.92, 0.85, 0.76, 0.66, 0.55, 0.45, 0.38])
    d_factor = np.interp(z_grid, lz, [1.0, 0.99, 0.96, 0.92, 0.86, 0.78, 0.68, 0.58, 0.5])
    hw_t8 = float(np.interp(z_t8, z_grid, hw)) - inset
    post_t8 = float(np.interp(z_t8, z_grid, spine_y)) + 38.0
    front_t8 = float(np.interp(z_t8, z_grid, front_y)) + inset
    cage_hw = np.where(z_grid > z_t8, hw_t8 * w_factor, 1e4)
    cage_hd = np.where(z_grid > z_t8, (post_t8 - front_t8) / 2 * d_factor, 1e4)
    return Torso(
        z_mm=z_grid,
        spine_y=spine_y,
        spine_x=spine_x,
        half_width=hw,
        front_y=front_y,
        back_y=back_y,
        subcut_fat_mm=fat,
        wall_muscle_mm=wall,
        back_muscle_mm=back,
        exponent=float(rng.uniform(2.0, 2.8)),
        cage_half_width=cage_hw,
        cage_half_depth=cage_hd,
    )


def cavity(torso: Torso, z: npt.ArrayLike) -> tuple[npt.NDArray[np.float64], ...]:
    """Inner (thoracic/abdominal) cavity ellipse at z: centre x, centre y, lateral and AP semi-axes."""
    z = np.asarray(z, dtype=np.float64)
    inset = torso.subcut_fat_mm + torso.wall_muscle_mm
    hw = np.minimum(torso.at(z, "half_width") - inset, torso.at(z, "cage_half_width"))
    post = torso.at(z, "spine_y") + 38.0
    front = np.maximum(torso.at(z, "front_y") + inset, post - 2.0 * torso.at(z, "cage_half_depth"))
    cx = torso.at(z, "spine_x") * 0.5
    return cx, (front + post) / 2, np.maximum(hw, 20.0), np.maximum((post - front) / 2, 20.0)


def _build_ribs(
    rng: np.random.Generator,
    opts: AnatomyOptions,
    vertebrae: dict[VertebraLevel, VertebraGeom],
    torso: Torso,
    size: float,
) -> tuple[list[RibGeom], npt.NDArray[np.float64], float]:
    n_pairs = opts.rib_pairs
    ribs: list[RibGeom] = []
    # sternum: from the manubrium (at the level of the 2nd thoracic body - 15 mm) down ~ 160 mm
    z_top = float(vertebrae[V.T2].centre[2] - rng.uniform(5.0, 25.0))
    length = float(rng.uniform(140.0, 180.0)) * size
    zs = np.linspace(z_top, z_top - length, 12)
    ys = cavity(torso, zs)[1] - cavity(torso, zs)[3] - 7.0
    xs = torso.at(zs, "spine_x") * 0.3
    sternum = np.stack([xs, ys, zs], axis=1)
    sternum_w = float(rng.uniform(26.0, 36.0)) * size
    drop_scale = float(rng.uniform(0.8, 1.2))
    for number in range(1, n_pairs + 1):
        level = VertebraLevel(int(V.T1) + number - 1)
        vg = vertebrae[level]
        for side, sgn in (("left", 1.0), ("right", -1.0)):
            head = vg.to_world(sgn * (vg.width_mm / 2 + 1.0), 0.2 * vg.depth_mm, 0.35 * vg.height_mm)
            pa = vg.canal_width_mm / 2 + vg.pedicle_radius_mm
            ang = np.deg2rad(vg.transverse_angle_deg)
            tub_local = (sgn * (pa + vg.transverse_length_mm * np.cos(ang) * 0.9),
                         vg.depth_mm / 2 + vg.pedicle_length_mm + vg.transverse_length_mm * np.sin(ang) * 0.9 - 6.0,
                         0.1 * vg.height_mm)
            tub = vg.to_world(*tub_local)
            # bony length as the fraction of the half-circumference reached
            end_frac = {1: 0.86, 2: 0.84, 3: 0.82, 4: 0.80, 5: 0.80, 6: 0.79, 7: 0.78, 8: 0.74, 9: 0.72,
                        10: 0.68, 11: 0.52, 12: 0.38, 13: 0.28}[number] * float(rng.uniform(0.95, 1.05))
            drop = {1: 30.0, 2: 50.0, 3: 70.0, 4: 85.0, 5: 95.0, 6: 100.0, 7: 105.0, 8: 105.0, 9: 100.0,
                    10: 90.0, 11: 55.0, 12: 40.0, 13: 30.0}[number] * drop_scale * size
            phis = np.linspace(0.0, 1.0, 40)
            pts = []
            x_tub = abs(tub[0] - vg.centre[0])
            for u in phis:
                z = tub[2] + 6.0 * np.sin(np.pi * min(u * 4, 1.0)) - drop * u**1.4
                cx, cy, ax, by = (float(v) for v in cavity(torso, z))
                ax_r = ax + 4.0
                phi0 = np.arcsin(np.clip(x_tub / ax_r, 0.0, 0.95))
                phi = phi0 + (np.pi * end_frac - phi0) * u
                x = cx + sgn * ax_r * np.sin(phi)
                y = cy + (by + 6.0) * np.cos(phi)
                pts.append((x, y, z))
            path = np.vstack([head, tub, np.array(pts)[1:]])
            # blend the first cage point towards the tubercle to avoid a kink
            cartilage = None
            if number <= 10:
                end = path[-1]
                if number <= 7:
                    target_z = np.interp(number, [1, 7], [sternum[0, 2] - 5.0, sternum[-1, 2] + 20.0])
                    k = int(np.argmin(np.abs(sternum[:, 2] - target_z)))
                    target = sternum[k] + np.array([sgn * sternum_w / 2, 4.0, 0.0])
                else:
                    target = np.array([sgn * (20.0 + 12.0 * (number - 7)), end[1] - 10.0,
                                       sternum[-1, 2] - 10.0 - 12.0 * (number - 7)])
                mid = (end + target) / 2 + np.array([sgn * 12.0, -6.0, 0.0])
                cartilage = np.vstack([end, mid, target])
            radius = (4.0 if number in (1, 12, 13) else 4.5) * size * float(rng.uniform(0.9, 1.1))
            ribs.append(RibGeom(side, number, level, path, cartilage, radius, z_scale=1.6))
    return ribs, sternum, sternum_w
