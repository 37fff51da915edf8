"""Domain randomisation for the fine body model (numpy, on 1.25 mm canonical patches around the spine).

Intensities stay in HU within a few per cent (the density measurement downstream depends on HU).  Randomised:
patch position (mostly on a vertebral body), rotation, anisotropic scale (body size), left-right flip, slice
thickness (z averaging of 1.25-6 mm, on top of the renderer's own slice profile), in-plane blur and sharp kernels,
noise up to low-dose levels, low-frequency bias, HU scale/offset, lower trabecular density (osteoporotic bodies,
whose HU approaches the disc's), and the field of view ending inside the patch (slab scans).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from service.segmentation.fine_classes import FINE_BODY
from service.training.augment import AIR_HU


def _patch(hu: npt.NDArray[np.int16], target: npt.NDArray[np.uint8], size: tuple[int, int, int],
           rng: np.random.Generator) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]:
    shape = np.array(hu.shape)
    size_a = np.array(size)
    body = np.argwhere(target[::2, ::2, ::2] == FINE_BODY) * 2 if rng.random() < 0.9 else np.zeros((0, 3))
    if len(body):
        centre = body[rng.integers(len(body))] + rng.normal(0, [4, 4, 6])
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


def _spatial(hu: npt.NDArray[np.float32], target: npt.NDArray[np.uint8], rng: np.random.Generator,
             out_size: tuple[int, int, int]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]:
    angles = np.deg2rad([rng.uniform(-10, 10), rng.uniform(-10, 10), rng.uniform(-15, 15)])
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    m = rz @ ry @ rx @ np.diag(rng.uniform(0.85, 1.15, 3))
    if rng.random() < 0.5:
        m = m @ np.diag([-1.0, 1.0, 1.0])
    offset = (np.array(hu.shape) - 1) / 2 - m @ ((np.array(out_size) - 1) / 2)
    o_hu = ndimage.affine_transform(hu, m, offset, output_shape=out_size, order=1, mode="constant", cval=AIR_HU)
    o_t = ndimage.affine_transform(target, m, offset, output_shape=out_size, order=0, mode="constant", cval=0)
    return o_hu.astype(np.float32), o_t.astype(np.uint8)


def augment_fine(hu: npt.NDArray[np.int16], target: npt.NDArray[np.uint8], size: tuple[int, int, int],
                 rng: np.random.Generator) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]:
    big = tuple(int(s * 1.25) for s in size)
    p_hu, p_t = _patch(hu, target, big, rng)  # type: ignore[arg-type]
    if rng.random() < 0.7:
        p_hu, p_t = _spatial(p_hu, p_t, rng, size)
    else:
        off = [(b - s) // 2 for b, s in zip(big, size, strict=True)]
        sl = tuple(slice(o, o + s) for o, s in zip(off, size, strict=True))
        p_hu, p_t = p_hu[sl].copy(), p_t[sl].copy()
        if rng.random() < 0.5:
            p_hu, p_t = p_hu[::-1].copy(), p_t[::-1].copy()
    if rng.random() < 0.4:
        # osteoporotic bodies: trabecular HU towards disc / soft tissue HU (the cortex stays)
        body = (p_t == FINE_BODY) & (p_hu < 350)
        p_hu[body] += rng.uniform(-130.0, 20.0)
    if rng.random() < 0.15:
        # slab scan: the field of view ends inside the patch
        nz = p_hu.shape[2]
        cut = int(rng.integers(nz // 4, 3 * nz // 4))
        if rng.random() < 0.5:
            p_hu[:, :, :cut] = AIR_HU
            p_t[:, :, :cut] = 0
        else:
            p_hu[:, :, cut:] = AIR_HU
            p_t[:, :, cut:] = 0
    out = p_hu
    if rng.random() < 0.5:
        # thick slices: average along z (the renderer already applies the spec's own slice profile)
        out = ndimage.uniform_filter1d(out, int(rng.integers(2, 6)), axis=2, mode="nearest")
    if rng.random() < 0.6:
        s = rng.uniform(0.2, 1.0)
        out = ndimage.gaussian_filter(out, (s, s, rng.uniform(0.2, 1.0)))
    if rng.random() < 0.25:
        blurred = ndimage.gaussian_filter(out, 1.0)
        out = out + rng.uniform(0.2, 0.8) * (out - blurred)
    out = out * rng.uniform(0.96, 1.04) + rng.uniform(-20, 20)
    if rng.random() < 0.4:
        coarse = rng.normal(0, 1, (3, 3, 3)).astype(np.float32)
        bias = ndimage.zoom(coarse, np.array(out.shape) / 3, order=1)[: out.shape[0], : out.shape[1], : out.shape[2]]
        out = out + rng.uniform(0, 25) * bias
    if rng.random() < 0.8:
        out = out + rng.normal(0, rng.uniform(3, 70), out.shape).astype(np.float32)
    return out.astype(np.float32), p_t
