"""A stack of vertebral bodies with known deformities, rendered on a fine grid and averaged to CT voxels.

Each body is an elliptical cylinder (40 mm wide, 30 mm deep) with a 1 mm cortical shell (endplates and walls),
cancellous bone inside, discs between bodies and soft tissue around. Deformities are set by geometry, so the truth
does not come from the code under test:

* ``wedge`` L: the upper endplate is a plane through height H at the posterior column centre (11 % of the depth
  from the posterior wall) and H * (1 - L) at the anterior column centre (89 %): anterior / posterior = 1 - L;
* ``biconcave`` L: both endplates depressed by H * L / 2 over the central AP fifth (and the central 24 mm laterally),
  ramping to 0 at 15 % / 85 % of the depth: middle / posterior = 1 - L;
* ``crush`` L: the whole body H * (1 - L) high.

The CT is the fine image averaged over each voxel (partial volume of the slice thickness and pixel) plus Gaussian
noise. Masks are the voxels at least half inside a body; ``corrupt_*`` cut them the way a blocky segmenter does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from service.domain.levels import VertebraLevel
from service.domain.volume import CTVolume
from service.measurement.geometry import CroppedMask, crop_labels, mask_centroid_lps, vertebra_frame

FINE_MM = 0.5
HALF_WIDTH_MM = 20.0
HALF_DEPTH_MM = 15.0
CORTEX_MM = 1.0
FIELD_XY_MM = (64.0, 48.0)
RIMLESS_FROM_T = 0.35


@dataclass(frozen=True)
class Deformity:
    kind: str  # "wedge", "biconcave", "crush"
    loss: float
    rimless: bool = False
    """The upper endplate drawn without its cortex in front of RIMLESS_FROM_T (a collapsed endplate without a bright
    rim); the posterior part keeps it."""


@dataclass(frozen=True)
class Tissue:
    cancellous_hu: float = 150.0
    cortex_hu: float = 700.0
    disc_hu: float = 90.0
    soft_hu: float = 40.0
    noise_hu: float = 15.0


@dataclass(frozen=True)
class Stack:
    volume: CTVolume
    labels: npt.NDArray[np.int16]
    levels: tuple[VertebraLevel, ...]


def _ramp(x: npt.NDArray[np.float64], flat: float, zero: float) -> npt.NDArray[np.float64]:
    """1 for |x| <= flat, 0 for |x| >= zero, linear between."""
    return np.clip((zero - np.abs(x)) / (zero - flat), 0.0, 1.0)


def _surfaces(t: npt.NDArray[np.float64], x: npt.NDArray[np.float64], height: float, deformity: Deformity | None
              ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Lower and upper endplate heights above the body's base at AP position t (0 posterior ... 1 anterior)."""
    low = np.zeros_like(t)
    high = np.full_like(t, height)
    if deformity is None:
        return low, high
    loss = deformity.loss
    if deformity.kind == "wedge":
        high = height * (1.0 - loss * (t - 0.11) / 0.78)
        high = np.minimum(high, height * (1.0 + loss * 0.11 / 0.78))
    elif deformity.kind == "biconcave":
        dip = 0.5 * height * loss * _ramp(t - 0.5, 0.1, 0.35) * _ramp(x, 12.0, 18.0)
        low, high = low + dip, high - dip
    elif deformity.kind == "crush":
        high = np.full_like(t, height * (1.0 - loss))
    else:
        raise ValueError(f"unknown deformity {deformity.kind!r}")
    return low, high


def render_stack(levels: tuple[VertebraLevel, ...], deformities: dict[VertebraLevel, Deformity] | None = None,
                 height_mm: float = 25.0, disc_mm: float = 6.0, slice_mm: float = 3.0, pixel_mm: float = 1.0,
                 tissue: Tissue | None = None, seed: int = 0) -> Stack:
    """Bodies cranial (first) to caudal, rendered at FINE_MM and averaged to pixel x pixel x slice voxels."""
    deformities = deformities or {}
    tissue = tissue or Tissue()
    fxy, fz = round(pixel_mm / FINE_MM), round(slice_mm / FINE_MM)
    margin_mm = 2 * disc_mm + slice_mm  # disc and soft tissue above the first and below the last body
    top_of_stack = margin_mm + len(levels) * (height_mm + disc_mm)
    total_mm = top_of_stack + margin_mm
    nz = int(np.ceil(total_mm / slice_mm)) * fz
    nx, ny = (int(FIELD_XY_MM[0] / pixel_mm) * fxy, int(FIELD_XY_MM[1] / pixel_mm) * fxy)
    x = (np.arange(nx) + 0.5) * FINE_MM - FIELD_XY_MM[0] / 2  # lateral (L), 0 at the body centre
    y = (np.arange(ny) + 0.5) * FINE_MM - FIELD_XY_MM[1] / 2  # posterior (P)
    z = (np.arange(nz) + 0.5) * FINE_MM  # superior (S)
    xx, yy = np.meshgrid(x, y, indexing="ij")
    r = np.sqrt((xx / HALF_WIDTH_MM) ** 2 + (yy / HALF_DEPTH_MM) ** 2)
    wall_dist = (1.0 - r) * min(HALF_WIDTH_MM, HALF_DEPTH_MM)  # approximate distance inside the wall
    t = (HALF_DEPTH_MM - yy) / (2 * HALF_DEPTH_MM)  # 0 posterior wall ... 1 anterior wall
    hu = np.full((nx, ny, nz), tissue.soft_hu, dtype=np.float32)
    label = np.zeros((nx, ny, nz), dtype=np.int16)
    inside_ellipse = r <= 1.0
    disc_zone = r <= 1.02
    for n, level in enumerate(levels):
        base = top_of_stack - (n + 1) * (height_mm + disc_mm) + disc_mm
        low, high = _surfaces(t, xx, height_mm, deformities.get(level))
        zl, zh = base + low, base + high
        k0, k1 = int(np.floor((base - 1) / FINE_MM)), int(np.ceil((base + height_mm + 1) / FINE_MM))
        for k in range(max(0, k0), min(nz, k1)):
            zk = z[k]
            body = inside_ellipse & (zk >= zl) & (zk <= zh)
            rimless = bool(deformities.get(level) is not None and deformities[level].rimless)
            top_rim = (zh - zk < CORTEX_MM) & ~(rimless & (t > RIMLESS_FROM_T))
            shell = body & ((zk - zl < CORTEX_MM) | top_rim | (wall_dist < CORTEX_MM))
            hu[:, :, k][body] = tissue.cancellous_hu
            hu[:, :, k][shell] = tissue.cortex_hu
            label[:, :, k][body] = int(level)
    # discs: soft-tissue gaps between bodies inside the ellipse
    in_body_range = (z >= margin_mm - disc_mm) & (z <= top_of_stack + disc_mm)
    gap = (label == 0) & disc_zone[:, :, None] & in_body_range[None, None, :]
    hu[gap] = tissue.disc_hu
    coarse = hu.reshape(nx // fxy, fxy, ny // fxy, fxy, nz // fz, fz).mean(axis=(1, 3, 5))
    rng = np.random.default_rng(seed)
    coarse = coarse + rng.normal(0.0, tissue.noise_hu, coarse.shape)
    out_labels = np.zeros(coarse.shape, dtype=np.int16)
    for level in levels:
        share = (label == int(level)).reshape(nx // fxy, fxy, ny // fxy, fxy, nz // fz, fz).mean(axis=(1, 3, 5))
        out_labels[share >= 0.5] = int(level)
    affine = np.diag([pixel_mm, pixel_mm, slice_mm, 1.0])
    affine[:3, 3] = [-FIELD_XY_MM[0] / 2 + pixel_mm / 2, -FIELD_XY_MM[1] / 2 + pixel_mm / 2, slice_mm / 2]
    return Stack(CTVolume(hu=coarse.astype(np.float32), affine_lps=affine), out_labels, tuple(levels))


def bodies_and_frames(stack: Stack) -> dict[VertebraLevel, tuple[CroppedMask, object]]:
    """Each level's cropped mask and its vertebral frame (axis from the neighbours' centroids)."""
    crops = crop_labels(stack.labels)
    centroids = {lv: mask_centroid_lps(stack.volume, crops[int(lv)]) for lv in stack.levels}
    return {lv: (crops[int(lv)], vertebra_frame(lv, centroids[lv], centroids)) for lv in stack.levels}


def corrupt_corner(labels: npt.NDArray[np.int16], level: VertebraLevel, slices: int, anterior_share: float,
                   superior: bool = True) -> npt.NDArray[np.int16]:
    """Remove the anterior ``anterior_share`` of the depth from the top (or bottom) ``slices`` slices of a level's
    mask: a corner cut off the body, as blocky segmenter masks have."""
    out = labels.copy()
    idx = np.argwhere(out == int(level))
    ks = np.unique(idx[:, 2])
    chosen = ks[-slices:] if superior else ks[:slices]
    j_ant, j_post = int(idx[:, 1].min()), int(idx[:, 1].max())  # anterior = low j (LPS: P grows with j)
    j_cut = j_ant + anterior_share * (j_post - j_ant + 1)
    for k in chosen:
        sl = out[:, :, k]
        jj = np.arange(sl.shape[1])[None, :]
        sl[(sl == int(level)) & (jj < j_cut)] = 0
    return out


def staircase(labels: npt.NDArray[np.int16], level: VertebraLevel, step: int = 1) -> npt.NDArray[np.int16]:
    """A staircase top: the top ``step`` slices kept over the posterior half only, the ``step`` below over the
    posterior 80 %."""
    out = corrupt_corner(labels, level, step, 0.5)
    return corrupt_corner(out, level, 2 * step, 0.2)
