"""Acquisition model: texture, partial-volume blur, quantum noise, reconstruction circle, orientation.

Noise model: standard-dose noise SD at 120 kVp for a 1 mm slice of an average adult ~ 25 HU with a soft
kernel, scaling with 1/sqrt(slice thickness); low dose x2.5 (low-dose lung screening, Pan 2020 ~ 35-60 HU);
80 kVp x1.45, 100 kVp x1.2, 140 kVp x0.85; larger patients noisier. The noise is spatially correlated
(reconstruction kernel texture). Partial volume: in-plane blur of about half a pixel, through-plane Gaussian
slice-sensitivity profile with FWHM = slice thickness.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from service.offline.phantom.canvas import Canvas
from service.offline.phantom.grid import F32, Grid, SmoothField
from service.offline.phantom.labels import METAL

logger = logging.getLogger(__name__)

HU_MIN = -1024.0
HU_MAX = 3071.0
"""12-bit stored range with RescaleIntercept -1024."""
BASE_NOISE_SD_HU = 25.0
"""Noise SD at 120 kVp, 1 mm slice, standard dose, average adult, soft kernel."""
KVP_NOISE_FACTOR: dict[int, float] = {80: 1.45, 100: 1.2, 120: 1.0, 140: 0.85}
"""At equal dose, fewer photons reach the detector at lower kVp: 80 kVp (low-dose protocols) is noisier."""
LOW_DOSE_NOISE_FACTOR = 2.5


def noise_sd_hu(kvp: int, slice_thickness_mm: float, low_dose: bool, size_factor: float, scale: float) -> float:
    sd = BASE_NOISE_SD_HU / np.sqrt(max(slice_thickness_mm, 0.3)) * KVP_NOISE_FACTOR[kvp]
    if low_dose:
        sd *= LOW_DOSE_NOISE_FACTOR
    return float(sd * size_factor**1.5 * scale)


@dataclass(frozen=True)
class Acquired:
    hu: npt.NDArray[np.float32]
    labels: npt.NDArray[np.int16]
    noise_sd_hu: float


def finish(
    cv: Canvas,
    rng: np.random.Generator,
    *,
    slice_thickness_mm: float,
    noise_sd: float,
    in_plane_blur_mm: float = 0.6,
    reconstruction_circle: bool = True,
    chunk_slices: int = 24,
) -> Acquired:
    """Texture + blur + noise on the canonical grid; the trabecular cores keep their declared mean exactly.

    Texture and noise are drawn in chunks of slices (bounded memory); the noise is filtered in-plane only, so
    chunking does not change it.
    """
    g = cv.grid
    hu = cv.hu
    nz = g.shape[2]
    # two-scale tissue texture: fine (white, then blurred) and coarse (~1.2 mm correlation, trabecular-like)
    coarse = SmoothField(rng, g.shape, sigma_vox=1.2 / min(g.spacing_mm), min_factor=2)
    for k0 in range(0, nz, chunk_slices):
        k1 = min(nz, k0 + chunk_slices)
        tex = rng.standard_normal((k1 - k0, g.shape[1], g.shape[0]), dtype=F32).T
        for k in range(k0, k1):
            tex[:, :, k - k0] += F32(0.8) * coarse.plane(k)[:, :, 0]
        tex *= cv.texture_amp[:, :, k0:k1]
        hu[:, :, k0:k1] += tex
    sz = max(slice_thickness_mm, g.spacing_mm[2]) / 2.355 / g.spacing_mm[2]
    sxy = [max(in_plane_blur_mm / g.spacing_mm[n], 0.45) for n in (0, 1)]
    ndimage.gaussian_filter(hu, sigma=(sxy[0], sxy[1], sz), output=hu, truncate=3.0)
    _restore_cores(cv, hu)
    _metal_streaks(cv, hu, rng)
    if noise_sd > 0:
        corr = 0.7 if g.spacing_mm[0] < 1.2 else 0.3
        scale = F32(noise_sd / _white_attenuation(corr, corr, 0.0))
        for k0 in range(0, nz, chunk_slices):
            k1 = min(nz, k0 + chunk_slices)
            noise = rng.standard_normal((k1 - k0, g.shape[1], g.shape[0]), dtype=F32).T
            ndimage.gaussian_filter(noise, sigma=(corr, corr, 0.0), output=noise, truncate=2.5)
            noise *= scale
            hu[:, :, k0:k1] += noise
    labels = cv.labels
    if reconstruction_circle:
        nx, ny = g.shape[0], g.shape[1]
        cx, cy = (nx - 1) / 2, (ny - 1) / 2
        r2 = (min(nx, ny) / 2) ** 2
        outside = ((np.arange(nx)[:, None] - cx) ** 2 + (np.arange(ny)[None, :] - cy) ** 2) > r2
        hu[outside, :] = HU_MIN
        labels[outside, :] = 0
    np.clip(hu, HU_MIN, HU_MAX, out=hu)
    np.rint(hu, out=hu)
    return Acquired(hu=hu, labels=labels, noise_sd_hu=noise_sd)


def _metal_streaks(cv: Canvas, hu: npt.NDArray[np.float32], rng: np.random.Generator) -> None:
    """Radial bright/dark streaks around metal and a dark band between metal pieces (photon starvation)."""
    g = cv.grid
    metal_slices = np.nonzero((cv.labels == METAL).any(axis=(0, 1)))[0]
    if len(metal_slices) == 0:
        return
    phases = rng.uniform(0, 2 * np.pi, size=6)
    amps = rng.uniform(40.0, 110.0, size=6)
    x = (np.arange(g.shape[0]) * g.spacing_mm[0])[:, None].astype(F32)
    y = (np.arange(g.shape[1]) * g.spacing_mm[1])[None, :].astype(F32)
    for k in metal_slices:
        lab = cv.labels[:, :, k]
        m = lab == METAL
        pts = np.argwhere(m) * np.array(g.spacing_mm[:2])
        split = np.median(pts[:, 0])
        groups = [pts[pts[:, 0] <= split], pts[pts[:, 0] > split]]
        centres = [grp.mean(axis=0) for grp in groups if len(grp)]
        streak = np.zeros(lab.shape, dtype=F32)
        for c in centres:
            dx, dy = x - F32(c[0]), y - F32(c[1])
            r = np.sqrt(dx * dx + dy * dy) + F32(1e-3)
            th = np.arctan2(dy, dx)
            pattern = sum(F32(a) * np.cos(F32(2 * (j + 2)) * th + F32(ph))
                          for j, (a, ph) in enumerate(zip(amps, phases, strict=True)))
            streak += pattern * np.exp(-r / F32(70.0)) * np.clip((r - 4.0) / 6.0, 0, 1)
        if len(centres) == 2:
            c1, c2 = centres
            u = (c2 - c1) / max(float(np.linalg.norm(c2 - c1)), 1e-3)
            dx, dy = x - F32(c1[0]), y - F32(c1[1])
            along = dx * F32(u[0]) + dy * F32(u[1])
            perp = np.abs(-dx * F32(u[1]) + dy * F32(u[0]))
            seg = float(np.linalg.norm(c2 - c1))
            outside = np.maximum(np.maximum(-along, along - F32(seg)), 0)
            streak -= F32(180.0) * np.exp(-((perp / F32(3.5)) ** 2)) * np.exp(-outside / F32(60.0))
        sel = (lab != 0) & ~m
        sub = hu[:, :, k]
        sub[sel] += streak[sel]


def _white_attenuation(sx: float, sy: float, sz: float) -> float:
    """SD of unit white noise after a separable Gaussian filter with these sigmas (voxels)."""
    out = 1.0
    for s in (sx, sy, sz):
        if s <= 0:
            continue
        r = int(3.0 * s + 0.5)
        w = np.exp(-0.5 * (np.arange(-r, r + 1) / s) ** 2)
        w /= w.sum()
        out *= float(np.sqrt((w**2).sum()))
    return out


def _restore_cores(cv: Canvas, hu: npt.NDArray[np.float32]) -> None:
    """Shift every trabecular core so that its mean is exactly the declared HU (texture kept)."""
    for label, sl in sorted(cv.core_blocks.items()):
        mask = cv.labels[sl] == label
        if not mask.any():
            continue
        sub = hu[sl]
        values = sub[mask].astype(np.float64)
        sub[mask] = (values - values.mean() + cv.core_hu[label]).astype(F32)


def to_dicom_order(
    canonical: npt.NDArray[np.generic], grid: Grid, feet_first: bool
) -> tuple[npt.NDArray[np.generic], npt.NDArray[np.float64]]:
    """Re-order a canonical (x, y, z ascending) array for the DICOM orientation; returns (array, affine_lps).

    Head-first supine: ImageOrientationPatient (1,0,0, 0,1,0), slice normal +S, the canonical order as is.
    Feet-first supine: ImageOrientationPatient (-1,0,0, 0,1,0) as scanners reconstruct FFS images (the patient's
    left on the image left), so the row direction is -x and the slice normal is -S: axes 0 and 2 are flipped.
    """
    aff = grid.affine()
    if not feet_first:
        return canonical, aff
    arr = canonical[::-1, :, ::-1]
    nx, _, nz = grid.shape
    origin = aff[:3, 3] + aff[:3, 0] * (nx - 1) + aff[:3, 2] * (nz - 1)
    new = aff.copy()
    new[:3, 0] = -aff[:3, 0]
    new[:3, 2] = -aff[:3, 2]
    new[:3, 3] = origin
    return np.ascontiguousarray(arr), new
