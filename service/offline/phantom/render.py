"""Paint the anatomy onto a canonical grid: a label map and a noise-free, unblurred HU map.

Painter's order: later structures override earlier ones (soft tissue, organs, then bone, then metal). Every
structure is evaluated analytically only inside its own bounding block, so the cost follows the anatomy, not the
whole volume. HU values are those of the acquisition (kVp, contrast) before blur and noise.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from service.domain.levels import VertebraLevel
from service.offline.phantom import labels as L  # noqa: N812
from service.offline.phantom.anatomy import Anatomy, VertebraGeom, cavity
from service.offline.phantom.density import FAT_HU_BY_KVP, IODINE_KVP_FACTOR, MINERAL_KVP_FACTOR
from service.offline.phantom.grid import F32, Block, Capsule, Grid, SmoothField, capsules_bbox, local_coords, union_sd

logger = logging.getLogger(__name__)
V = VertebraLevel

METAL_HU = 3071.0
"""12-bit CT scale maximum; metal saturates as on most clinical reconstructions."""


@dataclass(frozen=True)
class TissueHU:
    """HU of the soft tissues for one acquisition (kVp, contrast)."""

    fat: float
    muscle: float
    skin: float
    lung: float
    blood: float
    myocardium: float
    liver: float
    spleen: float
    kidney_cortex: float
    kidney_medulla: float
    bowel_wall: float
    bowel_content: float
    disc_annulus: float
    disc_nucleus: float
    csf: float
    cartilage: float
    cortical: float
    air: float = -1000.0

    @staticmethod
    def for_acquisition(kvp: int, contrast: bool, cortical_hu_120: float) -> TissueHU:
        iodine = IODINE_KVP_FACTOR[kvp] if contrast else 0.0
        mineral = MINERAL_KVP_FACTOR[kvp]
        # unenhanced values: fat -100, muscle ~50, blood ~40, liver ~55, spleen ~45, kidney ~30 (standard CT
        # attenuation tables); portal-venous enhancement: blood +130, liver +50, spleen +65, kidney cortex +140.
        return TissueHU(
            fat=FAT_HU_BY_KVP[kvp],
            muscle=50.0 + 8.0 * iodine,
            skin=35.0,
            lung=-855.0,
            blood=42.0 + 130.0 * iodine,
            myocardium=45.0 + 60.0 * iodine,
            liver=56.0 + 50.0 * iodine,
            spleen=46.0 + 65.0 * iodine,
            kidney_cortex=32.0 + 140.0 * iodine,
            kidney_medulla=30.0 + 80.0 * iodine,
            bowel_wall=40.0 + 60.0 * iodine,
            bowel_content=15.0,
            disc_annulus=95.0,
            disc_nucleus=75.0,
            csf=12.0,
            cartilage=110.0,
            cortical=cortical_hu_120 * mineral,
        )


@dataclass
class Canvas:
    """Label and HU arrays in Fortran order (x fastest) so that axial slices are contiguous."""

    grid: Grid
    labels: npt.NDArray[np.int16]
    hu: npt.NDArray[np.float32]
    texture_amp: npt.NDArray[np.uint8]
    """Per-voxel amplitude (HU, 0-255) of the tissue texture added later."""
    core_hu: dict[int, float] = field(default_factory=dict)
    core_blocks: dict[int, tuple[slice, slice, slice]] = field(default_factory=dict)

    @staticmethod
    def empty(grid: Grid) -> Canvas:
        return Canvas(
            grid=grid,
            labels=np.zeros(grid.shape, dtype=np.int16, order="F"),
            hu=np.full(grid.shape, F32(-1000.0), dtype=F32, order="F"),
            texture_amp=np.zeros(grid.shape, dtype=np.uint8, order="F"),
        )

    def paint(
        self,
        block: Block,
        mask: npt.NDArray[np.bool_],
        label: int,
        hu: float | npt.NDArray[np.float32],
        texture: float = 0.0,
    ) -> None:
        if not mask.any():
            return
        sl = block.slices
        where = np.broadcast_to(mask, block.shape)
        np.copyto(self.labels[sl], np.int16(label), where=where)
        if np.ndim(hu) == 0:
            np.copyto(self.hu[sl], F32(hu), where=where)
        else:
            np.copyto(self.hu[sl], np.broadcast_to(np.asarray(hu, dtype=F32), block.shape), where=where)
        np.copyto(self.texture_amp[sl], np.uint8(min(max(texture, 0.0), 255.0)), where=where)


@dataclass(frozen=True)
class RenderOptions:
    kvp: int
    contrast: bool
    trabecular_hu: dict[VertebraLevel, float]
    table: bool = True
    calibration_rods: tuple[tuple[float, float, float, float], ...] = ()
    """(x, y, radius, hu) of each rod; rods run along z over ``calibration_z``."""
    calibration_box: tuple[float, float, float, float] | None = None
    """(x0, x1, y0, y1) of the calibration phantom body."""
    calibration_z: tuple[float, float] = (0.0, 0.0)
    table_y: float = 0.0
    bone_island: tuple[VertebraLevel, tuple[float, float, float], float] | None = None
    screw_levels: tuple[VertebraLevel, ...] = ()
    blur_xy_mm: float = 0.65
    """In-plane Gaussian sigma of the acquisition blur (the core margin depends on it)."""
    blur_z_mm: float = 0.42
    """Through-plane Gaussian sigma of the slice profile."""


def render(anat: Anatomy, grid: Grid, opts: RenderOptions, rng: np.random.Generator) -> Canvas:
    """Paint all structures; returns the canvas (labels, unblurred HU, texture amplitudes, core HU)."""
    tissue = TissueHU.for_acquisition(opts.kvp, opts.contrast, anat.cortical_hu_120)
    cv = Canvas.empty(grid)
    if opts.table:
        _paint_table(cv, opts)
    if opts.calibration_box is not None:
        _paint_calibration(cv, opts)
    _paint_torso(cv, anat, tissue)
    if anat.arms_in_fov:
        _paint_arms(cv, anat, tissue)
    if anat.extras.get("breast_size", 0.0) > 0:
        _paint_breasts(cv, anat, tissue, rng)
    _paint_thorax(cv, anat, tissue)
    _paint_abdomen(cv, anat, tissue, rng)
    _paint_ribs_and_sternum(cv, anat, tissue, opts)
    _paint_shoulder_girdle(cv, anat, tissue, opts)
    _paint_pelvis(cv, anat, tissue, opts)
    _paint_spine(cv, anat, tissue, opts)
    if opts.bone_island is not None:
        _paint_bone_island(cv, opts, tissue)
    if opts.screw_levels:
        _paint_screws(cv, anat, opts.screw_levels)
    return cv


# ----------------------------------------------------------------------------------------------- torso


def _paint_table(cv: Canvas, opts: RenderOptions) -> None:
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


def _paint_calibration(cv: Canvas, opts: RenderOptions) -> None:
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


def _slices(cv: Canvas, z_lo: float = -1e9, z_hi: float = 1e9):  # type: ignore[no-untyped-def]
    """Yield (k, single-slice Block) for the slices with z in [z_lo, z_hi]."""
    g = cv.grid
    zs = g.axis(2)
    for k in np.nonzero((zs >= z_lo) & (zs <= z_hi))[0]:
        yield int(k), Block(g, (slice(0, g.shape[0]), slice(0, g.shape[1]), slice(int(k), int(k) + 1)))


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


def _paint_torso(cv: Canvas, anat: Anatomy, tissue: TissueHU) -> None:
    t = anat.torso
    vt = anat.vertebrae
    lv_z = [vt[lv].centre[2] for lv in reversed(list(vt))]
    lv_w = [vt[lv].width_mm / 2 for lv in reversed(list(vt))]
    lv_d = [vt[lv].depth_mm / 2 for lv in reversed(list(vt))]
    z_t12 = float(vt[V.T12].centre[2])
    for _k, blk in _slices(cv):
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


def _paint_breasts(cv: Canvas, anat: Anatomy, tissue: TissueHU, rng: np.random.Generator) -> None:
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
        rr = _ellipsoid(blk, centre, axes)
        inside = rr < 1.0
        if not inside.any():
            continue
        cv.paint(blk, inside, L.SUBCUTANEOUS_FAT, tissue.fat, texture=12.0)
        field = SmoothField(rng, blk.shape, sigma_vox=4.0 / min(cv.grid.spacing_mm))
        gland = np.concatenate([field.plane(k) for k in range(blk.shape[2])], axis=2)
        cv.paint(blk, inside & (rr < 0.8) & (gland > 0.4), L.SUBCUTANEOUS_FAT, 35.0, texture=12.0)
        cv.paint(blk, inside & (rr > 1.0 - 1.8 / min(axes)) & (cv.labels[blk.slices] != L.MUSCLE), L.SKIN,
                 tissue.skin, texture=8.0)


def _paint_arms(cv: Canvas, anat: Anatomy, tissue: TissueHU) -> None:
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


# ---------------------------------------------------------------------------------------------- thorax


def _diaphragm_z(anat: Anatomy, x: npt.NDArray[np.float32], y: npt.NDArray[np.float32],
                 cy: npt.NDArray[np.float32], ax: npt.NDArray[np.float32], by: npt.NDArray[np.float32],
                 cx: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """z of the diaphragm surface over (x, y): two domes, lower laterally and posteriorly."""
    dome = np.where(x < cx, F32(anat.diaphragm_right_z), F32(anat.diaphragm_left_z))
    lat = np.maximum((np.abs(x - cx) / ax - 0.45) / 0.55, F32(-0.35))
    post = np.clip((y - cy) / by, -1.0, 1.0)
    return dome - F32(40.0) * lat**2 - F32(30.0) * np.clip(post, 0, 1) ** 2 - F32(8.0) * np.clip(-post, 0, 1) ** 2


def _cavity_fields(blk: Block, anat: Anatomy) -> tuple[npt.NDArray[np.float32], ...]:
    z = blk.Z[0, 0, :].astype(np.float64)
    cx, cy, ax, by = (a.astype(F32)[None, None, :] for a in cavity(anat.torso, z))
    rc = np.sqrt(((blk.X - cx) / ax) ** 2 + ((blk.Y - cy) / by) ** 2)
    return rc, cx, cy, ax, by


def _paint_thorax(cv: Canvas, anat: Anatomy, tissue: TissueHU) -> None:
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
    for k, blk in _slices(cv, z_lo, anat.lung_apex_z + 5.0):
        z = float(blk.Z[0, 0, 0])
        half_w = float(np.interp(z, lv_z, lv_w))
        half_d = float(np.interp(z, lv_z, lv_d))
        rc, cx, cy, ax, by = _cavity_fields(blk, anat)
        zd = _diaphragm_z(anat, blk.X, blk.Y, cy, ax, by, cx)
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


def _paint_mediastinum(cv: Canvas, anat: Anatomy, tissue: TissueHU) -> None:
    g = cv.grid
    vt = anat.vertebrae
    # heart with pericardial fat
    hc = anat.heart_centre
    axes = np.asarray(anat.heart_axes_mm)
    ang = np.deg2rad(35.0)
    rot = np.array([[np.cos(ang), np.sin(ang), 0.0], [-np.sin(ang), np.cos(ang), 0.0], [0.0, 0.0, 1.0]])
    rmax = float(axes.max()) + 10.0
    blk = g.block(hc - rmax, hc + rmax)
    if blk is not None:
        a, b, c = local_coords(blk, hc, rot)
        rr = np.sqrt((a / axes[0]) ** 2 + (b / axes[1]) ** 2 + (c / axes[2]) ** 2)
        cv.paint(blk, rr < 1.0 + 7.0 / axes.min(), L.VISCERAL_FAT, tissue.fat, texture=12.0)
        cv.paint(blk, rr < 1.0, L.HEART, tissue.myocardium, texture=6.0)
        cv.paint(blk, rr < 0.72, L.HEART, tissue.blood, texture=5.0)
        if tissue.blood > 100:  # enhanced chambers with a septum
            septum = (np.abs(a - 0.1 * axes[0]) < 5.0) & (rr < 0.8)
            cv.paint(blk, septum, L.HEART, tissue.myocardium, texture=5.0)
    heart_top = hc[2] + axes[2] * 0.8
    z_t4 = float(vt[V.T4].centre[2])
    z_t3 = float(vt[V.T3].centre[2])

    def sp(z: float) -> tuple[float, float, float]:
        return (float(anat.torso.at(z, "spine_x")), float(anat.torso.at(z, "spine_y")),
                float(np.interp(z, [vt[lv].centre[2] for lv in reversed(list(vt))],
                                [vt[lv].depth_mm for lv in reversed(list(vt))])))

    tubes: list[tuple[list[Capsule], int, float, float]] = []
    # aorta: ascending, arch, descending (left anterolateral of the spine), abdominal, bifurcation at L4
    sx, sy, d = sp(z_t4)
    arch_z = z_t4 - 5.0
    asc = (hc[0] - 35.0, hc[1] - 15.0, heart_top - 15.0)
    arch_top = (hc[0] - 20.0, hc[1] - 5.0, arch_z + 15.0)
    arch_back = (sx + 18.0, sy - d / 2 - 14.0, arch_z + 5.0)
    pts = [asc, (hc[0] - 33.0, hc[1] - 15.0, arch_z), arch_top, (sx + 10.0, sy - d / 2 - 35.0, arch_z + 18.0),
           arch_back]
    z_l4 = float(vt[V.L4].centre[2])
    for z in np.linspace(arch_z - 20.0, z_l4, 14):
        sx, sy, d = sp(float(z))
        frac = np.clip((arch_z - z) / max(arch_z - z_l4, 1.0), 0, 1)
        pts.append((sx + 18.0 - 10.0 * frac, sy - d / 2 - 14.0 + 2.0 * frac, float(z)))
    radii = [15.0, 15.0, 14.0, 13.0, 12.0] + [12.0 - 2.5 * k / 13 for k in range(14)]
    caps = [Capsule(pts[k], pts[k + 1], radii[k + 1]) for k in range(len(pts) - 1)]
    sx, sy, d = sp(z_l4)
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
    # trachea and main bronchi (air inside a soft-tissue wall), esophagus
    z_carina = float(vt[V.T5].centre[2])
    sx, sy, d = sp(z_carina)
    top = (sx, float(anat.torso.at(anat.lung_apex_z + 60.0, "spine_y")) - d / 2 - 22.0, anat.lung_apex_z + 80.0)
    car = (sx, sy - d / 2 - 22.0, z_carina)
    bl = (sx + 45.0, sy - d / 2 - 10.0, z_carina - 30.0)
    br = (sx - 40.0, sy - d / 2 - 12.0, z_carina - 20.0)
    airway = [Capsule(top, car, 9.0), Capsule(car, bl, 6.5), Capsule(car, br, 7.0)]
    tubes.append(([Capsule(c.p0, c.p1, c.radius_mm + 2.0) for c in airway], L.AIRWAY, 40.0, 5.0))
    tubes.append((airway, L.AIRWAY, tissue.air, 3.0))
    eso = []
    prev = None
    for z in np.linspace(anat.lung_apex_z + 80.0, anat.diaphragm_left_z - 10.0, 10):
        sx, sy, d = sp(float(z))
        frac = np.clip((z_carina - z) / 150.0, 0, 1)
        p = (sx + 6.0 + 25.0 * frac**3, sy - d / 2 - 8.0 - 10.0 * frac**2, float(z))
        if prev is not None:
            eso.append(Capsule(prev, p, 7.0))
        prev = p
    tubes.append((eso, L.ESOPHAGUS, 40.0, 6.0))
    for caps, label, hu, tex in tubes:
        blk = g.block(*capsules_bbox(caps, 2.0))
        if blk is None:
            continue
        sd = union_sd(blk, caps)
        cv.paint(blk, sd < 0, label, hu, texture=tex)


# --------------------------------------------------------------------------------------------- abdomen


def _ellipsoid(blk: Block, c: npt.ArrayLike, axes: tuple[float, float, float]) -> npt.NDArray[np.float32]:
    c = np.asarray(c, dtype=F32)
    return np.sqrt(((blk.X - c[0]) / axes[0]) ** 2 + ((blk.Y - c[1]) / axes[1]) ** 2 + ((blk.Z - c[2]) / axes[2]) ** 2)


def _organ_block(cv: Canvas, anat: Anatomy, centre: npt.ArrayLike, axes: tuple[float, float, float]
                 ) -> tuple[Block, npt.NDArray[np.float32], npt.NDArray[np.bool_]] | None:
    """Block around an ellipsoidal organ, its normalised radius, and 'inside the abdominal cavity'."""
    c = np.asarray(centre, dtype=np.float64)
    ext = np.asarray(axes) + 2.0
    blk = cv.grid.block(c - ext, c + ext)
    if blk is None:
        return None
    rc, cx, cy, ax, by = _cavity_fields(blk, anat)
    zd = _diaphragm_z(anat, blk.X, blk.Y, cy, ax, by, cx)
    inside = (rc < 1.0) & (zd - 5.0 >= blk.Z)
    return blk, _ellipsoid(blk, c, axes), inside


def _paint_abdomen(cv: Canvas, anat: Anatomy, tissue: TissueHU, rng: np.random.Generator) -> None:
    g = cv.grid
    vt = anat.vertebrae
    z_top = max(anat.diaphragm_right_z, anat.diaphragm_left_z) + 5.0
    z_bot = float(vt[V.S1].centre[2]) - 120.0
    ablk = g.block((-1e4, -1e4, z_bot), (1e4, 1e4, z_top))
    if ablk is None:
        return
    sp = min(g.spacing_mm[:2])
    n1 = SmoothField(rng, ablk.shape, 5.0 / sp)
    n2 = SmoothField(rng, ablk.shape, 7.0 / sp)
    k0 = ablk.slices[2].start
    z_t12 = float(vt[V.T12].centre[2])
    z_s1 = float(vt[V.S1].centre[2])
    levels_z = [vt[lv].centre[2] for lv in reversed(list(vt))]
    levels_w = [vt[lv].width_mm for lv in reversed(list(vt))]
    for k, blk in _slices(cv, z_bot, z_top):
        z = float(blk.Z[0, 0, 0])
        rc, cx, cy, ax, by = _cavity_fields(blk, anat)
        zd = _diaphragm_z(anat, blk.X, blk.Y, cy, ax, by, cx)
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
    del n1, n2
    cav_mid = cavity(anat.torso, np.array([anat.diaphragm_right_z - 60.0]))
    a_ref = float(cav_mid[2][0])
    b_ref = float(cav_mid[3][0])
    cy_ref = float(cav_mid[1][0])
    ls = anat.liver_shift
    z_dr = anat.diaphragm_right_z
    z_dl = anat.diaphragm_left_z
    # liver: right lobe + left lobe under the right dome
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
    # kidneys (retroperitoneal, lateral to L1-L2), with cortex, medulla and sinus fat
    z_l1 = float(vt[V.L1].centre[2])
    for sgn, label, dz in ((1.0, L.KIDNEY_LEFT, 0.0), (-1.0, L.KIDNEY_RIGHT, -15.0)):
        sx = float(anat.torso.at(z_l1, "spine_x"))
        syv = float(anat.torso.at(z_l1, "spine_y"))
        kc = (sx + sgn * 62.0, syv + 12.0, z_l1 + dz + anat.kidney_shift_mm)
        blk = g.block(np.asarray(kc) - 60.0, np.asarray(kc) + 60.0)
        if blk is None:
            continue
        kid = _ellipsoid(blk, kc, (27.0, 24.0, 55.0))
        perirenal = _ellipsoid(blk, kc, (38.0, 33.0, 66.0))
        cv.paint(blk, (perirenal < 1.0) & (cv.labels[blk.slices] != L.MUSCLE), L.VISCERAL_FAT, tissue.fat,
                 texture=12.0)
        cv.paint(blk, kid < 1.0, label, tissue.kidney_cortex, texture=6.0)
        cv.paint(blk, kid < 0.72, label, tissue.kidney_medulla, texture=6.0)
        sinus = _ellipsoid(blk, (kc[0] - sgn * 14.0, kc[1] - 4.0, kc[2]), (12.0, 10.0, 25.0))
        cv.paint(blk, (sinus < 1.0) & (kid < 1.0), label, tissue.fat + 20.0, texture=10.0)
    # inferior vena cava (right of the aorta)
    caps = []
    prev = None
    for z in np.linspace(float(vt[V.L4].centre[2]), anat.diaphragm_right_z + 10.0, 10):
        sxx = float(anat.torso.at(z, "spine_x"))
        syy = float(anat.torso.at(z, "spine_y"))
        p = (sxx - 22.0, syy - 30.0, float(z))
        if prev is not None:
            caps.append(Capsule(prev, p, 10.5))
        prev = p
    sub = g.block(*capsules_bbox(caps, 2.0))
    if sub is not None:
        sd = union_sd(sub, caps)
        cv.paint(sub, sd < 0, L.IVC, tissue.blood * 0.92 + 3.0, texture=5.0)


# ----------------------------------------------------------------------------------------------- spine


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


def _shell_mm(g: Grid, thickness_mm: float) -> float:
    """Cortical shell thickness drawn on this grid: at least half a voxel, so coarse grids do not alias it."""
    return max(thickness_mm, 0.5 * max(g.spacing_mm))


def _shell_hu(cortical_hu: float, inner_hu: float, thickness_mm: float, drawn_mm: float) -> float:
    """HU of a shell drawn ``drawn_mm`` thick for a true ``thickness_mm``: the same mineral per area."""
    return inner_hu + (cortical_hu - inner_hu) * thickness_mm / drawn_mm


def _vertebra_block(g: Grid, vg: VertebraGeom, pad: float) -> Block | None:
    r = max(vg.width_mm, vg.depth_mm, vg.height_mm) / 2 + pad
    return g.block(vg.centre - r, vg.centre + r)


def _paint_spine(cv: Canvas, anat: Anatomy, tissue: TissueHU, opts: RenderOptions) -> None:
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
        ovl_u = 2.5 + (vu.height_mm * vu.fracture.height_loss / 2 if vu.fracture else 0.0)
        ovl_l = 2.5 + (vl.height_mm * vl.fracture.height_loss / 2 if vl.fracture else 0.0)
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
        t_eff = _shell_mm(g, vg.cortical_mm)
        inner = _body_fields(blk, vg, t_eff, a_b_c=abc)
        core = _body_fields(blk, vg, t_eff + margin_xy, extra_top_mm=min(0.0, margin_xy - margin_z), a_b_c=abc)
        cv.paint(blk, outer, L.body_shell(lv), _shell_hu(cort, trab, vg.cortical_mm, t_eff), texture=60.0)
        cv.paint(blk, inner, L.body_shell(lv), trab, texture=35.0)
        cv.paint(blk, core, L.body_core(lv), trab, texture=35.0)
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
    t_eff = _shell_mm(cv.grid, 1.0)
    cv.paint(blk, sd < 0, label, _shell_hu(cort * 0.8, trab + 50.0, 1.0, t_eff), texture=50.0)
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


# ----------------------------------------------------------------------------------------- ribs & co.


def _paint_ribs_and_sternum(cv: Canvas, anat: Anatomy, tissue: TissueHU, opts: RenderOptions) -> None:
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
        t_eff = _shell_mm(g, 0.8)
        cv.paint(blk, sd < 0, label, _shell_hu(cort * 0.9, trab, 0.8, t_eff), texture=50.0)
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


def _paint_shoulder_girdle(cv: Canvas, anat: Anatomy, tissue: TissueHU, opts: RenderOptions) -> None:
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


def _paint_pelvis(cv: Canvas, anat: Anatomy, tissue: TissueHU, opts: RenderOptions) -> None:
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


def _paint_bone_island(cv: Canvas, opts: RenderOptions, tissue: TissueHU) -> None:
    if opts.bone_island is None:
        return
    level, centre, radius = opts.bone_island
    blk = cv.grid.block(np.asarray(centre) - radius - 2, np.asarray(centre) + radius + 2)
    if blk is None:
        return
    rr = _ellipsoid(blk, centre, (radius, radius, radius * 0.8))
    inside_body = np.isin(cv.labels[blk.slices], (L.body_shell(level), L.body_core(level)))
    # labelled as the body shell value: the body mask is intact, the truth core excludes the island
    cv.paint(blk, (rr < 1.0) & inside_body, L.body_shell(level), tissue.cortical * 0.95, texture=30.0)


def _paint_screws(cv: Canvas, anat: Anatomy, levels: tuple[VertebraLevel, ...]) -> None:
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
