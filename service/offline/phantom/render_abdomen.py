"""Painters of the abdomen: visceral fat, bowel, psoas, liver, spleen, stomach, kidneys, inferior vena cava."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from service.domain.levels import VertebraLevel
from service.offline.phantom import labels as L  # noqa: N812
from service.offline.phantom.anatomy import Anatomy, cavity
from service.offline.phantom.canvas import Canvas, TissueHU, cavity_fields, diaphragm_z, ellipsoid, slice_blocks
from service.offline.phantom.grid import F32, Block, Capsule, SmoothField, capsules_bbox, union_sd

V = VertebraLevel


def _organ_block(cv: Canvas, anat: Anatomy, centre: npt.ArrayLike, axes: tuple[float, float, float]
                 ) -> tuple[Block, npt.NDArray[np.float32], npt.NDArray[np.bool_]] | None:
    """Block around an ellipsoidal organ, its normalised radius, and 'inside the abdominal cavity'."""
    c = np.asarray(centre, dtype=np.float64)
    ext = np.asarray(axes) + 2.0
    blk = cv.grid.block(c - ext, c + ext)
    if blk is None:
        return None
    rc, cx, cy, ax, by = cavity_fields(blk, anat)
    zd = diaphragm_z(anat, blk.X, blk.Y, cy, ax, by, cx)
    inside = (rc < 1.0) & (zd - 5.0 >= blk.Z)
    return blk, ellipsoid(blk, c, axes), inside


def paint_abdomen(cv: Canvas, anat: Anatomy, tissue: TissueHU, rng: np.random.Generator) -> None:
    """Nothing when the abdomen lies outside the grid; otherwise fat, bowel and psoas slice by slice, then the
    solid organs, the kidneys and the inferior vena cava."""
    if not _paint_abdominal_slices(cv, anat, tissue, rng):
        return
    _paint_solid_organs(cv, anat, tissue)
    _paint_kidneys(cv, anat, tissue)
    _paint_ivc(cv, anat, tissue)


def _paint_abdominal_slices(cv: Canvas, anat: Anatomy, tissue: TissueHU, rng: np.random.Generator) -> bool:
    """Visceral fat, bowel loops (wall, content, gas) and psoas muscles; False when the abdomen is off the grid."""
    g = cv.grid
    vt = anat.vertebrae
    z_top = max(anat.diaphragm_right_z, anat.diaphragm_left_z) + 5.0
    z_bot = float(vt[V.S1].centre[2]) - 120.0
    ablk = g.block((-1e4, -1e4, z_bot), (1e4, 1e4, z_top))
    if ablk is None:
        return False
    sp = min(g.spacing_mm[:2])
    n1 = SmoothField(rng, ablk.shape, 5.0 / sp)
    n2 = SmoothField(rng, ablk.shape, 7.0 / sp)
    k0 = ablk.slices[2].start
    z_t12 = float(vt[V.T12].centre[2])
    z_s1 = float(vt[V.S1].centre[2])
    levels_z = [vt[lv].centre[2] for lv in reversed(list(vt))]
    levels_w = [vt[lv].width_mm for lv in reversed(list(vt))]
    for k, blk in slice_blocks(cv, z_bot, z_top):
        z = float(blk.Z[0, 0, 0])
        rc, cx, cy, ax, by = cavity_fields(blk, anat)
        zd = diaphragm_z(anat, blk.X, blk.Y, cy, ax, by, cx)
        spine_y = F32(anat.torso.at(z, "spine_y"))
        spine_x = F32(anat.torso.at(z, "spine_x"))
        abdomen = (rc < 0.98) & (z <= zd - 5.0)
        if not abdomen.any():
            continue
        cv.paint(blk, abdomen, L.VISCERAL_FAT, tissue.fat + 8.0, texture=12.0)
        kk = k - k0
        f1 = n1.plane(kk)
        f2 = n2.plane(kk)
        if z < z_t12:
            retro = (spine_y - F32(30.0) < blk.Y) | ((np.abs(blk.X - spine_x) < 35.0) & (spine_y - 45.0 < blk.Y))
            loops = abdomen & ~retro & (f1 > -0.05)
            cv.paint(blk, loops, L.BOWEL, tissue.bowel_wall, texture=10.0)
            content = loops & (f1 > 0.35)
            cv.paint(blk, content, L.BOWEL, tissue.bowel_content + 20.0 * f2, texture=12.0)
            gas = content & (f2 > 1.3) & (cy + by * 0.3 > blk.Y)
            cv.paint(blk, gas, L.BOWEL, tissue.air + 30.0, texture=20.0)
        # psoas muscles beside the lumbar bodies, growing caudally
        if z < z_t12:
            growth = float(np.clip((z_t12 - z) / max(z_t12 - z_s1, 1.0), 0.0, 1.0))
            pr = F32(4.0 + 18.0 * growth)
            wv = F32(np.interp(z, levels_z, levels_w))
            for sgn in (1.0, -1.0):
                pc_x = spine_x + F32(sgn) * (wv / 2 + pr * 0.9)
                pso = ((blk.X - pc_x) / pr) ** 2 + ((blk.Y - spine_y + 2.0) / (pr * 1.15)) ** 2 < 1.0
                cv.paint(blk, pso, L.MUSCLE, tissue.muscle, texture=8.0)
    return True


def _paint_solid_organs(cv: Canvas, anat: Anatomy, tissue: TissueHU) -> None:
    """Liver (right lobe + left lobe under the right dome), spleen, stomach (wall, content, air)."""
    cav_mid = cavity(anat.torso, np.array([anat.diaphragm_right_z - 60.0]))
    a_ref = float(cav_mid[2][0])
    b_ref = float(cav_mid[3][0])
    cy_ref = float(cav_mid[1][0])
    ls = anat.liver_shift
    z_dr = anat.diaphragm_right_z
    z_dl = anat.diaphragm_left_z
    parts = [((-0.42 * a_ref + ls[0], cy_ref + 0.05 * b_ref + ls[1], z_dr - 75.0 + ls[2]),
              (0.62 * a_ref, 0.95 * b_ref, 100.0)),
             ((0.15 * a_ref + ls[0], cy_ref - 0.45 * b_ref + ls[1], z_dr - 45.0 + ls[2]),
              (0.5 * a_ref, 0.42 * b_ref, 50.0))]
    for centre, axes in parts:
        found = _organ_block(cv, anat, centre, axes)
        if found is None:
            continue
        blk, rr, inside = found
        cut = (F32(0.3 * a_ref) < blk.X) & (F32(cy_ref - 0.2 * b_ref) < blk.Y)
        cv.paint(blk, inside & (rr < 1.0) & ~cut, L.LIVER, tissue.liver, texture=6.0)
    found = _organ_block(cv, anat, (0.72 * a_ref, cy_ref + 0.45 * b_ref, z_dl - 55.0), (28.0, 55.0, 55.0))
    if found is not None:
        blk, rr, inside = found
        cv.paint(blk, inside & (rr < 1.0), L.SPLEEN, tissue.spleen, texture=6.0)
    stc = (0.35 * a_ref, cy_ref - 0.25 * b_ref, z_dl - 45.0)
    found = _organ_block(cv, anat, stc, (50.0, 40.0, 55.0))
    if found is not None:
        blk, st, inside = found
        cv.paint(blk, inside & (st < 1.0), L.STOMACH, tissue.bowel_wall, texture=6.0)
        cv.paint(blk, inside & (st < 0.9), L.STOMACH, tissue.bowel_content, texture=6.0)
        cv.paint(blk, inside & (st < 0.9) & (F32(stc[1] - 12.0) > blk.Y), L.STOMACH, tissue.air, texture=10.0)


def _paint_kidneys(cv: Canvas, anat: Anatomy, tissue: TissueHU) -> None:
    """Kidneys (retroperitoneal, lateral to L1-L2), with perirenal fat, cortex, medulla and sinus fat."""
    z_l1 = float(anat.vertebrae[V.L1].centre[2])
    for sgn, label, dz in ((1.0, L.KIDNEY_LEFT, 0.0), (-1.0, L.KIDNEY_RIGHT, -15.0)):
        sx = float(anat.torso.at(z_l1, "spine_x"))
        syv = float(anat.torso.at(z_l1, "spine_y"))
        kc = (sx + sgn * 62.0, syv + 12.0, z_l1 + dz + anat.kidney_shift_mm)
        blk = cv.grid.block(np.asarray(kc) - 60.0, np.asarray(kc) + 60.0)
        if blk is None:
            continue
        kid = ellipsoid(blk, kc, (27.0, 24.0, 55.0))
        perirenal = ellipsoid(blk, kc, (38.0, 33.0, 66.0))
        cv.paint(blk, (perirenal < 1.0) & (cv.labels[blk.slices] != L.MUSCLE), L.VISCERAL_FAT, tissue.fat,
                 texture=12.0)
        cv.paint(blk, kid < 1.0, label, tissue.kidney_cortex, texture=6.0)
        cv.paint(blk, kid < 0.72, label, tissue.kidney_medulla, texture=6.0)
        sinus = ellipsoid(blk, (kc[0] - sgn * 14.0, kc[1] - 4.0, kc[2]), (12.0, 10.0, 25.0))
        cv.paint(blk, (sinus < 1.0) & (kid < 1.0), label, tissue.fat + 20.0, texture=10.0)


def _paint_ivc(cv: Canvas, anat: Anatomy, tissue: TissueHU) -> None:
    """Inferior vena cava (right of the aorta) from L4 to above the right dome."""
    caps = []
    prev = None
    for z in np.linspace(float(anat.vertebrae[V.L4].centre[2]), anat.diaphragm_right_z + 10.0, 10):
        sxx = float(anat.torso.at(z, "spine_x"))
        syy = float(anat.torso.at(z, "spine_y"))
        p = (sxx - 22.0, syy - 30.0, float(z))
        if prev is not None:
            caps.append(Capsule(prev, p, 10.5))
        prev = p
    sub = cv.grid.block(*capsules_bbox(caps, 2.0))
    if sub is not None:
        sd = union_sd(sub, caps)
        cv.paint(sub, sd < 0, L.IVC, tissue.blood * 0.92 + 3.0, texture=5.0)
