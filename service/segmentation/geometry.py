"""Canonical orientation and coarse resampling of CT volumes.

Canonical grid: array axis 0 points to patient left (+L), axis 1 to posterior (+P), axis 2 to superior (+S),
obtained from the native grid by an axis permutation and flips only (no interpolation), so it maps back exactly.
The coarse grid resamples the canonical grid to about ``COARSE_SPACING_MM`` isotropic with voxel centres
``x_native = (c + 0.5) * n / m - 0.5`` along each axis (torch ``interpolate(align_corners=False)`` convention).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage, sparse
from scipy.optimize import linear_sum_assignment

COARSE_SPACING_MM = 3.0
"""Isotropic voxel size of the coarse model grid (design choice: vertebral bodies are 20-35 mm tall)."""


@dataclass(frozen=True)
class CanonicalFrame:
    """How a native array maps to the canonical (+L, +P, +S) array."""

    native_shape: tuple[int, int, int]
    perm: tuple[int, int, int]
    """canonical axis c takes native axis perm[c]."""
    flip: tuple[bool, bool, bool]
    """canonical axis c is reversed with respect to native axis perm[c]."""
    affine_lps: npt.NDArray[np.float64]
    """canonical index -> LPS mm."""

    def __post_init__(self) -> None:
        if sorted(self.perm) != [0, 1, 2]:
            raise ValueError(f"perm must be a permutation of (0, 1, 2), got {self.perm}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.native_shape[a] for a in self.perm)  # type: ignore[return-value]

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        n = np.linalg.norm(self.affine_lps[:3, :3], axis=0)
        return (float(n[0]), float(n[1]), float(n[2]))

    def to_canonical(self, array: npt.NDArray) -> npt.NDArray:
        out = np.transpose(array, self.perm)
        for c in range(3):
            if self.flip[c]:
                out = np.flip(out, axis=c)
        return out

    def to_native(self, array: npt.NDArray) -> npt.NDArray:
        out = array
        for c in range(3):
            if self.flip[c]:
                out = np.flip(out, axis=c)
        inverse = np.argsort(self.perm)
        return np.ascontiguousarray(np.transpose(out, inverse))

    def native_slices(self, bbox_canonical: tuple[slice, slice, slice]) -> tuple[slice, slice, slice]:
        """A canonical bounding box as native slices (for in-place writes into a native array)."""
        native: list[slice] = [slice(None)] * 3
        for c in range(3):
            a = self.perm[c]
            s = bbox_canonical[c]
            start, stop = s.start or 0, s.stop if s.stop is not None else self.native_shape[a]
            if self.flip[c]:
                n = self.native_shape[a]
                start, stop = n - stop, n - start
            native[a] = slice(start, stop)
        return tuple(native)  # type: ignore[return-value]


def canonical_frame(affine_lps: npt.NDArray[np.float64], shape: tuple[int, int, int]) -> CanonicalFrame:
    """Frame for a native grid with the given affine (any patient position, any in-plane direction)."""
    matrix = np.asarray(affine_lps, dtype=np.float64)[:3, :3]
    directions = matrix / np.linalg.norm(matrix, axis=0)
    # Assign each patient axis (L, P, S) to the native axis most aligned with it (robust to oblique grids).
    rows, cols = linear_sum_assignment(-np.abs(directions))
    perm = [0, 0, 0]
    flip = [False, False, False]
    for p, a in zip(rows, cols, strict=True):
        perm[int(p)] = int(a)
        flip[int(p)] = bool(directions[p, a] < 0)
    # canonical index c -> native index
    m = np.zeros((4, 4))
    m[3, 3] = 1.0
    for c in range(3):
        a = perm[c]
        if flip[c]:
            m[a, c] = -1.0
            m[a, 3] = shape[a] - 1
        else:
            m[a, c] = 1.0
    affine_c = np.asarray(affine_lps, dtype=np.float64) @ m
    return CanonicalFrame(tuple(int(s) for s in shape), tuple(perm), tuple(flip), affine_c)  # type: ignore[arg-type]


@dataclass(frozen=True)
class CoarseGrid:
    canonical_shape: tuple[int, int, int]
    shape: tuple[int, int, int]
    affine_lps: npt.NDArray[np.float64]

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        n = np.linalg.norm(self.affine_lps[:3, :3], axis=0)
        return (float(n[0]), float(n[1]), float(n[2]))

    def coarse_coordinate(self, axis: int, native_index: npt.NDArray) -> npt.NDArray[np.float64]:
        """Fractional coarse index of canonical-native indices along one axis."""
        n, m = self.canonical_shape[axis], self.shape[axis]
        return (np.asarray(native_index, dtype=np.float64) + 0.5) * m / n - 0.5


def coarse_grid(frame: CanonicalFrame, spacing_mm: float = COARSE_SPACING_MM) -> CoarseGrid:
    shape = frame.shape
    sp = frame.spacing_mm
    m = tuple(max(1, round(n * s / spacing_mm)) for n, s in zip(shape, sp, strict=True))
    t = np.eye(4)
    for a in range(3):
        f = shape[a] / m[a]
        t[a, a] = f
        t[a, 3] = 0.5 * f - 0.5
    return CoarseGrid(shape, m, frame.affine_lps @ t)  # type: ignore[arg-type]


def axis_weights(n: int, m: int) -> sparse.csr_matrix:
    """(m x n) resampling matrix along one axis: exact area averaging when m <= n (each coarse voxel averages the
    native voxels it covers, with fractional overlaps), linear interpolation when m > n; coarse voxel c is centred
    at native coordinate (c + 0.5) * n / m - 0.5 in both cases."""
    rows, cols, vals = [], [], []
    f = n / m
    if m <= n:
        for c in range(m):
            lo, hi = c * f, (c + 1) * f
            for i in range(int(np.floor(lo)), min(n, int(np.ceil(hi)))):
                w = min(hi, i + 1) - max(lo, i)
                if w > 1e-9:
                    rows.append(c)
                    cols.append(i)
                    vals.append(w / f)
    else:
        for c in range(m):
            x = min(max((c + 0.5) * f - 0.5, 0.0), n - 1.0)
            i0 = int(np.floor(x))
            i1 = min(i0 + 1, n - 1)
            t = x - i0
            rows.extend([c, c])
            cols.extend([i0, i1])
            vals.extend([1.0 - t, t])
    return sparse.csr_matrix((np.asarray(vals, dtype=np.float32), (rows, cols)), shape=(m, n))


def resample_to_coarse(canonical: npt.NDArray, grid: CoarseGrid, order: int = 1) -> npt.NDArray:
    """Canonical native array -> coarse grid: separable exact area averaging (acts as the partial-volume blur of a
    coarse scanner) or linear interpolation for images (order=1), nearest voxel for labels (order=0)."""
    if order == 0:
        idx = [nearest_native_indices_inverse(grid, a) for a in range(3)]
        return np.ascontiguousarray(canonical[np.ix_(*idx)])
    out = np.asarray(canonical, dtype=np.float32)
    for axis in range(3):
        n, m = out.shape[axis], grid.shape[axis]
        if n == m:
            continue
        w = axis_weights(n, m)
        moved = np.moveaxis(out, axis, 0)
        flat = np.ascontiguousarray(moved).reshape(n, -1)
        res = np.asarray(w @ flat, dtype=np.float32).reshape((m, *moved.shape[1:]))
        out = np.moveaxis(res, 0, axis)
    return np.ascontiguousarray(out, dtype=np.float32)


def nearest_native_indices_inverse(grid: CoarseGrid, axis: int) -> npt.NDArray[np.intp]:
    """For each coarse voxel along ``axis``, the nearest canonical-native index."""
    n, m = grid.canonical_shape[axis], grid.shape[axis]
    x = (np.arange(m) + 0.5) * n / m - 0.5
    return np.clip(np.rint(x), 0, n - 1).astype(np.intp)


def upsample_region(coarse: npt.NDArray[np.float32], grid: CoarseGrid,
                    bbox: tuple[slice, slice, slice]) -> npt.NDArray[np.float32]:
    """Trilinear interpolation of a coarse array at the canonical-native voxels of ``bbox``."""
    axes = [grid.coarse_coordinate(a, np.arange(bbox[a].start, bbox[a].stop)) for a in range(3)]
    ci, cj, ck = np.meshgrid(*axes, indexing="ij")
    coords = np.stack([ci.ravel(), cj.ravel(), ck.ravel()])
    values = ndimage.map_coordinates(coarse.astype(np.float32), coords, order=1, mode="nearest")
    return values.reshape(ci.shape).astype(np.float32)


def nearest_native_indices(grid: CoarseGrid, axis: int, native_index: npt.NDArray) -> npt.NDArray[np.intp]:
    c = np.rint(grid.coarse_coordinate(axis, native_index)).astype(np.intp)
    return np.clip(c, 0, grid.shape[axis] - 1)


FIELD_MIN_HU = -1100.0
"""A coarse voxel reading below this is outside the reconstructed field of view: padding and the corners outside
the reconstruction circle read -1024 HU or lower (often -2000 or -3024), and averaging over a 3 mm voxel pulls a
voxel that is partly padding well below air (-1000 HU, whose noise averages out at 3 mm)."""


def field_extent_mm(in_field: npt.NDArray[np.bool_], centre_index: npt.NDArray[np.float64],
                    spacing_mm: tuple[float, float, float]) -> tuple[float, float, float]:
    """(left, right, posterior) distance in mm from a point (fractional canonical index, +L +P +S) to the edge of
    the reconstructed field in its axial slice: the edge of the grid or the first voxel outside the field (padding,
    outside the reconstruction circle) along the row through the point."""
    shape = in_field.shape
    i, j, k = (int(np.clip(round(float(c)), 0, s - 1)) for c, s in zip(centre_index, shape, strict=True))
    if not in_field[i, j, k]:
        return 0.0, 0.0, 0.0

    def run(line: npt.NDArray[np.bool_]) -> int:
        """Index of the last in-field voxel of a line starting at the point (line[0] is the point)."""
        out = np.flatnonzero(~line)
        return int(out[0]) - 1 if len(out) else len(line) - 1

    ci, cj = float(centre_index[0]), float(centre_index[1])
    left = (i + run(in_field[i:, j, k]) + 0.5 - ci) * spacing_mm[0]
    right = (ci - (i - run(in_field[i::-1, j, k])) + 0.5) * spacing_mm[0]
    posterior = (j + run(in_field[i, j:, k]) + 0.5 - cj) * spacing_mm[1]
    return float(left), float(right), float(posterior)
