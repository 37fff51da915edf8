"""Separate vertebral bodies along the spine on the coarse canonical grid (+L, +P, +S axes).

Candidates are the connected components of the predicted body class (voxels more likely disc than body
removed) that lie on the spine column.  Components may hold several bodies (discs missed: thin thoracic discs at
3 mm, degenerate discs, bridging osteophytes) or a fragment of one body (weak predictions on unfamiliar scans),
so the whole column is cut along its centreline at once: every voxel gets an arc-length
coordinate along the smoothed centreline, the cross-sectional profile gives a cut score per 3 mm bin (narrow
and disc-like = good cut), and dynamic programming picks the cut set that minimises the summed score under
anatomical length limits (body + disc: ~20-36 mm thoracic, ~28-48 mm lumbar).
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
"""Smallest component kept as a (possibly FOV-cut) body: ~1/4 of a T1 body (~6 cm3; L1 ~ 20 cm3)."""
# Length limits of one body + one disc along the spine (Panjabi 1991/1992 body heights 15-28 mm, discs 4-12 mm).
THORACIC_PIECE_MM = (15.0, 25.0, 36.0)
LUMBAR_PIECE_MM = (24.0, 36.0, 50.0)
"""(min, expected, max) length of one piece."""
LENGTH_PRIOR_WEIGHT = 0.3
OPEN_PIECE_MIN_MM = 12.0
"""A piece cut by the field of view is split off only when at least this long (no slivers at the FOV edge)."""
"""Cost per (10 mm)^2 deviation from the expected length, relative to a cut score in 0..1."""
SPARSE_SLICE_FRACTION = 0.1
"""Slices with fewer candidate voxels than this fraction of the median slice do not steer the centreline."""
SPINE_COLUMN_TOLERANCE_MM = 30.0
"""Components whose voxels lie (median) further than this in the axial plane from the spine centreline are not
bodies (a body's own voxels lie within ~10-15 mm of its centre)."""


@dataclass(frozen=True)
class BodyInstance:
    mask: npt.NDArray[np.bool_]
    """Coarse grid mask."""
    centroid_vox: tuple[float, float, float]
    height_mm: float
    volume_mm3: float


def _centreline_coordinate(coords: npt.NDArray[np.int64], spacing: float) -> npt.NDArray[np.float64]:
    """Arc-length coordinate (mm, increasing upwards) of each voxel along the component's smoothed centreline."""
    z = coords[:, 2]
    z0, z1 = int(z.min()), int(z.max())
    nz = z1 - z0 + 1
    cnt = np.bincount(z - z0, minlength=nz).astype(np.float64)
    cx = np.bincount(z - z0, weights=coords[:, 0], minlength=nz) / np.maximum(cnt, 1)
    cy = np.bincount(z - z0, weights=coords[:, 1], minlength=nz) / np.maximum(cnt, 1)
    # sparse slices (discs, bridging osteophytes) give unreliable centroids: interpolate over them
    valid = cnt >= SPARSE_SLICE_FRACTION * float(np.median(cnt[cnt > 0]))
    zi = np.arange(nz)
    cx = np.interp(zi, zi[valid], cx[valid])
    cy = np.interp(zi, zi[valid], cy[valid])
    if nz >= 5:
        cx = ndimage.uniform_filter1d(cx, 5, mode="nearest")
        cy = ndimage.uniform_filter1d(cy, 5, mode="nearest")
    pts = np.stack([cx, cy, zi + z0], axis=1) * spacing
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1) if nz > 1 else np.zeros(0)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    tangent = np.gradient(pts, axis=0) if nz > 1 else np.array([[0.0, 0.0, 1.0]])
    tangent /= np.maximum(np.linalg.norm(tangent, axis=1, keepdims=True), 1e-6)
    k = z - z0
    offset = coords * spacing - pts[k]
    return arc[k] + np.einsum("ij,ij->i", offset, tangent[k])


def _choose_cuts(score: npt.NDArray[np.float64], vote: npt.NDArray[np.float64], bin_mm: float,
                 open_start: bool, open_end: bool) -> list[int]:
    """Bins to cut at (dynamic programming over cut positions; pieces respect the length limits)."""
    n = len(score)
    inf = float("inf")

    def limits(b0: int, b1: int) -> tuple[float, float, float]:
        v = float(np.mean(vote[max(b0, 0): min(b1, n)])) if b1 > b0 else 0.5
        return THORACIC_PIECE_MM if v >= 0.5 else LUMBAR_PIECE_MM

    def piece_cost(a: int, b: int) -> float:
        """Cost of a piece between cut a (or start -1) and cut b (or end n)."""
        length = (b - a) * bin_mm
        lo, exp, hi = limits(a + 1, b)
        first, last = a == -1, b == n
        # end pieces stop at a body end (half a disc shorter) or at the field of view (any length above a minimum)
        if (first and open_start) or (last and open_end):
            return 0.0 if OPEN_PIECE_MIN_MM <= length <= hi else inf
        if first or last:
            lo, exp = lo - 6.0, exp - 4.0
        if length < lo or length > hi:
            return inf
        return LENGTH_PRIOR_WEIGHT * ((length - exp) / 10.0) ** 2

    best = np.full(n + 1, inf)
    prev = np.full(n + 1, -2, dtype=int)
    # index c in 0..n-1 = cut at bin c; index n = end
    for c in range(n + 1):
        cut_cost = score[c] if c < n else 0.0
        # from start
        pc = piece_cost(-1, c)
        if pc + cut_cost < best[c]:
            best[c], prev[c] = pc + cut_cost, -1
        for a in range(max(0, c - int(60 / bin_mm)), c):
            if best[a] == inf:
                continue
            pc = piece_cost(a, c)
            if pc == inf:
                continue
            total = best[a] + pc + cut_cost
            if total < best[c]:
                best[c], prev[c] = total, a
    if best[n] == inf:
        return []
    cuts = []
    c = int(prev[n])
    while c >= 0:
        cuts.append(c)
        c = int(prev[c])
    return sorted(cuts)


def _split_component(mask: npt.NDArray[np.bool_], body_prob: npt.NDArray[np.float32],
                     disc_prob: npt.NDArray[np.float32], thoracic_share: npt.NDArray[np.float32] | None,
                     spacing: float) -> list[npt.NDArray[np.bool_]]:
    coords = np.argwhere(mask)
    t = _centreline_coordinate(coords, spacing)
    bins = np.floor((t - t.min()) / spacing).astype(int)
    n_bins = int(bins.max()) + 1
    if n_bins < 3:
        return [mask]
    idx = tuple(coords.T)
    area = np.bincount(bins, minlength=n_bins).astype(np.float64)
    disc = np.bincount(bins, weights=disc_prob[idx], minlength=n_bins) / np.maximum(area, 1)
    bodyp = np.bincount(bins, weights=body_prob[idx], minlength=n_bins) / np.maximum(area, 1)
    vote = (np.bincount(bins, weights=thoracic_share[idx], minlength=n_bins) / np.maximum(area, 1)
            if thoracic_share is not None else np.full(n_bins, 0.5))
    local_max = ndimage.maximum_filter1d(area, 9, mode="nearest")
    narrow = area / np.maximum(local_max, 1.0)
    score = 0.5 * narrow + 0.5 * (1.0 - disc) * bodyp
    zs = coords[:, 2]
    open_start = bool(zs.min() == 0)  # t increases upwards: bin 0 is the caudal end
    open_end = bool(zs.max() == mask.shape[2] - 1)
    # a cut at a typical bin costs nothing, at a narrow / disc-like bin it pays (otherwise fewer cuts always win)
    cuts = _choose_cuts(score - float(np.median(score)), vote, spacing, open_start, open_end)
    if not cuts:
        return [mask]
    pieces = []
    edges = [-1, *cuts, n_bins]
    for lo, hi in itertools.pairwise(edges):
        sel = (bins > lo) & (bins < hi)
        if not sel.any():
            continue
        piece = np.zeros_like(mask)
        piece[tuple(coords[sel].T)] = True
        pieces.append(piece)
    return pieces


def find_bodies(body_prob: npt.NDArray[np.float32], disc_prob: npt.NDArray[np.float32], spacing_mm: float,
                thoracic_share: npt.NDArray[np.float32] | None = None) -> list[BodyInstance]:
    """Body instances ordered cranial to caudal (decreasing axis-2 coordinate)."""
    body = body_prob > 0.5
    voxel_mm3 = spacing_mm**3
    lab, n = ndimage.label(body)  # face connectivity: fewer bridges between neighbouring bodies
    comps: list[npt.NDArray[np.bool_]] = []
    if n:
        sizes = ndimage.sum_labels(np.ones_like(lab), lab, index=np.arange(1, n + 1))
        for i, s in enumerate(sizes, start=1):
            if s * voxel_mm3 >= MIN_BODY_VOLUME_MM3:
                comps.append(lab == i)
    comps = _keep_spine_column(comps, spacing_mm)
    out: list[npt.NDArray[np.bool_]] = []
    if comps:
        # one chain for the whole column: fragments of one body are joined, fused bodies are cut, gaps between
        # components are free cuts
        column = np.logical_or.reduce(comps)
        out = _split_component(column, body_prob, disc_prob, thoracic_share, spacing_mm)
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


def _centreline_xy(comps: list[npt.NDArray[np.bool_]]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    pts = np.concatenate([np.argwhere(c) for c in comps])
    nz = comps[0].shape[2]
    cnt = np.bincount(pts[:, 2], minlength=nz).astype(np.float64)
    cx = np.bincount(pts[:, 2], weights=pts[:, 0], minlength=nz) / np.maximum(cnt, 1)
    cy = np.bincount(pts[:, 2], weights=pts[:, 1], minlength=nz) / np.maximum(cnt, 1)
    valid = cnt > 0
    zi = np.arange(nz)
    return np.interp(zi, zi[valid], cx[valid]), np.interp(zi, zi[valid], cy[valid])


def _keep_spine_column(comps: list[npt.NDArray[np.bool_]], spacing_mm: float) -> list[npt.NDArray[np.bool_]]:
    """Drop components away from the spine: the median horizontal distance of a component's voxels from the
    centreline (per-slice centroid, interpolated along z) must stay below the tolerance.  The centreline starts
    from the largest component and is refitted on the kept ones."""
    if len(comps) <= 1:
        return comps
    sizes = [int(c.sum()) for c in comps]
    main = [comps[int(np.argmax(sizes))]]
    keep: list[bool] = []
    for _ in range(3):
        cx, cy = _centreline_xy(main)
        keep = []
        for c in comps:
            q = np.argwhere(c)
            d = np.hypot(q[:, 0] - cx[q[:, 2]], q[:, 1] - cy[q[:, 2]]) * spacing_mm
            keep.append(float(np.median(d)) < SPINE_COLUMN_TOLERANCE_MM)
        main = [c for c, k in zip(comps, keep, strict=True) if k] or main
    return [c for c, k in zip(comps, keep, strict=True) if k]
