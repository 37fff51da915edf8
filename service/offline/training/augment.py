"""Domain randomisation for the coarse segmentation model (numpy, on 3 mm canonical patches).

Everything keeps intensities in HU (within a few per cent): the density measurement downstream depends on HU,
and the model input is a fixed HU transform.  Randomised: crop position and size of the field of view (slab
scans, small reconstruction circles), isotropic/anisotropic rescaling (patient size, voxel size), rotations,
left-right flips, slice-thickness blur, noise (low dose), low-frequency bias, HU scale/offset.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from service.segmentation.classes import IGNORE

AIR_HU = -1000.0


def spine_voxels(target: npt.NDArray[np.uint8]) -> npt.NDArray[np.intp]:
    """Patch centre candidates of the coarse model: body, posterior element and disc voxels."""
    return np.argwhere((target >= 1) & (target <= 4))


def random_patch(hu: npt.NDArray[np.floating], target: npt.NDArray[np.uint8], size: tuple[int, int, int],
                 rng: np.random.Generator, spine_bias: float = 0.85,
                 centres: Callable[[npt.NDArray[np.uint8]], npt.NDArray[np.intp]] = spine_voxels,
                 jitter_sd: tuple[float, float, float] = (6.0, 4.0, 10.0),
                 ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]:
    """A patch of ``size`` (padded with air / background), centred (with probability spine_bias) on one of the
    ``centres`` voxels plus Gaussian jitter, else anywhere."""
    shape = np.array(hu.shape)
    size_a = np.array(size)
    spine = centres(target) if rng.random() < spine_bias else np.zeros((0, 3))
    if len(spine):
        centre = spine[rng.integers(len(spine))] + rng.normal(0, list(jitter_sd))
    else:
        centre = rng.uniform(0, shape)
    start = np.round(centre - size_a / 2).astype(int)
    out_hu = np.full(size, AIR_HU, dtype=np.float32)
    out_t = np.zeros(size, dtype=np.uint8)
    src = [slice(max(0, s), min(n, s + k)) for s, n, k in zip(start, shape, size_a, strict=True)]
    dst = [slice(sl.start - s, sl.stop - s) for sl, s in zip(src, start, strict=True)]
    if all(s.stop > s.start for s in src):
        out_hu[tuple(dst)] = hu[tuple(src)]
        out_t[tuple(dst)] = target[tuple(src)]
    return out_hu, out_t


def spatial(hu: npt.NDArray[np.float32], target: npt.NDArray[np.uint8], rng: np.random.Generator,
            out_size: tuple[int, int, int], max_angles_deg: tuple[float, float, float] = (8.0, 8.0, 12.0),
            isotropic_jitter: bool = True) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]:
    """Random rotation (about x, y, z up to ``max_angles_deg``), scale 0.85-1.15 per axis (times a common
    0.95-1.05 with ``isotropic_jitter``), flip L-R; output of out_size."""
    angles = np.deg2rad([rng.uniform(-a, a) for a in max_angles_deg])
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    per_axis = rng.uniform(0.85, 1.15, 3)
    scale = np.diag(per_axis * rng.uniform(0.95, 1.05) if isotropic_jitter else per_axis)
    m = rz @ ry @ rx @ scale
    if rng.random() < 0.5:
        m = m @ np.diag([-1.0, 1.0, 1.0])
    centre_in = (np.array(hu.shape) - 1) / 2
    centre_out = (np.array(out_size) - 1) / 2
    offset = centre_in - m @ centre_out
    o_hu = ndimage.affine_transform(hu, m, offset, output_shape=out_size, order=1, mode="constant", cval=AIR_HU)
    o_t = ndimage.affine_transform(target, m, offset, output_shape=out_size, order=0, mode="constant", cval=0)
    return o_hu.astype(np.float32), o_t.astype(np.uint8)


def spatial_or_centre(hu: npt.NDArray[np.float32], target: npt.NDArray[np.uint8], rng: np.random.Generator,
                      out_size: tuple[int, int, int], p_spatial: float, **spatial_kwargs: Any,
                      ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]:
    """With probability ``p_spatial`` ``spatial`` (rotation, scale, flip), else the centre ``out_size`` crop,
    flipped left-right half of the time."""
    if rng.random() < p_spatial:
        return spatial(hu, target, rng, out_size, **spatial_kwargs)
    off = [(b - s) // 2 for b, s in zip(hu.shape, out_size, strict=True)]
    sl = tuple(slice(o, o + s) for o, s in zip(off, out_size, strict=True))
    p_hu, p_t = hu[sl].copy(), target[sl].copy()
    if rng.random() < 0.5:
        p_hu, p_t = p_hu[::-1].copy(), p_t[::-1].copy()
    return p_hu, p_t


def truncate_fov(hu: npt.NDArray[np.float32], target: npt.NDArray[np.uint8],
                 rng: np.random.Generator) -> None:
    """In place: slab scans (short z range) and small in-plane reconstruction fields."""
    nz = hu.shape[2]
    if rng.random() < 0.3:
        length = int(rng.integers(8, max(9, nz)))
        z0 = int(rng.integers(0, max(1, nz - length)))
        hu[:, :, :z0] = AIR_HU
        hu[:, :, z0 + length:] = AIR_HU
        target[:, :, :z0] = 0
        target[:, :, z0 + length:] = 0
    if rng.random() < 0.15:
        nx, ny = hu.shape[:2]
        r = rng.uniform(0.3, 0.6) * min(nx, ny)
        cx, cy = nx / 2 + rng.normal(0, 5), ny / 2 + rng.normal(0, 5)
        xx, yy = np.mgrid[:nx, :ny]
        outside = (xx - cx) ** 2 + (yy - cy) ** 2 > r**2
        hu[outside] = AIR_HU if rng.random() < 0.5 else -1024.0
        target[outside] = 0


def intensity(hu: npt.NDArray[np.float32], rng: np.random.Generator,
              strong_pv: bool = False) -> npt.NDArray[np.float32]:
    """Blur (slice thickness / kernel), noise (dose), bias, HU scale/offset within a few per cent."""
    out = hu
    # the coarse phantom is point-sampled (thin cortex shows as dots); real CT at 3 mm is area-averaged: blur
    # almost always (partial volume), more along z (slice thickness)
    if strong_pv:
        if rng.random() < 0.95:
            sig = (rng.uniform(0.5, 1.2), rng.uniform(0.5, 1.2), rng.uniform(0.5, 1.5))
            out = ndimage.gaussian_filter(out, sig)
    elif rng.random() < 0.85:
        sig = (rng.uniform(0.3, 1.0), rng.uniform(0.3, 1.0), rng.uniform(0.3, 1.5))
        out = ndimage.gaussian_filter(out, sig)
    if strong_pv and rng.random() < 0.7:
        # partial volume of thin cortex / endplates on real scans: compress bright bone towards soft tissue
        knee = rng.uniform(80.0, 150.0)
        out = np.where(out > knee, knee + (out - knee) * rng.uniform(0.35, 1.0), out)
    return kernel_scale_bias_noise(out, rng, p_sharp=0.3, p_bias=0.5, p_noise=0.7, noise_sd_hu=(2.0, 45.0))


def kernel_scale_bias_noise(hu: npt.NDArray[np.float32], rng: np.random.Generator, *, p_sharp: float, p_bias: float,
                            p_noise: float, noise_sd_hu: tuple[float, float]) -> npt.NDArray[np.float32]:
    """Sharp reconstruction kernel (unsharp masking, with probability ``p_sharp``), HU scale and offset within a few
    per cent, low-frequency bias (``p_bias``), noise of SD drawn from ``noise_sd_hu`` (``p_noise``)."""
    out = hu
    if rng.random() < p_sharp:
        blurred = ndimage.gaussian_filter(out, 1.0)
        out = out + rng.uniform(0.2, 0.8) * (out - blurred)
    out = out * rng.uniform(0.96, 1.04) + rng.uniform(-20, 20)
    if rng.random() < p_bias:
        coarse = rng.normal(0, 1, (3, 3, 3)).astype(np.float32)
        bias = ndimage.zoom(coarse, np.array(out.shape) / 3, order=1)[: out.shape[0], : out.shape[1], : out.shape[2]]
        out = out + rng.uniform(0, 25) * bias
    if rng.random() < p_noise:
        out = out + rng.normal(0, rng.uniform(*noise_sd_hu), out.shape).astype(np.float32)
    return out.astype(np.float32)


def augment(hu: npt.NDArray[np.float32], target: npt.NDArray[np.uint8], size: tuple[int, int, int],
            rng: np.random.Generator, strong_pv: bool = False) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]:
    """``strong_pv``: stronger partial-volume blur, bright-bone compression and low-density bodies (used by the
    fine-tuning experiments; off for the committed stage-1 model, so the default reproduces it)."""
    big = tuple(int(s * 1.3) for s in size)
    p_hu, p_t = random_patch(hu, target, big, rng)  # type: ignore[arg-type]
    p_hu, p_t = spatial_or_centre(p_hu, p_t, rng, size, p_spatial=0.6)
    truncate_fov(p_hu, p_t, rng)
    if strong_pv and rng.random() < 0.5:
        # low-density (osteoporotic) bodies: trabecular HU close to disc / soft tissue HU
        body = ((p_t == 1) | (p_t == 2)) & (p_hu < 400)
        p_hu[body] += rng.uniform(-110.0, 10.0)
    p_hu = intensity(p_hu, rng, strong_pv)
    p_t[(p_t != IGNORE) & (p_t > 6)] = 0
    return p_hu, p_t
