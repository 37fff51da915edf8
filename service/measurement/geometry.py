"""Cropped masks and the local vertebral frame (axis, anterior, lateral) in patient millimetres.

The vertebral axis of a level is taken from the centroids of its neighbours (cranial minus caudal), so it follows
the spinal curve (kyphosis, lordosis) instead of the scanner's z axis; the anterior direction is patient anterior
(-P in LPS) made orthogonal to that axis.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from service.domain.levels import VertebraLevel
from service.domain.volume import CTVolume

LPS_SUPERIOR = np.array([0.0, 0.0, 1.0])
LPS_ANTERIOR = np.array([0.0, -1.0, 0.0])
MAX_AXIS_TILT_DEG = 60.0
"""A neighbour-derived axis tilted more than this from patient superior is implausible; patient S is used instead."""


@dataclass(frozen=True, eq=False)
class CroppedMask:
    """A boolean mask stored as a crop of the full CT grid: ``full[offset + idx] = mask[idx]``."""

    offset: tuple[int, int, int]
    mask: npt.NDArray[np.bool_]

    def __post_init__(self) -> None:
        if self.mask.ndim != 3:
            raise ValueError(f"mask must be 3-D, got shape {self.mask.shape}")
        if self.mask.dtype != np.bool_:
            raise ValueError(f"mask must be boolean, got {self.mask.dtype}")
        if min(self.offset) < 0:
            raise ValueError(f"offset must be >= 0, got {self.offset}")

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(o, o + n) for o, n in zip(self.offset, self.mask.shape, strict=True))  # type: ignore[return-value]

    @property
    def voxel_count(self) -> int:
        return int(np.count_nonzero(self.mask))

    def indices(self) -> npt.NDArray[np.int64]:
        """Global voxel indices (N, 3) of the mask's true voxels."""
        return np.argwhere(self.mask) + np.asarray(self.offset, dtype=np.int64)

    def values(self, array: npt.NDArray) -> npt.NDArray:
        """The values of a full-grid array under the mask."""
        return array[self.slices][self.mask]

    def padded(self, margin: tuple[int, int, int], grid_shape: tuple[int, int, int]) -> CroppedMask:
        """The same mask in a crop enlarged by ``margin`` voxels per axis (clipped to the grid)."""
        lo = [max(0, o - m) for o, m in zip(self.offset, margin, strict=True)]
        hi = [min(g, o + n + m) for o, n, m, g in zip(self.offset, self.mask.shape, margin, grid_shape, strict=True)]
        out = np.zeros([h - lo_ for lo_, h in zip(lo, hi, strict=True)], dtype=bool)
        inner = tuple(slice(o - lo_, o - lo_ + n) for o, lo_, n in zip(self.offset, lo, self.mask.shape, strict=True))
        out[inner] = self.mask
        return CroppedMask(offset=(lo[0], lo[1], lo[2]), mask=out)

    def paint(self, target: npt.NDArray, value: int) -> None:
        """Write ``value`` into a full-grid array wherever the mask is true."""
        target[self.slices][self.mask] = value


def crop_labels(body_labels: npt.NDArray[np.integer]) -> dict[int, CroppedMask]:
    """One CroppedMask per label value present (one pass over the volume)."""
    out: dict[int, CroppedMask] = {}
    max_label = int(body_labels.max()) if body_labels.size else 0
    if max_label <= 0:
        return out
    # find_objects takes any integer type: no int32 copy of the whole volume (1.5 GB on a 1500-slice series)
    for value, sl in enumerate(ndimage.find_objects(body_labels, max_label=max_label), start=1):
        if sl is None:
            continue
        mask = body_labels[sl] == value
        out[value] = CroppedMask(offset=(sl[0].start, sl[1].start, sl[2].start), mask=mask)
    return out


@dataclass(frozen=True)
class VertebraFrame:
    """Orthonormal frame at a vertebral body: ``axis`` superior along the spine, ``anterior``, ``lateral`` (left)."""

    origin_lps_mm: tuple[float, float, float]
    axis: tuple[float, float, float]
    anterior: tuple[float, float, float]

    def __post_init__(self) -> None:
        a = np.asarray(self.axis)
        b = np.asarray(self.anterior)
        if abs(np.linalg.norm(a) - 1) > 1e-6 or abs(np.linalg.norm(b) - 1) > 1e-6:
            raise ValueError("axis and anterior must be unit vectors")
        if abs(float(a @ b)) > 1e-6:
            raise ValueError("axis and anterior must be orthogonal")

    @property
    def lateral(self) -> tuple[float, float, float]:
        v = np.cross(np.asarray(self.axis), np.asarray(self.anterior))
        return (float(v[0]), float(v[1]), float(v[2]))

    def project(self, points_lps_mm: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """LPS points (N, 3) -> (N, 3) coordinates (u along axis, v anterior, w lateral) in mm from the origin."""
        basis = np.stack([np.asarray(self.axis), np.asarray(self.anterior), np.asarray(self.lateral)], axis=1)
        return (np.asarray(points_lps_mm) - np.asarray(self.origin_lps_mm)) @ basis

    def voxel_extent_mm(self, volume: CTVolume) -> tuple[float, float, float]:
        """Extent of one voxel box projected on (axis, anterior, lateral): the size of a 'step' along each."""
        edges = volume.affine_lps[:3, :3]  # columns: voxel edge vectors in mm
        out = []
        for d in (self.axis, self.anterior, self.lateral):
            out.append(float(np.sum(np.abs(np.asarray(d) @ edges))))
        return (out[0], out[1], out[2])


def vertebral_axis(
    level: VertebraLevel, centroids_lps_mm: Mapping[VertebraLevel, tuple[float, float, float]]
) -> npt.NDArray[np.float64]:
    """Unit superior direction of the spine at ``level``, from the nearest cranial and caudal neighbours present."""
    cranial = next((centroids_lps_mm[lv] for off in (1, 2) if (lv := level.shifted(-off)) in centroids_lps_mm), None)
    caudal = next((centroids_lps_mm[lv] for off in (1, 2) if (lv := level.shifted(off)) in centroids_lps_mm), None)
    here = centroids_lps_mm.get(level)
    if cranial is not None and caudal is not None:
        d = np.asarray(cranial) - np.asarray(caudal)
    elif cranial is not None and here is not None:
        d = np.asarray(cranial) - np.asarray(here)
    elif caudal is not None and here is not None:
        d = np.asarray(here) - np.asarray(caudal)
    else:
        return LPS_SUPERIOR.copy()
    norm = float(np.linalg.norm(d))
    if norm < 1e-6:
        return LPS_SUPERIOR.copy()
    d = d / norm
    if d @ LPS_SUPERIOR < np.cos(np.deg2rad(MAX_AXIS_TILT_DEG)):
        return LPS_SUPERIOR.copy()
    return d


def vertebra_frame(
    level: VertebraLevel,
    centroid_lps_mm: tuple[float, float, float],
    centroids_lps_mm: Mapping[VertebraLevel, tuple[float, float, float]],
) -> VertebraFrame:
    axis = vertebral_axis(level, centroids_lps_mm)
    anterior = LPS_ANTERIOR - (LPS_ANTERIOR @ axis) * axis
    norm = float(np.linalg.norm(anterior))
    if norm < 1e-6:  # axis along AP: cannot happen after the tilt check, kept for safety
        anterior = np.array([1.0, 0.0, 0.0])
    else:
        anterior = anterior / norm
    return VertebraFrame(
        origin_lps_mm=(float(centroid_lps_mm[0]), float(centroid_lps_mm[1]), float(centroid_lps_mm[2])),
        axis=(float(axis[0]), float(axis[1]), float(axis[2])),
        anterior=(float(anterior[0]), float(anterior[1]), float(anterior[2])),
    )


def mask_centroid_lps(volume: CTVolume, mask: CroppedMask) -> tuple[float, float, float]:
    idx = mask.indices()
    if idx.size == 0:
        raise ValueError("mask is empty")
    c = volume.index_to_lps(idx.mean(axis=0))
    return (float(c[0]), float(c[1]), float(c[2]))
