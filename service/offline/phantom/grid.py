"""Canonical render grid and the analytic primitives evaluated on sub-blocks of it.

The renderer works on a canonical grid: array axes (i, j, k) along +L, +P, +S (x, y, z in LPS mm) with positive
spacings. The acquisition step re-orders the arrays for the DICOM orientation (e.g. feet-first).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

F32 = np.float32
Array = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Grid:
    origin_mm: tuple[float, float, float]
    """LPS position of voxel (0, 0, 0)."""
    spacing_mm: tuple[float, float, float]
    shape: tuple[int, int, int]

    def __post_init__(self) -> None:
        if min(self.spacing_mm) <= 0:
            raise ValueError(f"spacing_mm must be positive, got {self.spacing_mm}")
        if min(self.shape) <= 0:
            raise ValueError(f"shape must be positive, got {self.shape}")

    def axis(self, n: int) -> npt.NDArray[np.float64]:
        return self.origin_mm[n] + self.spacing_mm[n] * np.arange(self.shape[n], dtype=np.float64)

    def affine(self) -> npt.NDArray[np.float64]:
        a = np.diag([*self.spacing_mm, 1.0])
        a[:3, 3] = self.origin_mm
        return a

    def block(self, lo: Sequence[float], hi: Sequence[float]) -> Block | None:
        """The sub-block covering the world box [lo, hi] (mm), or None when it misses the grid."""
        slices = []
        for n in range(3):
            i0 = int(np.floor((lo[n] - self.origin_mm[n]) / self.spacing_mm[n]))
            i1 = int(np.ceil((hi[n] - self.origin_mm[n]) / self.spacing_mm[n])) + 1
            i0, i1 = max(i0, 0), min(i1, self.shape[n])
            if i1 <= i0:
                return None
            slices.append(slice(i0, i1))
        return Block(self, (slices[0], slices[1], slices[2]))

    def full(self) -> Block:
        return Block(self, (slice(0, self.shape[0]), slice(0, self.shape[1]), slice(0, self.shape[2])))


class Block:
    """A rectangular sub-block of a grid with broadcastable coordinate arrays X (n,1,1), Y (1,n,1), Z (1,1,n)."""

    def __init__(self, grid: Grid, slices: tuple[slice, slice, slice]) -> None:
        self.grid = grid
        self.slices = slices
        ax = [grid.axis(n)[slices[n]].astype(F32) for n in range(3)]
        self.X = ax[0][:, None, None]
        self.Y = ax[1][None, :, None]
        self.Z = ax[2][None, None, :]
        self.shape = (len(ax[0]), len(ax[1]), len(ax[2]))

    def sub(self, lo: Sequence[float], hi: Sequence[float]) -> tuple[tuple[slice, slice, slice], Block] | None:
        """A sub-block of this block (slices relative to this block, and the sub-block itself)."""
        b = self.grid.block(lo, hi)
        if b is None:
            return None
        rel = []
        for n in range(3):
            s0 = max(b.slices[n].start, self.slices[n].start)
            s1 = min(b.slices[n].stop, self.slices[n].stop)
            if s1 <= s0:
                return None
            rel.append(slice(s0 - self.slices[n].start, s1 - self.slices[n].start))
        absolute = tuple(
            slice(r.start + self.slices[n].start, r.stop + self.slices[n].start) for n, r in enumerate(rel)
        )
        return (rel[0], rel[1], rel[2]), Block(self.grid, absolute)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Capsule:
    p0: tuple[float, float, float]
    p1: tuple[float, float, float]
    radius_mm: float
    z_scale: float = 1.0
    """>1 stretches the cross-section along z (ribs are taller than thick)."""


def capsule_sd(block: Block, cap: Capsule) -> Array:
    """Signed distance (mm, approximately, in the z-scaled metric) to a capsule on a block."""
    zs = 1.0 / cap.z_scale
    p0 = np.asarray(cap.p0, dtype=F32)
    u = (np.asarray(cap.p1, dtype=F32) - p0) * np.array([1, 1, zs], dtype=F32)
    dx = block.X - p0[0]
    dy = block.Y - p0[1]
    dz = (block.Z - p0[2]) * F32(zs)
    uu = float(u @ u)
    if uu < 1e-9:
        t = F32(0.0)
    else:
        t = np.clip((dx * u[0] + dy * u[1] + dz * u[2]) / F32(uu), 0.0, 1.0)
    ex = dx - t * u[0]
    ey = dy - t * u[1]
    ez = dz - t * u[2]
    return np.sqrt(ex * ex + ey * ey + ez * ez) - F32(cap.radius_mm)


def union_sd(block: Block, capsules: Sequence[Capsule], margin_mm: float = 3.0) -> Array:
    """Min signed distance of a union of capsules on a block (each evaluated only in its own bounding box)."""
    out = np.full(block.shape, F32(1e3), dtype=F32)
    for cap in capsules:
        r = cap.radius_mm + margin_mm
        rz = cap.radius_mm * cap.z_scale + margin_mm
        lo = [min(cap.p0[n], cap.p1[n]) - (rz if n == 2 else r) for n in range(3)]
        hi = [max(cap.p0[n], cap.p1[n]) + (rz if n == 2 else r) for n in range(3)]
        found = block.sub(lo, hi)
        if found is None:
            continue
        rel, sub = found
        np.minimum(out[rel], capsule_sd(sub, cap), out=out[rel])
    return out


def capsules_bbox(capsules: Sequence[Capsule], margin_mm: float = 3.0) -> tuple[list[float], list[float]]:
    pts = np.array([c.p0 for c in capsules] + [c.p1 for c in capsules], dtype=np.float64)
    rmax = max(c.radius_mm * max(1.0, c.z_scale) for c in capsules) + margin_mm
    return list(pts.min(axis=0) - rmax), list(pts.max(axis=0) + rmax)


def local_coords(block: Block, centre: Sequence[float], frame: npt.NDArray[np.float64]) -> tuple[Array, Array, Array]:
    """Coordinates (a, b, c) of the block's voxels in a local frame (rows of ``frame`` = unit axes)."""
    dx = block.X - F32(centre[0])
    dy = block.Y - F32(centre[1])
    dz = block.Z - F32(centre[2])
    f = frame.astype(F32)
    a = dx * f[0, 0] + dy * f[0, 1] + dz * f[0, 2]
    b = dx * f[1, 0] + dy * f[1, 1] + dz * f[1, 2]
    c = dx * f[2, 0] + dy * f[2, 1] + dz * f[2, 2]
    return a, b, c


def upsample_linear(a: Array, shape: tuple[int, int, int]) -> Array:
    """Separable linear interpolation of ``a`` onto ``shape`` (end points aligned); fast, O(output).

    The last axis is done first (a gather on the smallest array), the first axis last (block copies).
    """
    for axis in (2, 1, 0):
        n_in, n_out = a.shape[axis], shape[axis]
        if n_in == n_out:
            continue
        pos = np.linspace(0.0, n_in - 1.0, n_out)
        i0 = np.floor(pos).astype(np.intp)
        i1 = np.minimum(i0 + 1, n_in - 1)
        w_shape = [1, 1, 1]
        w_shape[axis] = n_out
        w = (pos - i0).astype(F32).reshape(w_shape)
        lo = np.take(a, i0, axis=axis)
        hi = np.take(a, i1, axis=axis)
        hi -= lo
        hi *= w
        lo += hi
        a = lo
    return a


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int, int], sigma_vox: float) -> Array:
    """Unit-variance Gaussian random field with correlation ``sigma_vox`` (computed coarse, then upsampled).

    Returned in Fortran order (x fastest), like the canvas arrays.
    """
    rev = (shape[2], shape[1], shape[0])
    factor = max(1, int(sigma_vox // 1.5))
    small = rev if factor == 1 else tuple(max(2, int(np.ceil(s / factor)) + 1) for s in rev)
    field = rng.standard_normal(small, dtype=F32)
    field = ndimage.gaussian_filter(field, sigma=max(sigma_vox / factor, 0.5), mode="wrap", truncate=3.0)
    field -= field.mean()
    field *= F32(1.0 / max(float(field.std()), 1e-6))
    if factor > 1:
        field = upsample_linear(field, rev)  # type: ignore[arg-type]
    return field.T


class SmoothField:
    """A unit-variance Gaussian random field on a grid block, stored coarse and upsampled one axial plane at a
    time (bounded memory for large grids)."""

    def __init__(self, rng: np.random.Generator, shape: tuple[int, int, int], sigma_vox: float,
                 min_factor: int = 1) -> None:
        self.shape = shape
        factor = max(min_factor, int(sigma_vox // 1.5))
        small = shape if factor == 1 else tuple(max(2, int(np.ceil(s / factor)) + 1) for s in shape)
        field = rng.standard_normal(small[::-1], dtype=F32).T  # Fortran order, x fastest
        field = ndimage.gaussian_filter(field, sigma=max(sigma_vox / factor, 0.5), mode="wrap", truncate=3.0)
        field -= field.mean()
        field *= F32(1.0 / max(float(field.std()), 1e-6))
        self.small = field
        self.factor = factor
        nx, ny = shape[0], shape[1]
        sx, sy = field.shape[0], field.shape[1]
        px = np.linspace(0.0, sx - 1.0, nx)
        py = np.linspace(0.0, sy - 1.0, ny)
        self._ix0 = np.floor(px).astype(np.intp)
        self._ix1 = np.minimum(self._ix0 + 1, sx - 1)
        self._wx = (px - self._ix0).astype(F32)[:, None]
        self._iy0 = np.floor(py).astype(np.intp)
        self._iy1 = np.minimum(self._iy0 + 1, sy - 1)
        self._wy = (py - self._iy0).astype(F32)[None, :]

    def plane(self, k: int) -> Array:
        """Axial plane k as an (nx, ny, 1) array."""
        if self.factor == 1:
            return self.small[:, :, k:k + 1]
        nz, sz = self.shape[2], self.small.shape[2]
        pz = k * (sz - 1.0) / max(nz - 1, 1)
        z0 = int(np.floor(pz))
        z1 = min(z0 + 1, sz - 1)
        wz = F32(pz - z0)
        p = self.small[:, :, z0] * (F32(1.0) - wz) + self.small[:, :, z1] * wz
        p = p[self._ix0] * (F32(1.0) - self._wx) + p[self._ix1] * self._wx
        p = p[:, self._iy0] * (F32(1.0) - self._wy) + p[:, self._iy1] * self._wy
        return p[:, :, None]
