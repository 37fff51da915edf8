"""Painters of the body outline: table, calibration phantom, torso wall and back muscles, breasts, arms."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from service.domain.levels import VertebraLevel
from service.offline.phantom import labels as L  # noqa: N812
from service.offline.phantom.anatomy import Anatomy
from service.offline.phantom.canvas import Canvas, RenderOptions, TissueHU, ellipsoid, slice_blocks
from service.offline.phantom.grid import F32, Block, Capsule, SmoothField, capsules_bbox, union_sd

V = VertebraLevel


def paint_table(cv: Canvas, opts: RenderOptions) -> None:
    g = cv.grid
    blk = g.block((-260.0, opts.table_y - 30.0, -1e5), (260.0, opts.table_y + 60.0, 1e5))
    if blk is None:
        return
    top = F32(opts.table_y) - F32(0.00035) * blk.X**2
    rel = blk.Y - top  # (nx, ny, 1): the table does not change along z
    lateral = np.abs(blk.X) < 230.0
    shell = ((rel >= 0) & (rel < 2.5)) | ((rel >= 42) & (rel < 45))
    foam = (rel >= 2.5) & (rel < 42)
    cv.paint(blk, foam & lateral, L.TABLE, -880.0, texture=15.0)
    cv.paint(blk, shell & lateral, L.TABLE, 250.0, texture=10.0)


def paint_calibration(cv: Canvas, opts: RenderOptions) -> None:
    assert_box = opts.calibration_box
    if assert_box is None:
        return
    x0, x1, y0, y1 = assert_box
    z0, z1 = opts.calibration_z
    blk = cv.grid.block((x0, y0, z0), (x1, y1, z1))
    if blk is None:
        return
    inside = (x0 <= blk.X) & (x1 >= blk.X) & (y0 <= blk.Y) & (y1 >= blk.Y) & (z0 <= blk.Z) & (z1 >= blk.Z)
    cv.paint(blk, inside, L.CALIBRATION_BODY, 5.0, texture=3.0)
    for n, (x, y, r, hu) in enumerate(opts.calibration_rods):
        rod = ((blk.X - x) ** 2 + (blk.Y - y) ** 2 <= r * r) & (z0 <= blk.Z) & (z1 >= blk.Z)
        cv.paint(blk, rod, L.CALIBRATION_ROD_BASE + n, hu)


def _torso_fields(blk: Block, anat: Anatomy) -> tuple[npt.NDArray[np.float32], ...]:
    """Skin superellipse radius r (<= 1 inside), approximate depth below the skin (mm), and u, v."""
    t = anat.torso
    z = float(blk.Z[0, 0, 0])
    hw = F32(t.at(z, "half_width"))
    front = F32(t.at(z, "front_y"))
    back = F32(t.at(z, "back_y"))
    cx = F32(t.at(z, "spine_x") * 0.5)
    yc = (front + back) / 2
    hap = (back - front) / 2
    u = (blk.X - cx) / hw
    v = (blk.Y - yc) / hap
    n = F32(t.exponent)
    au = np.abs(u)
    av = np.abs(v)
    r_front = (au**n + av**n) ** (1.0 / n)
    u2 = u * u
    v2 = v * v
    r_back = np.sqrt(np.sqrt(u2 * u2 + v2 * v2))  # flatter back lying on the table
    r = np.where(v > 0, r_back, r_front)
    grad = np.sqrt(u2 / (hw * hw) + v2 / (hap * hap)) / np.maximum(r, F32(1e-3))
    depth = (1.0 - r) / np.maximum(grad, F32(1e-6))
    return r, depth, u, v


def paint_torso(cv: Canvas, anat: Anatomy, tissue: TissueHU) -> None:
    t = anat.torso
    vt = anat.vertebrae
    lv_z = [vt[lv].centre[2] for lv in reversed(list(vt))]
    lv_w = [vt[lv].width_mm / 2 for lv in reversed(list(vt))]
    lv_d = [vt[lv].depth_mm / 2 for lv in reversed(list(vt))]
    z_t12 = float(vt[V.T12].centre[2])
    for _k, blk in slice_blocks(cv):
        r, depth, u, v = _torso_fields(blk, anat)
        body = r <= 1.0
        if not body.any():
            continue
        cv.paint(blk, body, L.MUSCLE, tissue.muscle, texture=10.0)
        # subcutaneous fat: thicker at the flanks and over the back of the abdomen, thin over the sternum
        fat_thick = F32(t.subcut_fat_mm) * (F32(0.7) + F32(0.5) * np.abs(u) + F32(0.25) * np.clip(v, 0, 1))
        cv.paint(blk, body & (depth < fat_thick), L.SUBCUTANEOUS_FAT, tissue.fat, texture=12.0)
        # an intermuscular fat plane inside the wall
        inner = fat_thick + F32(t.wall_muscle_mm) * F32(0.55)
        cv.paint(blk, body & (depth > inner) & (depth < inner + 1.5), L.SUBCUTANEOUS_FAT, tissue.fat + 20.0,
                 texture=10.0)
        cv.paint(blk, body & (depth < 1.8), L.SKIN, tissue.skin, texture=8.0)
        # erector spinae / multifidus on each side of the spinous processes, outlined by thin fat planes
        z = float(blk.Z[0, 0, 0])
        half_w = float(np.interp(z, lv_z, lv_w))
        half_d = float(np.interp(z, lv_z, lv_d))
        lumbar = float(np.clip((z_t12 - z) / 60.0, 0.0, 1.0))
        pa = F32(17.0 + 9.0 * lumbar)
        pb = F32(16.0 + 8.0 * lumbar)
        sy = F32(t.at(z, "spine_y") + half_d + 26.0 + 4.0 * lumbar)
        sx = F32(t.at(z, "spine_x"))
        for sgn in (1.0, -1.0):
            cxp = sx + F32(sgn * (half_w * 0.35 + float(pa) + 3.0))
            rho = np.sqrt(((blk.X - cxp) / pa) ** 2 + ((blk.Y - sy) / pb) ** 2)
            ring = body & (np.abs(rho - 1.0) < F32(1.3) / pa) & (depth > F32(t.subcut_fat_mm) + 3.0)
            cv.paint(blk, ring, L.SUBCUTANEOUS_FAT, tissue.fat + 15.0, texture=10.0)


def paint_breasts(cv: Canvas, anat: Anatomy, tissue: TissueHU, rng: np.random.Generator) -> None:
    """Female breasts: fat with fibroglandular tissue, on the anterior chest wall at about T5-T7."""
    size = anat.extras["breast_size"]
    t = anat.torso
    zc = float(anat.vertebrae[V.T6].centre[2])
    hw = float(t.at(zc, "half_width"))
    front = float(t.at(zc, "front_y"))
    axes = (min(0.36 * hw, 40.0 * size + 25.0), 26.0 * size + 8.0, 40.0 * size + 22.0)
    for sgn in (1.0, -1.0):
        centre = np.array([sgn * 0.42 * hw, front + 10.0, zc - 10.0])
        blk = cv.grid.block(centre - np.asarray(axes) - 2.0, centre + np.asarray(axes) + 2.0)
        if blk is None:
            continue
        rr = ellipsoid(blk, centre, axes)
        inside = rr < 1.0
        if not inside.any():
            continue
        cv.paint(blk, inside, L.SUBCUTANEOUS_FAT, tissue.fat, texture=12.0)
        field = SmoothField(rng, blk.shape, sigma_vox=4.0 / min(cv.grid.spacing_mm))
        gland = np.concatenate([field.plane(k) for k in range(blk.shape[2])], axis=2)
        cv.paint(blk, inside & (rr < 0.8) & (gland > 0.4), L.SUBCUTANEOUS_FAT, 35.0, texture=12.0)
        cv.paint(blk, inside & (rr > 1.0 - 1.8 / min(axes)) & (cv.labels[blk.slices] != L.MUSCLE), L.SKIN,
                 tissue.skin, texture=8.0)


def paint_arms(cv: Canvas, anat: Anatomy, tissue: TissueHU) -> None:
    t = anat.torso
    z_top = anat.vertebrae[V.T1].centre[2] + 20.0
    for sgn in (1.0, -1.0):
        hw = float(np.max(t.half_width))
        zs = np.array([z_top, z_top - 300.0])
        x = sgn * (hw + 50.0)
        yc = float(np.mean(t.at(zs, "front_y") + t.at(zs, "back_y")) / 2) + 10.0
        caps = [Capsule((x, yc, z_top), (x + sgn * 15.0, yc - 10.0, z_top - 300.0), 45.0)]
        blk = cv.grid.block(*capsules_bbox(caps, 5.0))
        if blk is None:
            continue
        sd = union_sd(blk, caps)
        cv.paint(blk, sd < 0, L.MUSCLE, tissue.muscle, texture=10.0)
        cv.paint(blk, (sd < 0) & (sd > -8.0), L.SUBCUTANEOUS_FAT, tissue.fat, texture=12.0)
        cv.paint(blk, (sd < 0) & (sd > -1.5), L.SKIN, tissue.skin)
        bone = [Capsule((x, yc + 5.0, z_top), (x + sgn * 12.0, yc - 5.0, z_top - 300.0), 11.0)]
        sdb = union_sd(blk, bone)
        cv.paint(blk, sdb < 0, L.HUMERUS, tissue.cortical * 0.9, texture=40.0)
        cv.paint(blk, sdb < -3.0, L.HUMERUS, -20.0, texture=20.0)
