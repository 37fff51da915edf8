"""Noise of the scan (noise.py) and the dense-bone check that judges the ROI's tail against it (check_roi).

Truth comes from how each volume is built: the noise field's own SD, the island's position and size."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from service.domain.results import ExclusionReason
from service.domain.volume import CTVolume
from service.measurement.exclusions import check_roi, hu_exclusion
from service.measurement.geometry import CroppedMask
from service.measurement.noise import NoiseEstimate, noise_sd


def _volume(hu: np.ndarray) -> CTVolume:
    return CTVolume(hu=hu.astype(np.float32), affine_lps=np.eye(4))  # 1 mm voxels, i = L, j = P, k = S


def _noise(shape: tuple[int, int, int], sd_hu: float, seed: int) -> np.ndarray:
    """Spatially correlated noise (like a reconstruction kernel's) rescaled to ``sd_hu``."""
    field = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=shape), 0.8)
    return field * (sd_hu / field.std())


def _box(shape: tuple[int, int, int], lo: int, hi: int) -> CroppedMask:
    mask = np.zeros(shape, dtype=bool)
    mask[lo:hi, lo:hi, lo:hi] = True
    return CroppedMask((0, 0, 0), mask)


def test_noise_sd_reads_the_noise_in_fat_and_muscle() -> None:
    shape = (110, 110, 40)
    field = _noise(shape, 40.0, seed=1)
    hu = np.full(shape, 50.0)  # muscle
    hu[:, :25, :] = -100.0  # fat in front
    body = np.zeros(shape, dtype=bool)
    body[40:70, 40:70, 5:35] = True
    hu[body] = 600.0
    vol = _volume(hu + field)
    raw = noise_sd(vol, CroppedMask((0, 0, 0), body))
    smoothed = noise_sd(vol, CroppedMask((0, 0, 0), body), smoothing_mm=1.0)
    assert raw is not None and smoothed is not None
    assert raw.sd_hu == pytest.approx(40.0, rel=0.15)
    truth_smoothed = float(ndimage.gaussian_filter(field, 1.0).std())  # about half of 40 HU
    assert smoothed.sd_hu == pytest.approx(truth_smoothed, rel=0.15)
    assert smoothed.smoothing_mm == 1.0 and raw.sample_count > 1000


def test_noise_sd_none_without_soft_tissue() -> None:
    shape = (40, 40, 40)
    vol = _volume(np.full(shape, 400.0) + _noise(shape, 20.0, seed=2))  # all bone-dense: no fat, no muscle
    assert noise_sd(vol, _box(shape, 10, 30)) is None
    with pytest.raises(ValueError, match="sd_hu"):
        NoiseEstimate(sd_hu=-1.0, sample_count=0, smoothing_mm=0.0)


def test_sharp_kernel_noise_is_not_sclerosis() -> None:
    """Trabecular 150 HU with heavy correlated noise: a fixed 500 HU threshold reads it as multifocal sclerosis,
    the threshold judged against the scan's noise does not."""
    shape = (40, 40, 40)
    field = _noise(shape, 350.0, seed=3)
    vol = _volume(150.0 + field)
    body, roi = _box(shape, 3, 37), _box(shape, 6, 34)
    smoothed_sd = float(ndimage.gaussian_filter(field, 1.0, mode="nearest").std())
    judged = check_roi(vol, body, roi, noise=NoiseEstimate(smoothed_sd, 1000, 1.0))
    assert judged.exclusion is None and judged.note is None
    assert judged.roi.voxel_count == roi.voxel_count
    assert judged.dense_threshold_hu is not None and judged.dense_threshold_hu > 500.0
    fixed = check_roi(vol, body, roi, noise=NoiseEstimate(0.0, 1000, 1.0))  # the former fixed threshold
    assert fixed.exclusion is not None and fixed.exclusion.reason is ExclusionReason.SCLEROSIS


def test_bone_island_is_cut_out_and_the_rest_measured() -> None:
    shape = (50, 50, 50)
    hu = 150.0 + _noise(shape, 30.0, seed=4)
    hu[22:28, 22:28, 22:28] = 1200.0  # 6 mm cube = 216 mm3 bone island in the middle
    vol = _volume(hu)
    body, roi = _box(shape, 5, 45), _box(shape, 8, 42)
    check = check_roi(vol, body, roi)
    assert check.exclusion is None
    assert check.note is not None and "bone island" in check.note and "removed from ROI" in check.note
    kept = np.zeros(shape, dtype=bool)
    check.roi.paint(kept, 1)
    island = np.zeros(shape, dtype=bool)
    island[22:28, 22:28, 22:28] = True
    # the island and 1 mm around it (the 2 mm margin is counted from the smoothed focus, which misses the corners)
    assert not kept[ndimage.distance_transform_edt(~island) <= 1.0].any()
    assert kept[8:42, 8:42, 8:18].all()  # the rest of the ROI is kept
    before = float(roi.values(vol.hu).mean())
    after = float(check.roi.values(vol.hu).mean())
    assert before > 155.0  # the island raises the untrimmed mean by ~6 HU
    assert after == pytest.approx(150.0, abs=2.0)
    # the older entry point cannot measure a trimmed ROI: it still excludes the level, naming the cut
    ex = hu_exclusion(vol, body, roi)
    assert ex is not None and ex.reason is ExclusionReason.SCLEROSIS and "bone island" in ex.detail


def test_multifocal_and_large_dense_parts_exclude() -> None:
    shape = (50, 50, 50)
    body, roi = _box(shape, 5, 45), _box(shape, 8, 42)
    hu = 150.0 + _noise(shape, 30.0, seed=5)
    for c in ((12, 12, 12), (12, 34, 30), (34, 12, 20), (34, 34, 34), (22, 22, 12)):  # 5 separate 4 mm foci
        hu[c[0]:c[0] + 4, c[1]:c[1] + 4, c[2]:c[2] + 4] = 1200.0
    check = check_roi(_volume(hu), body, roi)
    assert check.exclusion is not None and check.exclusion.reason is ExclusionReason.SCLEROSIS
    assert "multifocal" in check.exclusion.detail and check.roi is roi
    hu = 150.0 + _noise(shape, 30.0, seed=6)
    hu[8:42, 8:42, 25:42] = 800.0  # the upper half of the ROI sclerotic
    check = check_roi(_volume(hu), body, roi)
    assert check.exclusion is not None and check.exclusion.reason is ExclusionReason.SCLEROSIS
    assert "too little ROI left" in check.exclusion.detail


def test_endplate_taken_in_by_a_blocky_mask_is_cut_not_excluded() -> None:
    """A mask 3 mm too tall takes a 3 mm endplate (1000 HU) into the ROI: 7 % of it, which the former rule
    excluded as sclerosis. It is one dense part: cut out, and the rest reads the trabecular 150 HU."""
    shape = (50, 50, 50)
    hu = 150.0 + _noise(shape, 30.0, seed=7)
    hu[8:42, 8:42, 38:41] = 1000.0  # superior endplate across the whole ROI
    vol = _volume(hu)
    body, roi = _box(shape, 5, 45), _box(shape, 8, 42)
    check = check_roi(vol, body, roi)
    assert check.exclusion is None and check.note is not None and "removed from ROI" in check.note
    assert float(roi.values(vol.hu).mean()) > 200.0
    assert float(check.roi.values(vol.hu).mean()) == pytest.approx(150.0, abs=2.0)
    assert check.roi.voxel_count > 0.7 * roi.voxel_count
