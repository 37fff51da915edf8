"""The torso outline (skin, wall, back, thoracic cage) and the ribs, sternum and costal cartilages of one patient,
drawn around the spine (parameters only, no voxels)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from service.domain.levels import VertebraLevel
from service.offline.phantom.anatomy import AnatomyOptions, RibGeom, Torso, VertebraGeom, cavity

V = VertebraLevel

HABITUS = {
    # half-width chest (mm), AP depth factor, subcutaneous fat (mm), abdomen width factor
    "slim": ((120.0, 150.0), (0.68, 0.85), (3.0, 10.0), (0.92, 1.0)),
    "average": ((140.0, 170.0), (0.66, 0.80), (8.0, 22.0), (0.98, 1.08)),
    "obese": ((165.0, 200.0), (0.70, 0.85), (22.0, 45.0), (1.05, 1.2)),
}


def build_torso(
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


def build_ribs(
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
            # a short last rib keeps its head and neck and this share of its course beyond the tubercle
            share = opts.last_rib_scale[0 if side == "left" else 1] if number == n_pairs else 1.0
            phis = np.linspace(0.0, share, 40)
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
            radius = (4.0 if number in (1, 12, 13) else 4.5) * size * float(rng.uniform(0.9, 1.1)) * (
                0.55 + 0.45 * share)
            ribs.append(RibGeom(side, number, level, path, cartilage, radius, z_scale=1.6))
    return ribs, sternum, sternum_w
