"""Rod finding for QCT calibration phantoms in a CT volume (the matching and the line: ``phantom.py``).

On up to ``MAX_SLICES`` axial slabs spread over the scan (each the mean of the slices within ``SLAB_MM`` / 2: the
rods run along the scan, the noise does not), a matched filter compares the mean HU of an inner disc
(0.6 x rod radius) with that of a ring just outside the rod (1.2-1.4 x radius): rod centres are local maxima of
``|inner - ring|`` where the inner disc and the ring are both homogeneous (SD no more than ``HOMOGENEITY_FACTOR`` x
the most homogeneous regions of the slice) and the disc is not air. Detections are clustered across slices by
position; a rod must be seen on ``MIN_SLICES_PER_ROD`` slices; its HU is the median inner mean, and the spread of
the inner means over its slices says how uniform it is along its length.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage, signal

from service.domain.volume import CTVolume
from service.measurement.exclusions import METAL_HU

MAX_SLICES = 15
SLAB_MM = 10.0
"""Each sampled slice is the mean of the slices within 5 mm of it (one slice at 10 mm and thicker)."""
MIN_SLICES_PER_ROD = 3
MIN_CONTRAST_HU = 6.0
HOMOGENEITY_FACTOR = 2.0
RING_INNER = 1.2
RING_OUTER = 1.4


@dataclass(frozen=True)
class FoundRod:
    centre_lps_mm: tuple[float, float]
    """(L, P) of the rod axis."""
    hu: float
    n_slices: int
    hu_spread: float = 0.0
    """Robust SD (1.4826 x median absolute deviation) of the inner disc's mean HU over the slices it was seen on: a
    rod is uniform along its length; a blob of tissue that looks like a rod on single slices is not."""
    slice_range: tuple[int, int] | None = None
    """The first and last of the sampled slices (index along the scan's head-foot axis) it was seen on."""


def _disc(radius_px: tuple[float, float], inner: float = 0.0) -> npt.NDArray[np.float64]:
    ri, rj = radius_px
    ni, nj = int(np.ceil(ri)), int(np.ceil(rj))
    y, x = np.meshgrid(np.arange(-ni, ni + 1), np.arange(-nj, nj + 1), indexing="ij")
    d = (y / max(ri, 1e-6)) ** 2 + (x / max(rj, 1e-6)) ** 2
    k = (d <= 1.0) & (d >= inner**2)
    return k.astype(np.float64) / max(1, int(k.sum()))


def _slice_detections(raw: npt.NDArray[np.float32], sp2: tuple[float, float], radius_mm: float,
                      allowed: npt.NDArray[np.bool_] | None) -> list[tuple[float, float, float]]:
    """(i, j, inner mean HU) of rod centres on one slice."""
    img = raw.astype(np.float64)
    inner_k = _disc((0.6 * radius_mm / sp2[0], 0.6 * radius_mm / sp2[1]))
    ring_k = _disc((RING_OUTER * radius_mm / sp2[0], RING_OUTER * radius_mm / sp2[1]), inner=RING_INNER / RING_OUTER)
    inner = signal.fftconvolve(img, inner_k, mode="same")
    inner_sq = signal.fftconvolve(img**2, inner_k, mode="same")
    ring = signal.fftconvolve(img, ring_k, mode="same")
    ring_sq = signal.fftconvolve(img**2, ring_k, mode="same")
    sd = np.sqrt(np.maximum(inner_sq - inner**2, 0.0))
    ring_sd = np.sqrt(np.maximum(ring_sq - ring**2, 0.0))
    not_air = inner > -300.0
    if not np.any(not_air):
        return []
    sd_ref = float(np.percentile(sd[not_air], 2))
    contrast = np.abs(inner - ring)
    limit = HOMOGENEITY_FACTOR * max(sd_ref, 1.0)
    ok = not_air & (sd <= limit) & (ring_sd <= limit) & (contrast >= MIN_CONTRAST_HU)
    if allowed is not None:
        ok &= allowed
    if not np.any(ok):
        return []
    score = np.where(ok, contrast, 0.0)
    size = (max(3, int(2 * radius_mm / sp2[0]) | 1), max(3, int(2 * radius_mm / sp2[1]) | 1))
    peaks = ok & (score == ndimage.maximum_filter(score, size=size))
    return [(float(i), float(j), float(inner[i, j])) for i, j in np.argwhere(peaks)]


def find_rods(volume: CTVolume, rod_diameter_mm: float, min_posterior_of_lps_y: float | None = None) -> list[FoundRod]:
    """Rods seen on several slices (see module doc); ``min_posterior_of_lps_y`` restricts to P >= that value."""
    axis, _ = volume.superior_axis()
    in_plane = [a for a in range(3) if a != axis]
    sp = volume.spacing_mm
    sp2 = (sp[in_plane[0]], sp[in_plane[1]])
    radius = rod_diameter_mm / 2
    clear = metal_free_slices(volume)
    ks = _sampled_slices(clear)
    g0, g1 = np.meshgrid(np.arange(volume.shape[in_plane[0]]), np.arange(volume.shape[in_plane[1]]), indexing="ij")
    grid = np.zeros((*g0.shape, 3))
    grid[..., in_plane[0]] = g0
    grid[..., in_plane[1]] = g1
    lps0 = volume.index_to_lps(grid)
    step = volume.affine_lps[:3, axis]
    detections: list[tuple[float, float, float, int]] = []  # (L, P, hu, slice index)
    for k in ks:
        lps = lps0 + k * step
        allowed = None if min_posterior_of_lps_y is None else lps[..., 1] >= min_posterior_of_lps_y
        if allowed is not None and not np.any(allowed):
            continue
        raw = _slab_mean(volume, axis, int(k), clear)
        for i, j, hu in _slice_detections(raw, sp2, radius, allowed):
            p = lps[int(i), int(j)]
            detections.append((float(p[0]), float(p[1]), hu, int(k)))
    clusters: list[list[tuple[float, float, float, int]]] = []
    for d in detections:
        for c in clusters:
            cx, cy = np.mean([e[0] for e in c]), np.mean([e[1] for e in c])
            if np.hypot(d[0] - cx, d[1] - cy) <= 0.5 * radius:
                c.append(d)
                break
        else:
            clusters.append([d])
    rods = [FoundRod((float(np.mean([e[0] for e in c])), float(np.mean([e[1] for e in c]))),
                     float(np.median([e[2] for e in c])), len(c), _robust_sd([e[2] for e in c]),
                     (min(e[3] for e in c), max(e[3] for e in c)))
            for c in clusters if len(c) >= min(MIN_SLICES_PER_ROD, len(ks))]
    return sorted(rods, key=lambda r: r.hu)


def metal_free_slices(volume: CTVolume) -> npt.NDArray[np.bool_]:
    """Per slice along the head-foot axis: no voxel at or above METAL_HU. Metal streaks cross the whole slice, rods
    included (BMD set s13 case_25 and case_53, pedicle screws: 0-100 mg/cm3 rods read 26-70 HU off, or not found)."""
    axis, _ = volume.superior_axis()
    others = tuple(a for a in range(3) if a != axis)
    return np.asarray(volume.hu.max(axis=others) < METAL_HU)


def _sampled_slices(clear: npt.NDArray[np.bool_]) -> npt.NDArray[np.int64]:
    """Up to MAX_SLICES slices spread over the middle 80 % of the scan, those without metal when enough are left."""
    n = clear.shape[0]
    middle = np.arange(round(0.1 * (n - 1)), round(0.9 * (n - 1)) + 1)
    pool = middle[clear[middle]]
    if pool.shape[0] < MIN_SLICES_PER_ROD:
        pool = middle
    pick = np.unique(np.linspace(0, pool.shape[0] - 1, min(MAX_SLICES, pool.shape[0])).round().astype(int))
    return np.asarray(pool[pick], dtype=np.int64)


def _slab_mean(volume: CTVolume, axis: int, k: int, clear: npt.NDArray[np.bool_]) -> npt.NDArray[np.float32]:
    """Mean of the metal-free slices within SLAB_MM / 2 of slice ``k`` (the rods run along the scan: averaging keeps
    them and divides the noise of a sharp-kernel or low-dose scan by the square root of the slices)."""
    half = int(SLAB_MM / 2 / volume.spacing_mm[axis])
    near = np.arange(max(0, k - half), min(volume.shape[axis], k + half + 1))
    near = near[clear[near]] if clear[k] else np.array([k])
    slab = np.take(volume.hu, near, axis=axis)
    return np.asarray(slab.mean(axis=axis, dtype=np.float64), dtype=np.float32)


def _robust_sd(values: list[float]) -> float:
    v = np.asarray(values, dtype=np.float64)
    return float(1.4826 * np.median(np.abs(v - np.median(v))))


def _disc_mean(volume: CTVolume, centre_lp: tuple[float, float], radius_mm: float, k: int) -> float | None:
    """Mean HU within 0.6 x radius of a rod axis at (L, P) on slice k (None when outside the volume)."""
    axis, _ = volume.superior_axis()
    sp = volume.spacing_mm
    origin = volume.affine_lps[:3, axis] * k + volume.affine_lps[:3, 3]
    idx = volume.lps_to_index(np.array([centre_lp[0], centre_lp[1], origin[2]]))
    idx[axis] = k
    lo = [max(0, int(np.floor(idx[a] - 0.6 * radius_mm / sp[a]))) for a in range(3)]
    hi = [min(volume.shape[a], int(np.ceil(idx[a] + 0.6 * radius_mm / sp[a])) + 1) for a in range(3)]
    lo[axis], hi[axis] = int(k), int(k) + 1
    if any(h <= low for low, h in zip(lo, hi, strict=True)):
        return None
    sub = volume.hu[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    grid = np.stack(np.meshgrid(*[np.arange(low, h) for low, h in zip(lo, hi, strict=True)], indexing="ij"), -1)
    d = np.linalg.norm((volume.index_to_lps(grid) - volume.index_to_lps(idx))[..., :2], axis=-1)
    inside = d <= 0.6 * radius_mm
    return float(sub[inside].mean()) if np.any(inside) else None


def rod_hu_at(volume: CTVolume, centre_lp: tuple[float, float], radius_mm: float) -> float | None:
    """Median over the sampled slices of the mean HU within 0.6 x radius of a rod axis at (L, P)."""
    ks = _sampled_slices(metal_free_slices(volume))
    values = [v for k in ks if (v := _disc_mean(volume, centre_lp, radius_mm, int(k))) is not None]
    return float(np.median(values)) if values else None


MAX_SLICES_ALONG = 400
"""Slices read per rod when it is measured along its length (evenly spread when the stretch holds more)."""
MIN_METAL_FREE_SLICES = 5
"""Fewer slices without metal than this: the rod is read on all of them (the median still stands)."""


def rod_along(volume: CTVolume, centre_lp: tuple[float, float], radius_mm: float, k_first: int, k_last: int
              ) -> tuple[float, float, int] | None:
    """(median HU, robust SD of the per-slice means, slices read) of a rod axis at (L, P) over every slice from k_first
    to k_last: every slice, not only those where the matched filter fired (which favour slices whose noise raised
    the rod's contrast: BMD set s11 case_02, sharp kernel at low dose, read its 100 mg/cm3 rod 30 HU high from 5
    sampled slices, and within 1 HU from the 145 of its stretch). The median, as on the sampled slices: a slice
    crossed by a streak or by the end of the phantom does not move it. Slices holding metal are left out (when
    ``MIN_METAL_FREE_SLICES`` others remain; ``metal_free_slices``)."""
    ks = np.unique(np.linspace(k_first, k_last, min(MAX_SLICES_ALONG, k_last - k_first + 1)).round().astype(int))
    free = metal_free_slices(volume)
    if np.count_nonzero(free[ks]) >= MIN_METAL_FREE_SLICES:
        ks = ks[free[ks]]
    values = [v for k in ks if (v := _disc_mean(volume, centre_lp, radius_mm, int(k))) is not None]
    if not values:
        return None
    return float(np.median(values)), _robust_sd(values), len(values)
