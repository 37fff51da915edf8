"""Where a viewer can draw each level's ROI: an ellipse on the CT slice through the ROI's centre.

Viewers draw SR measurements from image coordinates (SCOORD), not from SEG segments. For each level the SR gets,
beside its TID 1411 group on the SEG segment, a TID 1410 group with an ELLIPSE on one source image: the slice that
holds the ROI's centre of mass (along the slice axis), and on it the ellipse with the same centroid and second
moments as the ROI's cross-section there. For Pan's elliptical-cylinder ROI that ellipse is the ROI's own outline;
for the eroded-body ROI it is the moment ellipse of the eroded body (same area and orientation, not its exact
outline).

Coordinates are SCOORD image coordinates (PS3.3 C.18.6.1.2): (column, row) with (0, 0) at the top-left corner of the
top-left pixel, so the centre of pixel (i = column, j = row) is (i + 0.5, j + 0.5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from service.domain.levels import VertebraLevel

MIN_PIXELS = 3
"""Fewer pixels on the centre slice cannot define an ellipse: the level gets no planar group."""


@dataclass(frozen=True)
class PlanarEllipse:
    """An ellipse on source slice ``k``: ``points`` = major axis end points, then minor axis end points."""

    k: int
    points: tuple[tuple[float, float], ...]
    """Four (column, row) SCOORD points: major axis first, then minor axis (DICOM ELLIPSE)."""
    area_pixels: float

    def __post_init__(self) -> None:
        if self.k < 0:
            raise ValueError(f"k must be >= 0, got {self.k}")
        if len(self.points) != 4:
            raise ValueError(f"points must hold 4 (column, row) points, got {len(self.points)}")

    def graphic_data(self) -> npt.NDArray[np.float32]:
        return np.asarray(self.points, dtype=np.float32)


def centre_slice_ellipses(labels: npt.NDArray[np.integer],
                          levels: tuple[VertebraLevel, ...]) -> dict[VertebraLevel, PlanarEllipse]:
    """Per level with at least ``MIN_PIXELS`` on its centre slice: its moment ellipse there.

    ``labels`` uses the project's convention ``labels[i=column, j=row, k=slice]`` with label value = level value.
    """
    out: dict[VertebraLevel, PlanarEllipse] = {}
    for level in levels:
        ijk = np.argwhere(labels == int(level))
        if len(ijk) == 0:
            continue
        k = _centre_slice(ijk[:, 2])
        plane = ijk[ijk[:, 2] == k][:, :2].astype(np.float64)
        if len(plane) < MIN_PIXELS:
            continue
        out[level] = moment_ellipse(plane, k)
    return out


def _centre_slice(ks: npt.NDArray[np.integer]) -> int:
    """The slice nearest the mean slice index that holds voxels of the ROI (the ROI may have holes)."""
    present = np.unique(ks)
    return int(present[np.argmin(np.abs(present - ks.mean()))])


def moment_ellipse(pixels_ij: npt.NDArray[np.float64], k: int) -> PlanarEllipse:
    """The ellipse with the centroid and the variances along columns and rows of the pixel set (i = column,
    j = row), as a uniform-disc fit: a uniformly filled ellipse with semi-axis a has variance a^2 / 4 along that
    axis, so a = 2 sqrt(variance). Pixels are unit squares: their own variance (1/12 per axis) is added so that a
    single row still has width.

    The axes are kept parallel to the image rows and columns: OHIF 3.13 does not draw an oblique SR ellipse
    ("OBLIQUE ELLIPSE NOT YET SUPPORTED"). An axial vertebral body is near mirror-symmetric about the sagittal
    plane, so its ROI's own axes are close to the image axes on a supine scan."""
    centre = pixels_ij.mean(axis=0) + 0.5
    variances = pixels_ij.var(axis=0) + 1.0 / 12.0
    axes = [(2.0 * math.sqrt(float(v)), np.eye(2)[axis]) for axis, v in enumerate(variances)]
    (semi_minor, minor_axis), (semi_major, major_axis) = sorted(axes, key=lambda a: a[0])
    points = (
        tuple(centre - semi_major * major_axis), tuple(centre + semi_major * major_axis),
        tuple(centre - semi_minor * minor_axis), tuple(centre + semi_minor * minor_axis),
    )
    return PlanarEllipse(k=k, points=tuple((float(c), float(r)) for c, r in points),
                         area_pixels=math.pi * semi_major * semi_minor)
