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

from service.offline.training.augment import AIR_HU, kernel_scale_bias_noise, random_patch, spatial_or_centre
from service.segmentation.fine_classes import FINE_BODY


def body_voxels(target: npt.NDArray[np.uint8]) -> npt.NDArray[np.intp]:
    """Patch centre candidates: body voxels (every second voxel along each axis: enough, and fast)."""
    return np.argwhere(target[::2, ::2, ::2] == FINE_BODY) * 2


def augment_fine(hu: npt.NDArray[np.int16], target: npt.NDArray[np.uint8], size: tuple[int, int, int],
                 rng: np.random.Generator) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]:
    big = tuple(int(s * 1.25) for s in size)
    p_hu, p_t = random_patch(hu, target, big, rng, spine_bias=0.9, centres=body_voxels,  # type: ignore[arg-type]
                             jitter_sd=(4.0, 4.0, 6.0))
    p_hu, p_t = spatial_or_centre(p_hu, p_t, rng, size, p_spatial=0.7, max_angles_deg=(10.0, 10.0, 15.0),
                                  isotropic_jitter=False)
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
    out = kernel_scale_bias_noise(out, rng, p_sharp=0.25, p_bias=0.4, p_noise=0.8, noise_sd_hu=(3.0, 70.0))
    return out, p_t
