"""ROI methods against hand-computed masks on small synthetic grids."""

from __future__ import annotations

import numpy as np
import pytest

from service.domain.levels import VertebraLevel
from service.domain.volume import CTVolume
from service.measurement.geometry import CroppedMask, crop_labels, vertebra_frame
from service.measurement.roi import ellipsoid_structure, elliptical_cylinder_roi, erosion_roi, too_few_slices


def _volume(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> CTVolume:
    affine = np.diag([*spacing, 1.0])
    return CTVolume(hu=np.zeros(shape, dtype=np.float32), affine_lps=affine)


def test_ellipsoid_structure_by_hand() -> None:
    s = ellipsoid_structure((1, 1, 0))
    assert s.shape == (3, 3, 1)
    # a plus sign: centre and its 4 edge neighbours, corners (1/1 + 1/1 = 2 > 1) excluded
    assert s[:, :, 0].tolist() == [[False, True, False], [True, True, True], [False, True, False]]


def test_erosion_box_isotropic_1mm() -> None:
    # 10x10x10 box of 1 mm voxels, eroded by 3 mm -> 4x4x4 box (3 voxels off each face)
    mask = np.zeros((14, 14, 14), dtype=bool)
    mask[2:12, 2:12, 2:12] = True
    roi = erosion_roi(CroppedMask((0, 0, 0), mask), (1.0, 1.0, 1.0), 3.0, slice_profile_margin=False)
    expected = np.zeros_like(mask)
    expected[5:9, 5:9, 5:9] = True
    assert np.array_equal(roi.mask, expected)
    # with the slice-profile margin the slice axis loses 3 mm + 1 slice = 4 voxels at each end
    roi = erosion_roi(CroppedMask((0, 0, 0), mask), (1.0, 1.0, 1.0), 3.0)
    expected = np.zeros_like(mask)
    expected[5:9, 5:9, 6:8] = True
    assert np.array_equal(roi.mask, expected)


def test_erosion_anisotropic_uses_mm_per_axis() -> None:
    # 0.5 x 0.5 x 3 mm voxels: 3 mm = 6 voxels in-plane; along k (3 + 3) mm = 2 slices
    mask = np.zeros((30, 30, 8), dtype=bool)
    mask[2:28, 2:28, 1:7] = True  # 13 mm x 13 mm x 18 mm
    roi = erosion_roi(CroppedMask((0, 0, 0), mask), (0.5, 0.5, 3.0), 3.0)
    idx = np.argwhere(roi.mask)
    assert idx[:, 0].min() == 8 and idx[:, 0].max() == 21  # 6 voxels off each side in i
    assert idx[:, 1].min() == 8 and idx[:, 1].max() == 21
    assert idx[:, 2].min() == 3 and idx[:, 2].max() == 4  # 2 slices off each end
    assert roi.voxel_count == 14 * 14 * 2
    plain = erosion_roi(CroppedMask((0, 0, 0), mask), (0.5, 0.5, 3.0), 3.0, slice_profile_margin=False)
    assert plain.voxel_count == 14 * 14 * 4  # 1 slice off each end


def test_erosion_at_crop_border_treats_outside_as_background() -> None:
    mask = np.ones((9, 9, 9), dtype=bool)  # the crop is tight around the body
    roi = erosion_roi(CroppedMask((5, 5, 5), mask), (1.0, 1.0, 1.0), 3.0)
    assert roi.offset == (5, 5, 5)
    assert roi.voxel_count == 3 * 3 * 1  # 3 voxels off in i and j, 4 along k


def _cylinder_body(volume: CTVolume, radius_lr: float, radius_ap: float, height: float) -> CroppedMask:
    """An elliptic cylinder body along k centred in the grid (i = L, j = P)."""
    sp = volume.spacing_mm
    n = volume.shape
    c = [(n[a] - 1) * sp[a] / 2 for a in range(3)]
    x = np.arange(n[0])[:, None, None] * sp[0] - c[0]
    y = np.arange(n[1])[None, :, None] * sp[1] - c[1]
    z = np.arange(n[2])[None, None, :] * sp[2] - c[2]
    mask = ((x / radius_lr) ** 2 + (y / radius_ap) ** 2 <= 1.0) & (np.abs(z) <= height / 2)
    return CroppedMask((0, 0, 0), np.ascontiguousarray(mask))


def test_elliptical_cylinder_matches_pan_rules() -> None:
    vol = _volume((101, 81, 41), (0.5, 0.5, 1.0))
    body = _cylinder_body(vol, radius_lr=20.0, radius_ap=15.0, height=30.0)
    centroid = tuple(float(v) for v in vol.index_to_lps(body.indices().mean(axis=0)))
    frame = vertebra_frame(VertebraLevel.L1, centroid, {VertebraLevel.L1: centroid})
    roi, spec = elliptical_cylinder_roi(vol, body, frame)
    assert spec is not None
    # cross-section: ellipse area pi*20*15 = 942.5 mm2; max row length = 40 mm (the LR diameter)
    assert spec.cross_section_area_mm2 == pytest.approx(np.pi * 20 * 15, rel=0.02)
    assert spec.max_row_length_mm == pytest.approx(40.0, abs=0.6)
    # short semi-axis 20 % of 40 = 8 mm; long semi-axis from area 0.3 * 942.5 / (pi * 8) = 11.25 mm
    assert spec.short_semi_axis_mm == pytest.approx(8.0, abs=0.15)
    assert spec.long_semi_axis_mm == pytest.approx(0.3 * np.pi * 20 * 15 / (np.pi * 8.0), rel=0.03)
    # 9 mm high: centres within +-4.5 mm of the middle -> 9 or 10 slices of 1 mm
    ks = np.unique(roi.indices()[:, 2])
    assert len(ks) in (9, 10)
    # area per slice ~ 30 % of the cross-section
    per_slice_mm2 = roi.voxel_count / len(ks) * 0.25
    assert per_slice_mm2 == pytest.approx(0.3 * np.pi * 20 * 15, rel=0.05)
    # basivertebral rule: posterior edge at least 25 % of the 30 mm depth in front of the posterior wall
    posterior_wall_v = spec.centre_v_mm - spec.short_semi_axis_mm  # v grows anteriorly
    assert spec.centre_v_mm - spec.short_semi_axis_mm >= -15.0 + 0.25 * 30.0 - 0.3
    assert posterior_wall_v > -15.0


def test_elliptical_cylinder_short_axis_is_anteroposterior() -> None:
    vol = _volume((101, 81, 41), (0.5, 0.5, 1.0))
    body = _cylinder_body(vol, radius_lr=20.0, radius_ap=15.0, height=30.0)
    centroid = tuple(float(v) for v in vol.index_to_lps(body.indices().mean(axis=0)))
    frame = vertebra_frame(VertebraLevel.L1, centroid, {VertebraLevel.L1: centroid})
    roi, spec = elliptical_cylinder_roi(vol, body, frame)
    idx = roi.indices()
    lr_extent = (idx[:, 0].max() - idx[:, 0].min() + 1) * 0.5
    ap_extent = (idx[:, 1].max() - idx[:, 1].min() + 1) * 0.5
    assert lr_extent == pytest.approx(2 * spec.long_semi_axis_mm, abs=1.0)
    assert ap_extent == pytest.approx(2 * spec.short_semi_axis_mm, abs=1.0)
    assert lr_extent > ap_extent


def test_crop_labels_finds_each_label() -> None:
    labels = np.zeros((10, 10, 10), dtype=np.int16)
    labels[1:3, 1:4, 1:5] = 20
    labels[5:9, 5:6, 6:7] = 21
    crops = crop_labels(labels)
    assert set(crops) == {20, 21}
    assert crops[20].offset == (1, 1, 1) and crops[20].mask.shape == (2, 3, 4)
    assert crops[21].voxel_count == 4
    full = np.zeros_like(labels)
    crops[21].paint(full, 21)
    assert np.array_equal(full == 21, labels == 21)


def test_a_thick_slice_body_too_short_for_the_erosion_says_so() -> None:
    """A 20 mm body at 5 mm slices (4 slices): the erosion along the slices (3 mm plus one spacing, 2 slices from
    each end) keeps nothing, and the reason names the slices; a body of 1 mm slices keeps its middle."""
    thick = np.zeros((40, 40, 4), dtype=bool)
    thick[5:35, 5:35, :] = True
    body = CroppedMask((0, 0, 0), thick)
    assert not erosion_roi(body, (0.7, 0.7, 5.0), 3.0).mask.any()
    why = too_few_slices(body, (0.7, 0.7, 5.0), 3.0)
    assert why is not None and "4 slices of 5.0 mm high" in why and "10 mm inside" in why
    thin = np.zeros((40, 40, 20), dtype=bool)
    thin[5:35, 5:35, :] = True
    assert too_few_slices(CroppedMask((0, 0, 0), thin), (0.7, 0.7, 1.0), 3.0) is None
