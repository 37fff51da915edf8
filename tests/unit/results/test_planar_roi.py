"""The ellipse a viewer draws for a level: recovered from rasterised ellipses of known axes and angle."""

from __future__ import annotations

import math

import numpy as np
import pytest

from service.domain.levels import VertebraLevel
from service.results.planar_roi import centre_slice_ellipses, moment_ellipse


def _raster_ellipse(shape: tuple[int, int], centre: tuple[float, float], semi_axes: tuple[float, float],
                    angle_rad: float) -> np.ndarray:
    """Pixels (i, j) whose centre (i + 0.5, j + 0.5) lies inside the ellipse (SCOORD coordinates)."""
    i, j = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    x, y = i + 0.5 - centre[0], j + 0.5 - centre[1]
    u = x * math.cos(angle_rad) + y * math.sin(angle_rad)
    v = -x * math.sin(angle_rad) + y * math.cos(angle_rad)
    return (u / semi_axes[0]) ** 2 + (v / semi_axes[1]) ** 2 <= 1.0


@pytest.mark.parametrize(("semi_axes", "angle_deg"), [((20.0, 12.0), 0.0), ((25.0, 9.0), 90.0), ((15.0, 15.0), 0.0),
                                                      ((30.0, 18.0), 180.0)])
def test_moment_ellipse_recovers_axis_aligned_ellipses(semi_axes: tuple[float, float], angle_deg: float) -> None:
    centre = (61.3, 47.8)
    mask = _raster_ellipse((128, 100), centre, semi_axes, math.radians(angle_deg))
    ellipse = moment_ellipse(np.argwhere(mask).astype(np.float64), k=4)
    points = np.asarray(ellipse.points)
    np.testing.assert_allclose(points.mean(axis=0), centre, atol=0.3)
    major = np.linalg.norm(points[1] - points[0]) / 2
    minor = np.linalg.norm(points[3] - points[2]) / 2
    assert major == pytest.approx(semi_axes[0], abs=0.6)
    assert minor == pytest.approx(semi_axes[1], abs=0.6)
    assert ellipse.area_pixels == pytest.approx(mask.sum(), rel=0.05)
    if semi_axes[0] != semi_axes[1]:
        direction = points[1] - points[0]
        angle = math.degrees(math.atan2(direction[1], direction[0])) % 180
        assert min(abs(angle - angle_deg % 180), 180 - abs(angle - angle_deg % 180)) < 2.0
    assert float(np.dot(points[1] - points[0], points[3] - points[2])) == pytest.approx(0.0, abs=1e-6)


def test_centre_slice_is_the_middle_of_the_roi_and_levels_without_pixels_are_left_out() -> None:
    labels = np.zeros((64, 64, 20), dtype=np.int16)
    labels[20:40, 25:35, 6:13] = int(VertebraLevel.L1)  # slices 6..12: centre 9
    labels[30, 30, 15] = int(VertebraLevel.L2)  # one voxel: no ellipse
    found = centre_slice_ellipses(labels, (VertebraLevel.L1, VertebraLevel.L2, VertebraLevel.L3))
    assert set(found) == {VertebraLevel.L1}
    ellipse = found[VertebraLevel.L1]
    assert ellipse.k == 9
    np.testing.assert_allclose(np.asarray(ellipse.points).mean(axis=0), (30.0, 30.0), atol=1e-6)
    assert ellipse.area_pixels == pytest.approx(200, rel=0.1)  # 20 x 10 pixels


def test_centre_slice_skips_holes() -> None:
    labels = np.zeros((32, 32, 12), dtype=np.int16)
    labels[10:20, 10:20, 2:4] = int(VertebraLevel.T5)
    labels[10:20, 10:20, 8:10] = int(VertebraLevel.T5)  # mean slice 5.5 holds nothing
    ellipse = centre_slice_ellipses(labels, (VertebraLevel.T5,))[VertebraLevel.T5]
    assert ellipse.k in (3, 8)


def test_oblique_roi_gets_an_axis_aligned_ellipse_on_its_centroid() -> None:
    """OHIF 3.13 draws no oblique SR ellipse: the axes stay on the image axes, the centre on the ROI's centroid, and
    the extent along each image axis is the ROI's (a rotated 25 x 9 ellipse spans more than 9 along its minor image
    axis)."""
    centre = (64.2, 50.7)
    mask = _raster_ellipse((128, 110), centre, (25.0, 9.0), math.radians(30.0))
    points = np.asarray(moment_ellipse(np.argwhere(mask).astype(np.float64), k=0).points)
    np.testing.assert_allclose(points.mean(axis=0), centre, atol=0.3)
    for first, second in ((0, 1), (2, 3)):
        assert np.count_nonzero(np.abs(points[second] - points[first]) > 1e-9) == 1  # parallel to an image axis
    columns = np.argwhere(mask)[:, 0] + 0.5
    half_width = (points[:, 0].max() - points[:, 0].min()) / 2
    assert half_width == pytest.approx(2 * columns.std(), rel=0.02)
