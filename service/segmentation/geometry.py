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
import torch
import torch.nn.functional as tfn
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


def resample_to_coarse(canonical: npt.NDArray[np.float32], grid: CoarseGrid, order: int = 1) -> npt.NDArray:
    """Canonical native array -> coarse grid (trilinear with antialiasing-by-area for images, nearest for labels)."""
    t = torch.from_numpy(np.ascontiguousarray(canonical))[None, None]
    if order == 0:
        out = tfn.interpolate(t.float(), size=grid.shape, mode="nearest")
        return out[0, 0].numpy().astype(canonical.dtype)
    t = t.float()
    # area averaging where downsampling (acts as the slice-thickness blur a coarse scanner would give)
    factors = [n / m for n, m in zip(grid.canonical_shape, grid.shape, strict=True)]
    if all(f >= 1.0 for f in factors):
        out = tfn.adaptive_avg_pool3d(t, grid.shape) if any(f > 1.0 for f in factors) else t
    else:
        out = tfn.interpolate(t, size=grid.shape, mode="trilinear", align_corners=False)
        if any(f > 1.0 for f in factors):
            out = tfn.adaptive_avg_pool3d(tfn.interpolate(t, size=tuple(max(a, b) for a, b in zip(
                grid.shape, grid.canonical_shape, strict=True)), mode="trilinear", align_corners=False), grid.shape)
    return out[0, 0].numpy().astype(np.float32)


def upsample_region(coarse: npt.NDArray[np.float32], grid: CoarseGrid,
                    bbox: tuple[slice, slice, slice]) -> npt.NDArray[np.float32]:
    """Trilinear interpolation of a coarse array at the canonical-native voxels of ``bbox``."""
    from scipy.ndimage import map_coordinates

    axes = [grid.coarse_coordinate(a, np.arange(bbox[a].start, bbox[a].stop)) for a in range(3)]
    ci, cj, ck = np.meshgrid(*axes, indexing="ij")
    coords = np.stack([ci.ravel(), cj.ravel(), ck.ravel()])
    values = map_coordinates(coarse.astype(np.float32), coords, order=1, mode="nearest")
    return values.reshape(ci.shape).astype(np.float32)


def nearest_native_indices(grid: CoarseGrid, axis: int, native_index: npt.NDArray) -> npt.NDArray[np.intp]:
    c = np.rint(grid.coarse_coordinate(axis, native_index)).astype(np.intp)
    return np.clip(c, 0, grid.shape[axis] - 1)
