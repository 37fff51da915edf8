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
from service.training.augment import AIR_HU, random_patch, spatial


def body_voxels(target: npt.NDArray[np.uint8]) -> npt.NDArray[np.intp]:
    """Patch centre candidates: body voxels (every second voxel along each axis: enough, and fast)."""
    return np.argwhere(target[::2, ::2, ::2] == FINE_BODY) * 2


def augment_fine(hu: npt.NDArray[np.int16], target: npt.NDArray[np.uint8], size: tuple[int, int, int],
                 rng: np.random.Generator) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]:
    big = tuple(int(s * 1.25) for s in size)
    p_hu, p_t = random_patch(hu, target, big, rng, spine_bias=0.9, centres=body_voxels,  # type: ignore[arg-type]
                             jitter_sd=(4.0, 4.0, 6.0))
    if rng.random() < 0.7:
        p_hu, p_t = spatial(p_hu, p_t, rng, size, max_angles_deg=(10.0, 10.0, 15.0), isotropic_jitter=False)
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
