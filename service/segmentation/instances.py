"""Separate vertebral bodies along the spine, on the coarse (3 mm) or the fine (1.25 mm) canonical grid (+L, +P,
+S axes; ``COARSE_RULES`` / ``FINE_RULES``).

Candidates are the connected components of the predicted body class (voxels more likely disc than body
removed) that lie on the spine column.  Components may hold several bodies (discs missed: thin thoracic discs at
3 mm, degenerate discs, bridging osteophytes) or a fragment of one body (weak predictions on unfamiliar scans),
so the whole column is cut along its centreline at once: every voxel gets an arc-length
coordinate along the smoothed centreline, the cross-sectional profile gives a cut score per bin of one voxel
(narrow and disc-like = good cut), and dynamic programming picks the cut set that minimises the summed score
under anatomical length limits (body + disc: ~15-36 mm thoracic, ~24-50 mm lumbar) and a length prior (at fine
resolution: small bodies short).
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
FINE_MIN_BODY_VOLUME_MM3 = 700.0
"""The same at 1.25 mm, where masks have no partial-volume rim: a small C7 at the top of a 5 mm chest scan measured
1.4 cm3 (true body ~4 cm3)."""
# Length limits of one body + one disc along the spine (Panjabi 1991/1992 body heights 15-28 mm, discs 4-12 mm).
THORACIC_PIECE_MM = (15.0, 25.0, 36.0)
LUMBAR_PIECE_MM = (24.0, 36.0, 50.0)
"""(min, expected, max) length of one piece."""
AMBIGUOUS_VOTE = 0.3
"""A piece whose thoracic share lies between this and 1 - this may be a thoracic or a lumbar body (T12/L1, or a
scan unlike the training data): the length limits of both apply."""
LUMBAR_SECTION_MM2 = 800.0
"""An ambiguous piece whose largest cross-section stays below this is a thoracic-size body (T12 ~10-11 cm2,
L1 ~12 cm2, mid-thoracic ~7 cm2, T1 ~4-5 cm2)."""
LENGTH_PRIOR_WEIGHT = 0.3
"""Cost per (10 mm)^2 deviation from the expected length, relative to a cut score in 0..1."""
THORACIC_LENGTH_FROM_SECTION = (11.4, 0.44)
LUMBAR_LENGTH_FROM_SECTION = (34.0, 0.04)
"""Expected piece length (mm) = a + b * sqrt(cross-section mm2) at fine resolution: small thoracic bodies are short
(T1 ~20 mm of body + disc, T12 ~27 mm); lumbar lengths hardly depend on size.  Fitted on the fine stage's pieces in
16 calibration phantoms (``write_testset(..., n=16, seed=7)``: training-side data, not the test sets): residual
SD 1.7 mm thoracic (3.2 mm with one length for all thoracic bodies), 2.4 mm lumbar."""
OPEN_PIECE_MIN_MM = 12.0
"""A piece cut by the field of view is split off only when at least this long (no slivers at the FOV edge)."""
CENTRELINE_SMOOTHING_MM = 30.0
"""Length of the (voxel-count weighted) moving average of the per-slice centroids that make the centreline: about
one body + disc.  The centroids of a curved spine step from body to body, and the sparse slices at a disc lie off
centre; a shorter, unweighted window (15 mm before) kept the zig-zag and inflated the arc length (a 43 mm L4
measured 53 mm in a scoliotic lordosis)."""
NARROWING_WINDOW_MM = 27.0
"""Cross-sections are compared with the largest one within this length (a body + a disc)."""
SPARSE_SLICE_FRACTION = 0.1
"""Slices with fewer candidate voxels than this fraction of the median slice do not steer the centreline."""
SACRAL_FRAGMENT_FRACTION = 0.35
"""A lowest piece under this fraction of the volume of the body above it is a sacral fragment (S1 is ~0.8-1.1 of
L5; a segment of S2 the model took for body measured 0.18 of S1)."""
SEED_OVERLAP = 0.5
"""Fraction of a component inside the seed for it to start the column."""
COLUMN_REACH_MM = 40.0
"""A component joins the spine column only within this distance (along z) of a slice the column covers."""
COLUMN_END_MM = 10.0
"""Length of a component's end (next to the column) that is compared with the column's centreline."""
SPINE_COLUMN_TOLERANCE_MM = 30.0
"""A component joins the column only when the centroid of its end next to the column lies within this distance, in
the axial plane, of the column's centreline there (a lordotic L5 steps ~25 mm back from L4; the aorta and other
off-spine blobs lie further out, and the fine stage only sees the tube around the spine).  Before, the median
voxel distance was compared: a wide L5 (56 mm) stepping back from L4 failed it and the count lost L5 and S1."""


@dataclass(frozen=True)
class CutRules:
    """What differs between cutting the coarse (3 mm) and the fine (1.25 mm) body masks into bodies."""

    cut_offset: float | None
    """What a cut at a bin of score s costs is s - offset.  None: the median score (coarse grid: a cut at a typical
    bin costs nothing, the length prior decides).  At fine resolution, where the discs are resolved, 0.5 (midway
    between a disc gap, score ~0, and a body, score ~1): a cut through a body costs, a cut in a disc gap pays, so
    bodies are split only where a disc is seen or where the length limits force it."""
    length_from_section: bool
    """Expect small bodies to be short (``THORACIC_LENGTH_FROM_SECTION``, fitted at fine resolution)."""
    min_body_volume_mm3: float
    """Smallest component kept as a (possibly FOV-cut) body; pieces under half of it are dropped."""


COARSE_RULES = CutRules(cut_offset=None, length_from_section=False, min_body_volume_mm3=MIN_BODY_VOLUME_MM3)
FINE_RULES = CutRules(cut_offset=0.5, length_from_section=True, min_body_volume_mm3=FINE_MIN_BODY_VOLUME_MM3)


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
    window = max(1, round(CENTRELINE_SMOOTHING_MM / spacing))
    if nz >= window > 1:
        # each slice counts in proportion to its voxels: the few voxels of a disc level (endplate rims of tilted
        # bodies, osteophytes) lie off-centre and would make the centreline zig-zag between bodies
        weight = np.where(valid, cnt, 0.0)
        total = np.maximum(ndimage.uniform_filter1d(weight, window, mode="nearest"), 1e-9)
        cx = ndimage.uniform_filter1d(weight * cx, window, mode="nearest") / total
        cy = ndimage.uniform_filter1d(weight * cy, window, mode="nearest") / total
    pts = np.stack([cx, cy, zi + z0], axis=1) * spacing
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1) if nz > 1 else np.zeros(0)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    tangent = np.gradient(pts, axis=0) if nz > 1 else np.array([[0.0, 0.0, 1.0]])
    tangent /= np.maximum(np.linalg.norm(tangent, axis=1, keepdims=True), 1e-6)
    k = z - z0
    offset = coords * spacing - pts[k]
    return arc[k] + np.einsum("ij,ij->i", offset, tangent[k])


def _expected_length(kind: tuple[float, float], piece_section_mm2: float, limits: tuple[float, float, float],
                     ) -> float:
    a, b = kind
    lo, _, hi = limits
    return float(np.clip(a + b * np.sqrt(piece_section_mm2), lo + 2.0, hi - 2.0))


def _choose_cuts(score: npt.NDArray[np.float64], vote: npt.NDArray[np.float64], bin_mm: float,
                 open_start: bool, open_end: bool, section_mm2: npt.NDArray[np.float64] | None = None,
                 length_from_section: bool = False) -> list[int]:
    """Bins to cut at (dynamic programming over cut positions; pieces respect the length limits).
    ``section_mm2``: the body's cross-section per bin, which decides ambiguous pieces (small = thoracic) and, with
    ``length_from_section``, the expected length of a piece (small bodies are short)."""
    n = len(score)
    inf = float("inf")

    def limits(b0: int, b1: int) -> tuple[float, float, float]:
        v = float(np.mean(vote[max(b0, 0): min(b1, n)])) if b1 > b0 else 0.5
        sec = section_mm2[max(b0, 0): min(b1, n)] if section_mm2 is not None and b1 > b0 else None
        if v >= 1.0 - AMBIGUOUS_VOTE or (sec is not None and float(np.max(sec)) < LUMBAR_SECTION_MM2):
            # thoracic vote, or small bodies (cervicothoracic): a lumbar length would merge two of them
            kind: tuple[tuple[float, float], ...] = (THORACIC_LENGTH_FROM_SECTION,)
            lim = THORACIC_PIECE_MM
        elif v <= AMBIGUOUS_VOTE:
            kind, lim = (LUMBAR_LENGTH_FROM_SECTION,), LUMBAR_PIECE_MM
        else:
            # thoracolumbar junction or an unfamiliar scan: either kind of body
            kind = (THORACIC_LENGTH_FROM_SECTION, LUMBAR_LENGTH_FROM_SECTION)
            lim = THORACIC_PIECE_MM[0], 0.5 * (THORACIC_PIECE_MM[1] + LUMBAR_PIECE_MM[1]), LUMBAR_PIECE_MM[2]
        if not length_from_section or sec is None:
            return lim
        median = float(np.median(sec))
        return lim[0], float(np.mean([_expected_length(k, median, lim) for k in kind])), lim[2]

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
                     spacing: float, rules: CutRules) -> list[npt.NDArray[np.bool_]]:
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
    local_max = ndimage.maximum_filter1d(area, max(3, round(NARROWING_WINDOW_MM / spacing)), mode="nearest")
    narrow = area / np.maximum(local_max, 1.0)
    score = 0.5 * narrow + 0.5 * (1.0 - disc) * bodyp
    zs = coords[:, 2]
    open_start = bool(zs.min() == 0)  # t increases upwards: bin 0 is the caudal end
    open_end = bool(zs.max() == mask.shape[2] - 1)
    # a cut at a typical bin costs nothing, at a narrow / disc-like bin it pays (otherwise fewer cuts always win)
    offset = float(np.median(score)) if rules.cut_offset is None else rules.cut_offset
    cuts = _choose_cuts(score - offset, vote, spacing, open_start, open_end, local_max * spacing**2,
                        rules.length_from_section)
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
                thoracic_share: npt.NDArray[np.float32] | None = None, rules: CutRules = COARSE_RULES,
                seed: npt.NDArray[np.bool_] | None = None) -> list[BodyInstance]:
    """Body instances ordered cranial to caudal (decreasing axis-2 coordinate).  ``rules``: ``COARSE_RULES`` or
    ``FINE_RULES`` for the grid the probabilities are on.  ``seed``: see ``_keep_spine_column``."""
    body = body_prob > 0.5
    voxel_mm3 = spacing_mm**3
    lab, n = ndimage.label(body)  # face connectivity: fewer bridges between neighbouring bodies
    comps: list[npt.NDArray[np.bool_]] = []
    if n:
        sizes = ndimage.sum_labels(np.ones_like(lab), lab, index=np.arange(1, n + 1))
        for i, s in enumerate(sizes, start=1):
            if s * voxel_mm3 >= rules.min_body_volume_mm3:
                comps.append(lab == i)
    comps = _keep_spine_column(comps, spacing_mm, seed)
    out: list[npt.NDArray[np.bool_]] = []
    if comps:
        # one chain for the whole column: fragments of one body are joined, fused bodies are cut, gaps between
        # components are free cuts
        column = np.logical_or.reduce(comps)
        out = _split_component(column, body_prob, disc_prob, thoracic_share, spacing_mm, rules)
    instances = []
    for m in out:
        coords = np.argwhere(m)
        if len(coords) * voxel_mm3 < rules.min_body_volume_mm3 / 2:
            continue
        zs = coords[:, 2]
        instances.append(BodyInstance(
            mask=m, centroid_vox=tuple(float(v) for v in coords.mean(axis=0)),  # type: ignore[arg-type]
            height_mm=float((zs.max() - zs.min() + 1) * spacing_mm), volume_mm3=float(len(coords) * voxel_mm3)))
    instances.sort(key=lambda b: -b.centroid_vox[2])
    return _without_sacral_fragment(instances)


def _without_sacral_fragment(instances: list[BodyInstance]) -> list[BodyInstance]:
    """Drop a lowest piece far smaller than the body above it, unless the field of view cuts it: a fragment of the
    sacrum below S1 (or of the coccyx), not a vertebral body.  Counted as one, it would push every name up a level
    (it is taken for S1, S1 for L5, ...)."""
    if len(instances) < 2:
        return instances
    low, above = instances[-1], instances[-2]
    if low.mask[..., 0].any() or low.volume_mm3 >= SACRAL_FRAGMENT_FRACTION * above.volume_mm3:
        return instances
    logger.info("lowest piece (%.1f cm3) is %.0f %% of the body above it: a sacral fragment, not a body",
                low.volume_mm3 / 1000.0, 100.0 * low.volume_mm3 / above.volume_mm3)
    return instances[:-1]


def _column_centres(points: list[npt.NDArray[np.int64]]) -> dict[int, tuple[float, float]]:
    """Per-slice centroid of the column, from slices with a solid cross-section (>= 30 % of the median: the thin
    first / last slices of a body and disc-level slivers give unreliable centroids)."""
    pts = np.concatenate(points)
    z = pts[:, 2]
    nz = int(z.max()) + 1
    cnt = np.bincount(z, minlength=nz).astype(np.float64)
    cx = np.bincount(z, weights=pts[:, 0], minlength=nz) / np.maximum(cnt, 1)
    cy = np.bincount(z, weights=pts[:, 1], minlength=nz) / np.maximum(cnt, 1)
    good = cnt >= 0.3 * float(np.median(cnt[cnt > 0]))
    return {int(k): (float(cx[k]), float(cy[k])) for k in np.nonzero(good)[0]}


def _keep_spine_column(comps: list[npt.NDArray[np.bool_]], spacing_mm: float,
                       seed: npt.NDArray[np.bool_] | None = None) -> list[npt.NDArray[np.bool_]]:
    """Drop components away from the spine.  The column grows from the largest component: a component joins when
    the end of it next to the column lies (median voxel distance) within the tolerance, horizontally, of the
    column's centreline at the nearest slice the column covers, and that slice is at most ``COLUMN_REACH_MM`` away
    along z.  Growing body by body follows the spine's curvature (kyphosis, lordosis, the sacrum's tilt,
    scoliosis), also when every body is its own component (the fine stage).  ``seed``: where the spine is known to
    be (the coarse model's bodies, for the fine stage); the column then starts from every component that lies
    mostly inside it, instead of from the largest one."""
    if len(comps) <= 1:
        return comps
    points = [np.argwhere(c) for c in comps]
    keep = [False] * len(comps)
    if seed is not None:
        keep = [bool(np.mean(seed[tuple(p.T)]) >= SEED_OVERLAP) for p in points]
    if not any(keep):
        keep[int(np.argmax([len(p) for p in points]))] = True
    reach = COLUMN_REACH_MM / spacing_mm
    changed = True
    while changed:
        changed = False
        centre = _column_centres([p for p, k in zip(points, keep, strict=True) if k])
        zs = np.array(sorted(centre))
        for i, q in enumerate(points):
            if keep[i]:
                continue
            z = q[:, 2]
            hi = zs[np.clip(np.searchsorted(zs, z), 0, len(zs) - 1)]
            lo = zs[np.clip(np.searchsorted(zs, z) - 1, 0, len(zs) - 1)]
            nearest = np.where(np.abs(lo - z) < np.abs(hi - z), lo, hi)
            dz = np.abs(nearest - z)
            if float(dz.min()) > reach:
                continue
            # compare the part of the component next to the column (a body below the column's end continues it
            # there; its far end may curve away, as S1 does under L5)
            sel = dz <= dz.min() + COLUMN_END_MM / spacing_mm
            cxy = np.array([centre[int(k)] for k in nearest[sel]])
            d = np.hypot(*(q[sel, :2] - cxy).mean(axis=0)) * spacing_mm
            if float(d) < SPINE_COLUMN_TOLERANCE_MM:
                keep[i] = True
                changed = True
                break  # recompute the centreline with the new member
    return [c for c, k in zip(comps, keep, strict=True) if k]
