"""Painters of the rest of the skeleton and of the findings in bone: ribs, costal cartilage, sternum, clavicles,
scapulae, iliac wings, a bone island, pedicle screws and rods."""

from __future__ import annotations

import itertools

import numpy as np

from service.domain.levels import VertebraLevel
from service.offline.phantom import labels as L  # noqa: N812
from service.offline.phantom.anatomy import Anatomy
from service.offline.phantom.canvas import METAL_HU, Canvas, RenderOptions, TissueHU, ellipsoid, shell_hu, shell_mm
from service.offline.phantom.grid import F32, Capsule, capsules_bbox, union_sd

V = VertebraLevel


def paint_ribs_and_sternum(cv: Canvas, anat: Anatomy, tissue: TissueHU, opts: RenderOptions) -> None:
    g = cv.grid
    cort = tissue.cortical * 0.8
    for rib in anat.ribs:
        trab = opts.trabecular_hu[rib.level] + 40.0
        if rib.cartilage is not None:
            cc = [Capsule(tuple(rib.cartilage[k]), tuple(rib.cartilage[k + 1]), rib.radius_mm * 0.85, rib.z_scale)
                  for k in range(len(rib.cartilage) - 1)]
            blk = g.block(*capsules_bbox(cc))
            if blk is not None:
                sd = union_sd(blk, cc)
                cv.paint(blk, sd < 0, L.COSTAL_CARTILAGE, tissue.cartilage, texture=25.0)
        caps = [Capsule(tuple(rib.path[k]), tuple(rib.path[k + 1]), rib.radius_mm, rib.z_scale)
                for k in range(len(rib.path) - 1)]
        blk = g.block(*capsules_bbox(caps))
        if blk is None:
            continue
        sd = union_sd(blk, caps)
        label = L.rib(rib.side, rib.number)
        t_eff = shell_mm(g, 0.8)
        cv.paint(blk, sd < 0, label, shell_hu(cort * 0.9, trab, 0.8, t_eff), texture=50.0)
        cv.paint(blk, sd < -t_eff, label, trab, texture=35.0)
    # sternum: a flat plate of three parallel chains
    st = anat.sternum_path
    w = anat.sternum_width_mm
    caps = []
    for k in range(len(st) - 1):
        taper = 1.0 if k < 3 else 0.7
        for dx in (-w / 3, 0.0, w / 3):
            caps.append(Capsule((st[k, 0] + dx * taper, st[k, 1], st[k, 2]),
                                (st[k + 1, 0] + dx * taper, st[k + 1, 1], st[k + 1, 2]), 6.0))
    blk = g.block(*capsules_bbox(caps))
    if blk is not None:
        sd = union_sd(blk, caps)
        cv.paint(blk, sd < 0, L.STERNUM, tissue.cortical * 0.7, texture=40.0)
        cv.paint(blk, sd < -1.3, L.STERNUM, opts.trabecular_hu[V.T6] + 30.0, texture=35.0)


def paint_shoulder_girdle(cv: Canvas, anat: Anatomy, tissue: TissueHU, opts: RenderOptions) -> None:
    g = cv.grid
    t = anat.torso
    vt = anat.vertebrae
    st = anat.sternum_path
    z2 = float(vt[V.T2].centre[2])
    z7 = float(vt[V.T7].centre[2])
    for sgn in (1.0, -1.0):
        hw = float(t.at(z2, "half_width"))
        back = float(t.at(z2, "back_y"))
        front = float(t.at(z2, "front_y"))
        inset = t.subcut_fat_mm
        # clavicle: manubrium -> acromion
        p0 = (st[0, 0] + sgn * 18.0, st[0, 1] - 2.0, st[0, 2] + 8.0)
        p1 = (sgn * hw * 0.45, front + inset + 8.0, st[0, 2] + 18.0)
        p2 = (sgn * (hw - inset - 20.0), (front + back) / 2 - 5.0, st[0, 2] + 22.0)
        clav = [Capsule(p0, p1, 7.0), Capsule(p1, p2, 6.0)]
        # scapula: fan of capsules from the glenoid to the medial border, over the posterior ribs
        glen = (sgn * (hw - inset - 25.0), (front + back) / 2 + 10.0, z2 + 5.0)
        medial = [(sgn * 55.0, back - inset - 28.0, z2 + 20.0), (sgn * 62.0, back - inset - 26.0, (z2 + z7) / 2),
                  (sgn * 75.0, back - inset - 24.0, z7 - 5.0)]
        scap = [Capsule(glen, m, 4.2) for m in medial]
        scap += [Capsule(medial[0], medial[1], 4.0), Capsule(medial[1], medial[2], 4.0)]
        scap.append(Capsule((glen[0], glen[1] + 4.0, glen[2] + 8.0), medial[0], 4.5))  # spine of scapula
        scap.append(Capsule(glen, (glen[0], glen[1] - 3.0, glen[2] - 12.0), 9.0))  # glenoid neck
        for caps, label in ((clav, L.CLAVICLE), (scap, L.SCAPULA)):
            blk = g.block(*capsules_bbox(caps))
            if blk is None:
                continue
            sd = union_sd(blk, caps)
            inside_body = cv.labels[blk.slices] != 0
            cv.paint(blk, (sd < 0) & inside_body, label, tissue.cortical * 0.75, texture=40.0)
            cv.paint(blk, (sd < -1.5) & inside_body, label, opts.trabecular_hu[V.T3] + 20.0, texture=30.0)


def paint_pelvis(cv: Canvas, anat: Anatomy, tissue: TissueHU, opts: RenderOptions) -> None:
    """Iliac wings: curved plates from the sacro-iliac joints running antero-laterally, flaring to the crest.

    Each wing is a band of an elliptic cone around a vertical axis beside the sacrum: the ellipse grows from the
    acetabular roof (about 90 mm below S1) to the iliac crest (about the L4-L5 disc), and only its postero-
    lateral to antero-lateral arc is bone (from the sacro-iliac joint to the anterior superior iliac spine).
    """
    g = cv.grid
    vt = anat.vertebrae
    s1 = vt[V.S1]
    size = anat.extras.get("size_factor", 1.0)
    c = s1.centre
    z_crest = float(vt[V.L5].centre[2] + 0.5 * vt[V.L5].height_mm)
    z_bot = float(c[2] - 95.0 * size)
    hw = float(anat.torso.at(z_crest - 20.0, "half_width")) - anat.torso.subcut_fat_mm
    a_top = min(95.0 * size, hw - 28.0 - 20.0)
    b_top = 70.0 * size
    cort = tissue.cortical * 0.85
    marrow = opts.trabecular_hu[V.L5] + 40.0
    for sgn in (1.0, -1.0):
        cx = float(c[0] + sgn * 20.0 * size)
        cy = float(c[1] - 30.0 * size)
        lo = (cx - a_top - 15.0, cy - b_top - 15.0, z_bot)
        hi = (cx + a_top + 15.0, cy + b_top + 15.0, z_crest + 5.0)
        blk = g.block(lo, hi)
        if blk is None:
            continue
        t = np.clip((blk.Z - F32(z_bot)) / F32(z_crest - z_bot), 0.0, 1.0)
        flare = F32(0.45) + F32(0.55) * np.sqrt(t)
        a = F32(a_top) * flare
        b = F32(b_top) * (F32(0.6) + F32(0.4) * np.sqrt(t))
        ex = (blk.X - F32(cx)) / a
        ey = (blk.Y - F32(cy)) / b
        rho = np.sqrt(ex * ex + ey * ey)
        dist = (rho - 1.0) * (a + b) / 2
        # arc from the sacro-iliac joint (postero-medial) to the ASIS (antero-lateral)
        arc = (sgn * ex > 0.15) & (ey > -0.8) & (F32(z_crest) >= blk.Z)
        thick = F32(3.5) + F32(5.0) * np.clip(ey, 0, 1) + F32(3.0) * (1 - t)
        in_body = cv.labels[blk.slices] != 0
        cv.paint(blk, arc & (dist > -22.0) & (dist < 0) & in_body, L.MUSCLE, tissue.muscle, texture=8.0)  # iliacus
        cv.paint(blk, arc & (dist >= 0) & (dist < 25.0) & in_body, L.MUSCLE, tissue.muscle, texture=8.0)  # gluteal
        bone = arc & (np.abs(dist) < thick) & in_body
        cv.paint(blk, bone, L.PELVIS, cort, texture=50.0)
        cv.paint(blk, bone & (np.abs(dist) < thick - 1.5), L.PELVIS, marrow, texture=35.0)


def paint_bone_island(cv: Canvas, opts: RenderOptions, tissue: TissueHU) -> None:
    if opts.bone_island is None:
        return
    level, centre, radius = opts.bone_island
    blk = cv.grid.block(np.asarray(centre) - radius - 2, np.asarray(centre) + radius + 2)
    if blk is None:
        return
    rr = ellipsoid(blk, centre, (radius, radius, radius * 0.8))
    inside_body = np.isin(cv.labels[blk.slices], (L.body_shell(level), L.body_core(level)))
    # labelled as the body shell value: the body mask is intact, the truth core excludes the island
    cv.paint(blk, (rr < 1.0) & inside_body, L.body_shell(level), tissue.cortical * 0.95, texture=30.0)


def paint_screws(cv: Canvas, anat: Anatomy, levels: tuple[VertebraLevel, ...]) -> None:
    g = cv.grid
    heads = {}
    for lv in levels:
        vg = anat.vertebrae[lv]
        pa = vg.canal_width_mm / 2 + vg.pedicle_radius_mm * 0.8
        b_ped = vg.depth_mm / 2 + vg.pedicle_length_mm
        caps = []
        for s in (1.0, -1.0):
            entry = vg.to_world(s * (pa + 6.0), b_ped + 10.0, 0.12 * vg.height_mm)
            tip = vg.to_world(s * 4.0, -vg.depth_mm / 2 + 6.0, 0.08 * vg.height_mm)
            caps.append(Capsule(tuple(entry), tuple(tip), 3.2))
            caps.append(Capsule(tuple(entry), tuple(entry + vg.frame[1] * 8.0), 6.0))
            heads[(lv, s)] = entry + vg.frame[1] * 8.0
        blk = g.block(*capsules_bbox(caps))
        if blk is None:
            continue
        sd = union_sd(blk, caps)
        cv.paint(blk, sd < 0, L.METAL, METAL_HU)
    ordered = sorted(levels)
    rods = []
    for a, b in itertools.pairwise(ordered):
        if int(b) - int(a) == 1:
            for s in (1.0, -1.0):
                rods.append(Capsule(tuple(heads[(a, s)]), tuple(heads[(b, s)]), 3.0))
    if rods:
        blk = g.block(*capsules_bbox(rods))
        if blk is not None:
            sd = union_sd(blk, rods)
            cv.paint(blk, sd < 0, L.METAL, METAL_HU)
