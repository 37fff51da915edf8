"""Painters of the thorax: lungs with vessels, diaphragm, mediastinal fat, heart, great vessels, airways."""

from __future__ import annotations

import numpy as np

from service.domain.levels import VertebraLevel
from service.offline.phantom import labels as L  # noqa: N812
from service.offline.phantom.anatomy import Anatomy
from service.offline.phantom.canvas import Canvas, TissueHU, cavity_fields, diaphragm_z, slice_blocks
from service.offline.phantom.grid import F32, Capsule, SmoothField, capsules_bbox, local_coords, union_sd

V = VertebraLevel


def paint_thorax(cv: Canvas, anat: Anatomy, tissue: TissueHU) -> None:
    g = cv.grid
    z_lo = min(anat.diaphragm_right_z, anat.diaphragm_left_z) - 80.0
    tblk = g.block((-1e4, -1e4, z_lo), (1e4, 1e4, anat.lung_apex_z + 5.0))
    if tblk is None:
        return
    vrng = np.random.default_rng(abs(hash((round(anat.lung_apex_z, 3), g.shape))) % (2**32))
    sp = min(g.spacing_mm[:2])
    n1 = SmoothField(vrng, tblk.shape, sigma_vox=3.5 / sp)
    n2 = SmoothField(vrng, tblk.shape, sigma_vox=3.5 / sp)
    k0 = tblk.slices[2].start
    vt = anat.vertebrae
    z_t4 = float(vt[V.T4].centre[2])
    width = F32(0.12)
    z_carina = float(vt[V.T5].centre[2])
    heart_top = float(anat.heart_centre[2] + 0.8 * anat.heart_axes_mm[2])
    heart_bottom = float(anat.heart_centre[2] - 0.9 * anat.heart_axes_mm[2])
    lv_z = [vt[lv].centre[2] for lv in reversed(list(vt))]
    lv_w = [vt[lv].width_mm / 2 for lv in reversed(list(vt))]
    lv_d = [vt[lv].depth_mm / 2 for lv in reversed(list(vt))]
    for k, blk in slice_blocks(cv, z_lo, anat.lung_apex_z + 5.0):
        z = float(blk.Z[0, 0, 0])
        half_w = float(np.interp(z, lv_z, lv_w))
        half_d = float(np.interp(z, lv_z, lv_d))
        rc, cx, cy, ax, by = cavity_fields(blk, anat)
        zd = diaphragm_z(anat, blk.X, blk.Y, cy, ax, by, cx)
        taper = F32(np.sqrt(np.clip((anat.lung_apex_z - z) / 45.0, 0.0, 1.0)))
        spine_y = F32(anat.torso.at(z, "spine_y"))
        spine_x = F32(anat.torso.at(z, "spine_x"))
        in_cav = rc < taper * F32(0.97)
        above = z > zd
        diaphragm = (z <= zd) & (z > zd - 5.0) & (rc < 1.0)
        cv.paint(blk, diaphragm, L.MUSCLE, tissue.muscle, texture=8.0)
        # upper mediastinum (great vessels, trachea, oesophagus in fat); below, the heart and its fat take over
        med_w = F32(18.0 if z > z_t4 else 22.0) if z > heart_top else F32(10.0)
        front = cy - by
        taper = F32(0.55) + F32(0.45) * np.clip((blk.Y - front) / np.maximum(spine_y - front, 1.0), 0, 1)
        medi = (np.abs(blk.X - cx - F32(5.0)) < med_w * taper) & (spine_y > blk.Y)
        para = (np.abs(blk.X - spine_x) < F32(half_w + 6.0)) & (spine_y - F32(half_d + 8.0) < blk.Y)
        lung = in_cav & above & ~medi & ~para
        if not lung.any():
            continue
        lung_hu = F32(tissue.lung) + np.clip((blk.Y - cy) / by, -1, 1) * F32(35.0)
        left = cx <= blk.X
        cv.paint(blk, lung & left, L.LUNG_LEFT, lung_hu, texture=28.0)
        cv.paint(blk, lung & ~left, L.LUNG_RIGHT, lung_hu, texture=28.0)
        if z > heart_bottom:
            cv.paint(blk, in_cav & above & (medi | para), L.VISCERAL_FAT, tissue.fat, texture=12.0)
        # vessels: where two smooth random fields both cross zero (worm-like tubes)
        kk = k - k0
        a1 = np.abs(n1.plane(kk))
        a2 = np.abs(n2.plane(kk))
        # denser and thicker towards the hila
        hilum = np.exp(-(((blk.X - cx) / F32(70.0)) ** 2) - ((z - z_carina) / 70.0) ** 2).astype(F32)
        w = width * (F32(1.0) + F32(1.2) * hilum)
        vessels = lung & (a1 < w) & (a2 < w * 1.6)
        cv.paint(blk, vessels & left, L.LUNG_LEFT, tissue.blood - 10.0, texture=15.0)
        cv.paint(blk, vessels & ~left, L.LUNG_RIGHT, tissue.blood - 10.0, texture=15.0)
    del n1, n2
    _paint_mediastinum(cv, anat, tissue)


Tube = tuple[list[Capsule], int, float, float]
"""(capsules, label, HU, texture amplitude) of one tubular structure."""


def _paint_mediastinum(cv: Canvas, anat: Anatomy, tissue: TissueHU) -> None:
    _paint_heart(cv, anat, tissue)
    for caps, label, hu, tex in (*_vessel_tubes(anat, tissue), *_airway_tubes(anat, tissue)):
        blk = cv.grid.block(*capsules_bbox(caps, 2.0))
        if blk is None:
            continue
        sd = union_sd(blk, caps)
        cv.paint(blk, sd < 0, label, hu, texture=tex)


def _paint_heart(cv: Canvas, anat: Anatomy, tissue: TissueHU) -> None:
    """Heart with pericardial fat (and, enhanced, blood-filled chambers with a septum)."""
    hc = anat.heart_centre
    axes = np.asarray(anat.heart_axes_mm)
    ang = np.deg2rad(35.0)
    rot = np.array([[np.cos(ang), np.sin(ang), 0.0], [-np.sin(ang), np.cos(ang), 0.0], [0.0, 0.0, 1.0]])
    rmax = float(axes.max()) + 10.0
    blk = cv.grid.block(hc - rmax, hc + rmax)
    if blk is not None:
        a, b, c = local_coords(blk, hc, rot)
        rr = np.sqrt((a / axes[0]) ** 2 + (b / axes[1]) ** 2 + (c / axes[2]) ** 2)
        cv.paint(blk, rr < 1.0 + 7.0 / axes.min(), L.VISCERAL_FAT, tissue.fat, texture=12.0)
        cv.paint(blk, rr < 1.0, L.HEART, tissue.myocardium, texture=6.0)
        cv.paint(blk, rr < 0.72, L.HEART, tissue.blood, texture=5.0)
        if tissue.blood > 100:  # enhanced chambers with a septum
            septum = (np.abs(a - 0.1 * axes[0]) < 5.0) & (rr < 0.8)
            cv.paint(blk, septum, L.HEART, tissue.myocardium, texture=5.0)


def _spine_at(anat: Anatomy, z: float) -> tuple[float, float, float]:
    """(x, y) of the vertebral-body centre line and the body depth (mm) at z."""
    vt = anat.vertebrae
    return (float(anat.torso.at(z, "spine_x")), float(anat.torso.at(z, "spine_y")),
            float(np.interp(z, [vt[lv].centre[2] for lv in reversed(list(vt))],
                            [vt[lv].depth_mm for lv in reversed(list(vt))])))


def _vessel_tubes(anat: Anatomy, tissue: TissueHU) -> list[Tube]:
    """Aorta (ascending, arch, descending, abdominal, bifurcation at L4), pulmonary trunk, superior vena cava."""
    vt = anat.vertebrae
    hc = anat.heart_centre
    axes = np.asarray(anat.heart_axes_mm)
    heart_top = hc[2] + axes[2] * 0.8
    z_t4 = float(vt[V.T4].centre[2])
    z_t3 = float(vt[V.T3].centre[2])
    tubes: list[Tube] = []
    # aorta: descending left anterolateral of the spine
    sx, sy, d = _spine_at(anat, z_t4)
    arch_z = z_t4 - 5.0
    asc = (hc[0] - 35.0, hc[1] - 15.0, heart_top - 15.0)
    arch_top = (hc[0] - 20.0, hc[1] - 5.0, arch_z + 15.0)
    arch_back = (sx + 18.0, sy - d / 2 - 14.0, arch_z + 5.0)
    pts = [asc, (hc[0] - 33.0, hc[1] - 15.0, arch_z), arch_top, (sx + 10.0, sy - d / 2 - 35.0, arch_z + 18.0),
           arch_back]
    z_l4 = float(vt[V.L4].centre[2])
    for z in np.linspace(arch_z - 20.0, z_l4, 14):
        sx, sy, d = _spine_at(anat, float(z))
        frac = np.clip((arch_z - z) / max(arch_z - z_l4, 1.0), 0, 1)
        pts.append((sx + 18.0 - 10.0 * frac, sy - d / 2 - 14.0 + 2.0 * frac, float(z)))
    radii = [15.0, 15.0, 14.0, 13.0, 12.0] + [12.0 - 2.5 * k / 13 for k in range(14)]
    caps = [Capsule(pts[k], pts[k + 1], radii[k + 1]) for k in range(len(pts) - 1)]
    sx, sy, d = _spine_at(anat, z_l4)
    for sgn in (1.0, -1.0):
        caps.append(Capsule(pts[-1], (sx + sgn * 45.0, sy - d / 2 - 5.0, z_l4 - 70.0), 7.0))
    tubes.append((caps, L.AORTA, tissue.blood, 5.0))
    # pulmonary trunk and arteries
    pt0 = (hc[0] + 10.0, hc[1] - 35.0, heart_top - 20.0)
    pt1 = (hc[0] + 5.0, hc[1] - 10.0, z_t4 - 25.0)
    caps = [Capsule(pt0, pt1, 13.0), Capsule(pt1, (hc[0] + 45.0, hc[1] + 10.0, z_t4 - 30.0), 9.0),
            Capsule(pt1, (hc[0] - 70.0, hc[1] + 5.0, z_t4 - 32.0), 9.0)]
    tubes.append((caps, L.AORTA, tissue.blood, 5.0))
    # superior vena cava
    tubes.append(([Capsule((hc[0] - 55.0, hc[1] - 5.0, z_t3 + 40.0), (hc[0] - 50.0, hc[1], heart_top - 10.0),
                           9.0)], L.IVC, tissue.blood * 0.9 + 4.0, 5.0))
    return tubes


def _airway_tubes(anat: Anatomy, tissue: TissueHU) -> list[Tube]:
    """Trachea and main bronchi (air inside a soft-tissue wall), oesophagus."""
    z_carina = float(anat.vertebrae[V.T5].centre[2])
    sx, sy, d = _spine_at(anat, z_carina)
    top = (sx, float(anat.torso.at(anat.lung_apex_z + 60.0, "spine_y")) - d / 2 - 22.0, anat.lung_apex_z + 80.0)
    car = (sx, sy - d / 2 - 22.0, z_carina)
    bl = (sx + 45.0, sy - d / 2 - 10.0, z_carina - 30.0)
    br = (sx - 40.0, sy - d / 2 - 12.0, z_carina - 20.0)
    airway = [Capsule(top, car, 9.0), Capsule(car, bl, 6.5), Capsule(car, br, 7.0)]
    tubes: list[Tube] = [([Capsule(c.p0, c.p1, c.radius_mm + 2.0) for c in airway], L.AIRWAY, 40.0, 5.0),
                         (airway, L.AIRWAY, tissue.air, 3.0)]
    eso = []
    prev = None
    for z in np.linspace(anat.lung_apex_z + 80.0, anat.diaphragm_left_z - 10.0, 10):
        sx, sy, d = _spine_at(anat, float(z))
        frac = np.clip((z_carina - z) / 150.0, 0, 1)
        p = (sx + 6.0 + 25.0 * frac**3, sy - d / 2 - 8.0 - 10.0 * frac**2, float(z))
        if prev is not None:
            eso.append(Capsule(prev, p, 7.0))
        prev = p
    tubes.append((eso, L.ESOPHAGUS, 40.0, 6.0))
    return tubes
