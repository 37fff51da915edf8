"""Separate vertebral bodies along the spine on the coarse canonical grid (+L, +P, +S axes).

Bodies are the connected components of the predicted body class, with voxels predicted as disc removed; a
component much taller than its neighbours (bodies fused through a missed disc, common on thin thoracic discs at
3 mm) is split along its long axis at the minima of its cross-sectional area weighted by the disc probability.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

logger = logging.getLogger(__name__)

MIN_BODY_VOLUME_MM3 = 1500.0
"""Smallest component kept as a (possibly FOV-cut) body: ~1/10 of a T1 body (~15 cm3 for L1, ~5 cm3 for T1)."""
MIN_BODY_HEIGHT_MM = 12.0
"""Shortest plausible vertebral body height (T1 ~ 14-16 mm); splits never produce shorter pieces."""
SPLIT_HEIGHT_FACTOR = 1.55
"""A component taller than this times the expected body height is treated as fused bodies."""


@dataclass(frozen=True)
class BodyInstance:
    mask: npt.NDArray[np.bool_]
    """Coarse grid mask."""
    centroid_vox: tuple[float, float, float]
    height_mm: float
    volume_mm3: float


def expected_height_mm(z_mm: float, z_ref: tuple[float, float] | None = None) -> float:
    """Rough body height for splitting (22 mm: the thoracolumbar average of T6-L3, ~18-28 mm)."""
    return 22.0


def _principal_axis(coords_mm: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    centred = coords_mm - coords_mm.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    axis = vt[0]
    return axis if axis[2] >= 0 else -axis


def _split_component(mask: npt.NDArray[np.bool_], disc_prob: npt.NDArray[np.float32], spacing: float,
                     n_pieces_hint: int) -> list[npt.NDArray[np.bool_]]:
    coords = np.argwhere(mask).astype(np.float64)
    axis = _principal_axis(coords * spacing)
    # the spine is roughly cranio-caudal: never split along a horizontal axis
    if abs(axis[2]) < 0.6:
        axis = np.array([0.0, 0.0, 1.0])
    t = (coords * spacing) @ axis
    t0 = t.min()
    bins = np.floor((t - t0) / spacing).astype(int)
    n_bins = bins.max() + 1
    area = np.bincount(bins, minlength=n_bins).astype(np.float64)
    idx = tuple(coords.astype(int).T)
    disc = np.bincount(bins, weights=disc_prob[idx], minlength=n_bins) / np.maximum(area, 1)
    score = ndimage.uniform_filter1d(area / max(area.max(), 1.0), 2) * (1.0 - disc)
    min_bins = max(2, round(MIN_BODY_HEIGHT_MM / spacing))
    cuts: list[int] = []
    # choose n-1 cuts greedily at the lowest score, keeping pieces >= min height
    order = np.argsort(score)
    for b in order:
        if len(cuts) >= n_pieces_hint - 1:
            break
        if b < min_bins or b > n_bins - 1 - min_bins:
            continue
        if all(abs(int(b) - c) >= min_bins for c in cuts):
            cuts.append(int(b))
    if not cuts:
        return [mask]
    cuts.sort()
    edges = [-1, *cuts, n_bins]
    pieces = []
    for lo, hi in itertools.pairwise(edges):
        sel = (bins > lo) & (bins < hi)
        piece = np.zeros_like(mask)
        piece[tuple(coords[sel].astype(int).T)] = True
        if piece.any():
            pieces.append(piece)
    return pieces


def find_bodies(body_prob: npt.NDArray[np.float32], disc_prob: npt.NDArray[np.float32], spacing_mm: float,
                background_prob: npt.NDArray[np.float32] | None = None) -> list[BodyInstance]:
    """Body instances ordered cranial to caudal (decreasing axis-2 coordinate)."""
    body = body_prob > 0.5
    body &= ~(disc_prob > body_prob)
    voxel_mm3 = spacing_mm**3
    lab, n = ndimage.label(body)  # face connectivity: fewer bridges between neighbouring bodies
    comps: list[npt.NDArray[np.bool_]] = []
    if n:
        sizes = ndimage.sum_labels(np.ones_like(lab), lab, index=np.arange(1, n + 1))
        for i, s in enumerate(sizes, start=1):
            if s * voxel_mm3 >= MIN_BODY_VOLUME_MM3:
                comps.append(lab == i)
    # keep components near the spine: drop outliers far from the main cranio-caudal column
    comps = _keep_spine_column(comps, spacing_mm)
    out: list[npt.NDArray[np.bool_]] = []
    for c in comps:
        zs = np.nonzero(c.any(axis=(0, 1)))[0]
        height = (zs.max() - zs.min() + 1) * spacing_mm
        ratio = height / expected_height_mm(0.0)
        if ratio > SPLIT_HEIGHT_FACTOR:
            n_pieces = max(2, round(ratio))
            out.extend(_split_component(c, disc_prob, spacing_mm, n_pieces))
        else:
            out.append(c)
    instances = []
    for m in out:
        coords = np.argwhere(m)
        if len(coords) * voxel_mm3 < MIN_BODY_VOLUME_MM3 / 2:
            continue
        zs = coords[:, 2]
        instances.append(BodyInstance(
            mask=m, centroid_vox=tuple(float(v) for v in coords.mean(axis=0)),  # type: ignore[arg-type]
            height_mm=float((zs.max() - zs.min() + 1) * spacing_mm), volume_mm3=float(len(coords) * voxel_mm3)))
    instances.sort(key=lambda b: -b.centroid_vox[2])
    return instances


SPINE_COLUMN_TOLERANCE_MM = 40.0
"""Components whose centroid lies further than this (in the axial plane) from the spine line are dropped."""


def _keep_spine_column(comps: list[npt.NDArray[np.bool_]], spacing_mm: float) -> list[npt.NDArray[np.bool_]]:
    if len(comps) <= 2:
        return comps
    cents = np.array([np.argwhere(c).mean(axis=0) for c in comps]) * spacing_mm
    sizes = np.array([c.sum() for c in comps], dtype=np.float64)
    # robust line fit x(z), y(z) weighted by size
    keep = np.ones(len(comps), dtype=bool)
    for _ in range(3):
        if keep.sum() < 2:
            break
        z = cents[keep, 2]
        w = sizes[keep]
        deg = 2 if keep.sum() >= 5 else 1
        px = np.polyfit(z, cents[keep, 0], deg, w=w)
        py = np.polyfit(z, cents[keep, 1], deg, w=w)
        d = np.hypot(cents[:, 0] - np.polyval(px, cents[:, 2]), cents[:, 1] - np.polyval(py, cents[:, 2]))
        new_keep = d < SPINE_COLUMN_TOLERANCE_MM
        if (new_keep == keep).all():
            break
        keep = new_keep
    return [c for c, k in zip(comps, keep, strict=True) if k]
