"""Painters of the spine: spinal canal, discs, vertebral bodies (shell, trabecular core), posterior elements,
sacrum."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import numpy.typing as npt

from service.domain.levels import VertebraLevel
from service.offline.phantom import labels as L  # noqa: N812
from service.offline.phantom.anatomy import Anatomy, VertebraGeom
from service.offline.phantom.canvas import Canvas, RenderOptions, TissueHU, shell_hu, shell_mm
from service.offline.phantom.grid import F32, Block, Capsule, Grid, capsules_bbox, local_coords, union_sd

V = VertebraLevel


def _body_fields(blk: Block, vg: VertebraGeom, shrink_mm: float, extra_top_mm: float = 0.0,
                 a_b_c: tuple[npt.NDArray[np.float32], ...] | None = None) -> npt.NDArray[np.bool_]:
    """Inside of the vertebral body shrunk by ``shrink_mm`` (analytic inner surfaces)."""
    a, b, c = a_b_c if a_b_c is not None else local_coords(blk, vg.centre, vg.frame)
    w2 = F32(vg.width_mm / 2 - shrink_mm)
    d2 = F32(vg.depth_mm / 2 - shrink_mm)
    h2 = F32(vg.height_mm / 2)
    if w2 <= 0.5 or d2 <= 0.5:
        return np.zeros(blk.shape, dtype=bool)
    n = F32(2.4 if vg.kind in ("lumbar", "sacral", "sacralised") else 2.1)
    an = np.abs(a) / w2
    bn = np.abs(b) / d2
    r = (an**n + bn**n) ** (1.0 / n)
    waist = F32(1.0) - F32(vg.waist) * np.clip(F32(1.0) - (c / h2) ** 2, 0, 1)
    rw = r / waist
    lip = np.zeros_like(rw)
    if vg.osteophyte_mm > 0:
        near_end = np.exp(-(((h2 - np.abs(c)) / F32(3.0)) ** 2))
        anterior = F32(0.5) + F32(0.5) * np.clip(-b / d2, 0, 1)
        lip = F32(vg.osteophyte_mm) * near_end * anterior / F32(0.5 * (w2 + d2))
    top = h2 - F32(vg.endplate_concavity_mm) * (F32(1.0) - np.clip(r, 0, 1) ** 2) - F32(shrink_mm)
    if vg.fracture is not None:
        loss = vg.fracture.loss_at(np.clip(b / d2, -1, 1), np.clip(r, 0, 1))
        top = top - F32(vg.height_mm / 2) * loss
    inside = (rw <= 1.0 + lip) & (np.abs(c) <= top + F32(extra_top_mm))
    notch = (a / F32(0.3 * vg.width_mm)) ** 2 + ((b - F32(vg.depth_mm * 0.62)) / F32(0.22 * vg.depth_mm)) ** 2 < 1
    return inside & ~notch


SLICE_SUBSAMPLE_MM = 0.5
"""The body's shell and interior are evaluated at sub-slice offsets about this far apart along the slice normal and
averaged: the partial volume a scanner integrates over a slice. Sampled only at slice centres, a ~1 mm endplate drawn
at 3-5 mm slices is missed by some columns and hit whole by others (a broken endplate no real CT shows)."""


def _slice_coverage(blk: Block, vg: VertebraGeom, shrinks_mm: tuple[float, ...],
                    a_b_c: tuple[npt.NDArray[np.float32], ...]) -> tuple[npt.NDArray[np.float32], ...]:
    """Share of each voxel's slice (box profile over the slice spacing) inside the body shrunk by each of
    ``shrinks_mm``; an odd number of offsets, so the slice centre is one of them."""
    dz = float(blk.grid.spacing_mm[2])
    n = max(1, int(np.ceil(dz / SLICE_SUBSAMPLE_MM)))
    n += 1 - n % 2
    along = vg.frame[:, 2].astype(F32)  # how the local coordinates move per mm along the grid's z
    a, b, c = a_b_c
    out = [np.zeros(blk.shape, dtype=F32) for _ in shrinks_mm]
    for k in range(n):
        dz_k = F32(((k + 0.5) / n - 0.5) * dz)
        shifted = (a + dz_k * along[0], b + dz_k * along[1], c + dz_k * along[2])
        for acc, shrink in zip(out, shrinks_mm, strict=True):
            acc += _body_fields(blk, vg, shrink, a_b_c=shifted)
    return tuple(acc / F32(n) for acc in out)


def _vertebra_block(g: Grid, vg: VertebraGeom, pad: float) -> Block | None:
    r = max(vg.width_mm, vg.depth_mm, vg.height_mm) / 2 + pad
    return g.block(vg.centre - r, vg.centre + r)


def paint_spine(cv: Canvas, anat: Anatomy, tissue: TissueHU, opts: RenderOptions) -> None:
    g = cv.grid
    vt = anat.vertebrae
    levels = list(vt)
    cort = tissue.cortical
    # spinal canal as a chain through the vertebral foramina
    caps = []
    for lv_a, lv_b in itertools.pairwise(levels):
        va, vb = vt[lv_a], vt[lv_b]
        pa = va.to_world(0.0, va.depth_mm / 2 + va.canal_depth_mm / 2 + 1.0, 0.0)
        pb = vb.to_world(0.0, vb.depth_mm / 2 + vb.canal_depth_mm / 2 + 1.0, 0.0)
        caps.append(Capsule(tuple(pa), tuple(pb), 0.42 * (va.canal_width_mm + vb.canal_width_mm) / 2))
    top = vt[levels[0]]
    caps.append(Capsule(tuple(top.to_world(0, top.depth_mm / 2 + 8.5, 0)),
                        tuple(top.to_world(0, top.depth_mm / 2 + 8.5, 120.0)), 0.42 * top.canal_width_mm))
    blk = g.block(*capsules_bbox(caps))
    if blk is not None:
        sd = union_sd(blk, caps)
        cv.paint(blk, sd < 0, L.SPINAL_CANAL, tissue.csf, texture=5.0)
        cv.paint(blk, sd < -4.5, L.SPINAL_CANAL, tissue.csf + 20.0, texture=5.0)  # cord
    # discs
    pairs = [(vt[a], vt[b]) for a, b in itertools.pairwise(levels)]
    if vt[V.S1].kind == "lumbar" and anat.sacral_segments:  # lumbarised S1: a disc between S1 and S2
        c2, f2, w2_, d2_, h2_ = anat.sacral_segments[0]
        pairs.append((vt[V.S1], dataclasses.replace(vt[V.S1], centre=c2, frame=f2, width_mm=w2_, depth_mm=d2_,
                                                    height_mm=h2_, fracture=None)))
    for vu, vl in pairs:
        centre = (vu.centre + vl.centre) / 2
        r = max(vu.width_mm, vu.depth_mm) / 2 + 8.0
        blk = g.block(centre - r, centre + r)
        if blk is None:
            continue
        au, bu, cu = local_coords(blk, vu.centre, vu.frame)
        al, bl, cl = local_coords(blk, vl.centre, vl.frame)
        ovl_u = 2.5 + (vu.height_mm * vu.fracture.max_loss / 2 if vu.fracture else 0.0)
        ovl_l = 2.5 + (vl.height_mm * vl.fracture.max_loss / 2 if vl.fracture else 0.0)
        between = (cu < F32(-vu.height_mm / 2 + ovl_u)) & (cl > F32(vl.height_mm / 2 - ovl_l))
        w2 = F32((vu.width_mm + vl.width_mm) / 4 * 1.02)
        d2 = F32((vu.depth_mm + vl.depth_mm) / 4 * 1.02)
        am = (au + al) / 2
        bm = (bu + bl) / 2
        r2 = (am / w2) ** 2 + (bm / d2) ** 2
        notch = (am / F32(0.3 * (vu.width_mm + vl.width_mm) / 2)) ** 2 + (
            (bm - F32(0.62 * (vu.depth_mm + vl.depth_mm) / 2)) / F32(0.22 * (vu.depth_mm + vl.depth_mm) / 2)) ** 2 < 1
        disc = between & (r2 <= 1.0) & ~notch
        cv.paint(blk, disc, L.DISC, tissue.disc_annulus, texture=8.0)
        cv.paint(blk, disc & (r2 < 0.35), L.DISC, tissue.disc_nucleus, texture=8.0)
    # vertebral bodies and posterior elements
    # The truth core stays clear of the partial-volume blur of the cortex: at least 2.5 blur sigmas (in-plane and
    # through-plane) inside the shell, so its noise-free HU is the declared value everywhere, not only on average.
    margin_xy = max(0.6 * max(g.spacing_mm[:2]) + 0.3, 2.5 * max(opts.blur_xy_mm, 0.45 * max(g.spacing_mm[:2])))
    margin_z = max(0.6 * g.spacing_mm[2] + 0.3, 2.5 * opts.blur_z_mm)
    for lv in levels:
        vg = vt[lv]
        trab = opts.trabecular_hu[lv]
        _paint_posterior(cv, vg, trab, cort, anat)
        blk = _vertebra_block(g, vg, 8.0)
        if blk is None:
            continue
        abc = local_coords(blk, vg.centre, vg.frame)
        outer = _body_fields(blk, vg, 0.0, a_b_c=abc)
        t_eff = shell_mm(g, vg.cortical_mm)
        inner = _body_fields(blk, vg, t_eff, a_b_c=abc)
        core = _body_fields(blk, vg, t_eff + margin_xy, extra_top_mm=min(0.0, margin_xy - margin_z), a_b_c=abc)
        shell = shell_hu(cort, trab, vg.cortical_mm, t_eff)
        around = cv.hu[blk.slices].copy()
        cv.paint(blk, outer, L.body_shell(lv), shell, texture=60.0)
        cv.paint(blk, inner, L.body_shell(lv), trab, texture=35.0)
        cv.paint(blk, core, L.body_core(lv), trab, texture=35.0)
        f_outer, f_inner = _slice_coverage(blk, vg, (0.0, t_eff), abc)
        body_hu = f_inner * F32(trab) + (f_outer - f_inner) * F32(shell) + (F32(1.0) - f_outer) * around
        np.copyto(cv.hu[blk.slices], body_hu.astype(F32), where=(f_outer > 0) | outer)
        cv.core_hu[L.body_core(lv)] = trab
        cv.core_blocks[L.body_core(lv)] = blk.slices
    _paint_sacrum(cv, anat, tissue, opts)


def _posterior_capsules(vg: VertebraGeom) -> list[Capsule]:
    w = vg.to_world
    d2 = vg.depth_mm / 2
    h = vg.height_mm
    pr = vg.pedicle_radius_mm
    pa = vg.canal_width_mm / 2 + pr * 0.8
    cp = 0.12 * h
    b_ped = d2 + vg.pedicle_length_mm
    b_lam = b_ped + vg.canal_depth_mm * 0.75
    caps: list[Capsule] = []
    lam_r = 3.0 if vg.kind != "lumbar" else 3.8
    for s in (1.0, -1.0):
        caps.append(Capsule(tuple(w(s * pa, d2 - 4.0, cp)), tuple(w(s * pa, b_ped, cp)), pr))
        for dc in (-0.25 * h, 0.2 * h):
            caps.append(Capsule(tuple(w(s * pa, b_ped, cp + dc)), tuple(w(s * 2.0, b_lam, cp + dc - 2.0)), lam_r))
        ang = np.deg2rad(vg.transverse_angle_deg)
        tl = vg.transverse_length_mm
        tp_r = 4.5 if vg.kind in ("thoracic", "sacralised") else 3.8
        tp_end = (s * (pa + tl * np.cos(ang)), b_ped + tl * np.sin(ang), cp + (2.0 if vg.kind == "thoracic" else 0))
        if vg.kind == "sacralised":
            tp_end = (s * (pa + tl * 0.9), b_ped - 6.0, cp - 0.5 * h)
        caps.append(Capsule(tuple(w(s * pa, b_ped, cp)), tuple(w(*tp_end)), tp_r))
        # articular processes
        caps.append(Capsule(tuple(w(s * pa, b_ped + 2.0, cp)), tuple(w(s * (pa + 1.0), b_ped + 4.0, cp + 0.55 * h)),
                            3.8))
        caps.append(Capsule(tuple(w(s * pa * 0.9, b_ped + 6.0, cp)), tuple(w(s * pa * 0.8, b_ped + 9.0, cp - 0.6 * h)),
                            3.8))
    sa = np.deg2rad(vg.spinous_angle_deg)
    sl = vg.spinous_length_mm
    sp_r = 3.5 if vg.kind != "lumbar" else 4.0
    offsets = (0.0,) if vg.kind not in ("lumbar", "sacralised") else (-5.0, 0.0, 5.0)
    for dc in offsets:
        caps.append(Capsule(tuple(w(0.0, b_lam - 1.0, cp - 2.0 + dc)),
                            tuple(w(0.0, b_lam + sl * np.cos(sa), cp - 2.0 + dc - sl * np.sin(sa))), sp_r))
    return caps


def _paint_posterior(cv: Canvas, vg: VertebraGeom, trab: float, cort: float, anat: Anatomy) -> None:
    if vg.kind == "sacral":
        caps = _sacral_posterior(vg)
    else:
        caps = _posterior_capsules(vg)
    blk = cv.grid.block(*capsules_bbox(caps))
    if blk is None:
        return
    sd = union_sd(blk, caps)
    label = L.posterior(vg.level)
    t_eff = shell_mm(cv.grid, 1.0)
    cv.paint(blk, sd < 0, label, shell_hu(cort * 0.8, trab + 50.0, 1.0, t_eff), texture=50.0)
    cv.paint(blk, sd < -t_eff, label, trab + 50.0, texture=35.0)


def _sacral_posterior(vg: VertebraGeom) -> list[Capsule]:
    w = vg.to_world
    d2 = vg.depth_mm / 2
    pa = vg.canal_width_mm / 2 + 3.0
    b_ped = d2 + 7.0
    caps = []
    for s in (1.0, -1.0):
        caps.append(Capsule(tuple(w(s * pa, d2 - 3.0, 0.0)), tuple(w(s * pa, b_ped, 0.0)), 5.0))
        caps.append(Capsule(tuple(w(s * pa, b_ped, 0.0)), tuple(w(s * 3.0, b_ped + 12.0, -4.0)), 4.0))
        caps.append(Capsule(tuple(w(s * pa, b_ped, 0.2 * vg.height_mm)),
                            tuple(w(s * (pa + 2.0), b_ped + 3.0, 0.6 * vg.height_mm)), 4.0))
    caps.append(Capsule(tuple(w(0.0, b_ped + 12.0, 0.0)), tuple(w(0.0, b_ped + 22.0, -8.0)), 4.0))
    return caps


def _paint_sacrum(cv: Canvas, anat: Anatomy, tissue: TissueHU, opts: RenderOptions) -> None:
    g = cv.grid
    vt = anat.vertebrae
    s1 = vt[V.S1]
    trab = opts.trabecular_hu[V.S1] * 0.9
    cort = tissue.cortical * 0.85
    caps: list[Capsule] = []
    # segments below S1 as short thick capsules along the sacral curve
    prev = s1.centre if s1.kind == "sacral" else None
    for centre, frame, w, d, _h in anat.sacral_segments:
        if prev is not None:
            caps.append(Capsule(tuple(prev), tuple(centre), min(w, d) / 2))
        for s in (-1.0, 1.0):
            caps.append(Capsule(tuple(centre), tuple(centre + s * frame[0] * (w / 2 - d / 4)), d / 2))
        prev = centre
    # alae beside the first sacral segment (S1 normally; S2 after a lumbarised S1)
    if s1.kind == "sacral":
        ala_owner = (s1.centre, s1.frame, s1.width_mm, s1.depth_mm, s1.height_mm)
    else:
        ala_owner = anat.sacral_segments[0]
    c0, f0, w0, d0, h0 = ala_owner
    for s in (-1.0, 1.0):
        for dc in (0.15 * h0, -0.35 * h0):
            p0 = c0 + s * f0[0] * (w0 / 2 - 4.0) + f0[1] * 2.0 + f0[2] * dc
            p1 = c0 + s * f0[0] * (w0 / 2 + 30.0) + f0[1] * (d0 * 0.3) + f0[2] * (dc - 6.0)
            caps.append(Capsule(tuple(p0), tuple(p1), 0.42 * d0))
    if not caps:
        return
    blk = g.block(*capsules_bbox(caps))
    if blk is None:
        return
    sd = union_sd(blk, caps)
    # S1 and its posterior elements are painted before; keep them (the sacrum only fills the rest)
    keep = cv.labels[blk.slices]
    free = ~np.isin(keep, (L.body_shell(V.S1), L.body_core(V.S1), L.posterior(V.S1)))
    cv.paint(blk, (sd < 0) & free, L.SACRUM, cort, texture=50.0)
    cv.paint(blk, (sd < -1.5) & free, L.SACRUM, trab, texture=35.0)
