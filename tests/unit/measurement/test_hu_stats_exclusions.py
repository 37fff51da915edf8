"""HU statistics, fracture heights and HU-based exclusions against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from service.domain.levels import VertebraLevel
from service.domain.results import ExclusionReason
from service.domain.volume import CTVolume
from service.measurement.exclusions import hu_exclusion, metal_volume_mm3, sclerosis_fraction
from service.measurement.fracture import (
    HEIGHT_GROWTH_PER_LEVEL,
    VertebralHeights,
    assess_fractures,
    vertebral_heights,
)
from service.measurement.geometry import CroppedMask, vertebra_frame
from service.measurement.hu_stats import hu_stats


def test_hu_stats_by_hand() -> None:
    s = hu_stats([100.0, 110.0, 120.0, 170.0], voxel_volume_mm3=0.5)
    assert s.hu_mean == pytest.approx(125.0)
    assert s.hu_median == pytest.approx(115.0)
    # sample SD: deviations -25,-15,-5,45 -> (625+225+25+2025)/3 = 966.67
    assert s.hu_sd == pytest.approx(np.sqrt(2900.0 / 3.0))
    assert s.voxel_count == 4
    assert s.roi_volume_mm3 == pytest.approx(2.0)


def test_hu_stats_empty_and_single() -> None:
    assert hu_stats([], 1.0).hu_mean is None
    one = hu_stats([42.0], 1.0)
    assert one.hu_mean == 42.0 and one.hu_sd is None
    with pytest.raises(ValueError, match="voxel_volume_mm3"):
        hu_stats([1.0], 0.0)


def _box_volume(hu: np.ndarray, spacing: tuple[float, float, float]) -> CTVolume:
    return CTVolume(hu=hu.astype(np.float32), affine_lps=np.diag([*spacing, 1.0]))


def _frame_for(vol: CTVolume, mask: CroppedMask):
    c = tuple(float(v) for v in vol.index_to_lps(mask.indices().mean(axis=0)))
    return vertebra_frame(VertebraLevel.L2, c, {VertebraLevel.L2: c})


def test_heights_of_a_box_and_a_wedge() -> None:
    # i = L (width), j = P (depth; j larger = posterior), k = S; 1 mm voxels
    mask = np.zeros((40, 40, 40), dtype=bool)
    mask[5:35, 5:35, 5:30] = True  # 25 mm high box
    vol = _box_volume(np.zeros(mask.shape), (1.0, 1.0, 1.0))
    h = vertebral_heights(vol, CroppedMask((0, 0, 0), mask), _frame_for(vol, CroppedMask((0, 0, 0), mask)))
    assert h is not None
    assert h.anterior_mm == pytest.approx(25.0) and h.middle_mm == pytest.approx(25.0)
    assert h.posterior_mm == pytest.approx(25.0)
    # wedge: the top face drops linearly from 25 mm at the back (j = 34) to 15 mm at the front (j = 5)
    wedge = np.zeros_like(mask)
    for j in range(5, 35):
        top = 5 + round(15 + 10 * (j - 5) / 29)
        wedge[5:35, j, 5:top] = True
    crop = CroppedMask((0, 0, 0), wedge)
    hw = vertebral_heights(vol, crop, _frame_for(vol, crop))
    assert hw is not None
    assert hw.anterior_mm < 17.5 and hw.posterior_mm > 23.5
    assert hw.middle_mm == pytest.approx(20.0, abs=1.0)


def _grown(h: VertebralHeights, levels_below_l1: int) -> VertebralHeights:
    """Heights of a normal spine: each level HEIGHT_GROWTH_PER_LEVEL taller than the one above."""
    f = HEIGHT_GROWTH_PER_LEVEL ** levels_below_l1
    return VertebralHeights(h.anterior_mm * f, h.middle_mm * f, h.posterior_mm * f)


def test_fracture_against_neighbours() -> None:
    normal = VertebralHeights(25.0, 24.0, 26.0)
    heights = {
        VertebraLevel.T11: _grown(normal, -2),
        VertebraLevel.T12: _grown(normal, -1),
        VertebraLevel.L1: VertebralHeights(17.0, 22.0, 25.5),  # anterior 17/25 = 68 % -> 32 % loss
        VertebraLevel.L2: _grown(normal, 1),
        VertebraLevel.L3: _grown(normal, 2),
    }
    found = assess_fractures(heights, 0.20)
    assert found[VertebraLevel.L1].fractured
    assert found[VertebraLevel.L1].max_height_loss == pytest.approx(0.32, abs=1e-9)
    assert "anterior height 17.0 mm = 68 % of neighbours" in found[VertebraLevel.L1].detail
    assert not any(found[lv].fractured for lv in heights if lv != VertebraLevel.L1)


def test_fracture_crush_and_below_threshold() -> None:
    normal = VertebralHeights(25.0, 24.0, 26.0)
    crush = VertebralHeights(0.75 * 25, 0.75 * 24, 0.75 * 26)  # 25 % uniform loss, ratios unchanged
    mild = VertebralHeights(0.85 * 25, 24.0, 26.0)  # 15 % anterior loss at T11: not a fracture
    found = assess_fractures({VertebraLevel.T8: _grown(normal, -1), VertebraLevel.T9: crush,
                              VertebraLevel.T10: _grown(normal, 1), VertebraLevel.T11: _grown(mild, 2),
                              VertebraLevel.T12: _grown(normal, 3)}, 0.20)
    assert found[VertebraLevel.T9].fractured
    assert found[VertebraLevel.T9].max_height_loss == pytest.approx(0.25, abs=1e-9)
    assert not found[VertebraLevel.T11].fractured
    assert found[VertebraLevel.T11].max_height_loss == pytest.approx(0.15, abs=1e-9)


def test_metal_sclerosis_and_small_roi() -> None:
    hu = np.full((30, 30, 30), 150.0)
    body = np.zeros(hu.shape, dtype=bool)
    body[5:25, 5:25, 5:25] = True
    roi = np.zeros_like(body)
    roi[8:22, 8:22, 8:22] = True
    vol = _box_volume(hu, (1.0, 1.0, 1.0))
    b, r = CroppedMask((0, 0, 0), body), CroppedMask((0, 0, 0), roi)
    assert hu_exclusion(vol, b, r) is None
    # metal: 8 voxels of 3000 HU just outside the body (within the 3 mm margin) = 8 mm3 >= 5 mm3
    hu_m = hu.copy()
    hu_m[26:28, 10:12, 10:12] = 3000.0
    vol_m = _box_volume(hu_m, (1.0, 1.0, 1.0))
    assert metal_volume_mm3(vol_m, b) == pytest.approx(8.0)
    ex = hu_exclusion(vol_m, b, r)
    assert ex is not None and ex.reason is ExclusionReason.METAL
    # sclerosis: a 6 mm cube of 1000 HU in the 14 mm ROI = 216/2744 = 7.9 % of the ROI (> 5 %)
    hu_s = hu.copy()
    hu_s[10:16, 10:16, 10:16] = 1000.0
    vol_s = _box_volume(hu_s, (1.0, 1.0, 1.0))
    frac = sclerosis_fraction(vol_s, r)
    assert 0.05 < frac < 0.10
    ex = hu_exclusion(vol_s, b, r)
    assert ex is not None and ex.reason is ExclusionReason.SCLEROSIS
    # noise alone (SD 100 HU around 200) is not sclerosis after smoothing
    rng = np.random.default_rng(0)
    vol_n = _box_volume(200.0 + rng.normal(0, 100.0, hu.shape), (1.0, 1.0, 1.0))
    assert sclerosis_fraction(vol_n, r) < 0.01
    # too small: a 7x7x7 ROI is 343 mm3 < 500 mm3
    small = np.zeros_like(body)
    small[10:17, 10:17, 10:17] = True
    ex = hu_exclusion(vol, b, CroppedMask((0, 0, 0), small))
    assert ex is not None and ex.reason is ExclusionReason.ROI_TOO_SMALL


def test_small_bone_island_excluded_as_a_compact_focus() -> None:
    hu = np.full((40, 40, 40), 150.0)
    body = np.zeros(hu.shape, dtype=bool)
    body[2:38, 2:38, 2:38] = True
    roi = np.zeros_like(body)
    roi[5:35, 5:35, 5:35] = True  # 27000 mm3
    hu[19:21, 19:21, 19:21] = 1200.0  # 8 mm3: below 30 mm3 even after smoothing -> usable
    vol = _box_volume(hu, (1.0, 1.0, 1.0))
    assert hu_exclusion(vol, CroppedMask((0, 0, 0), body), CroppedMask((0, 0, 0), roi)) is None
    hu[17:23, 17:23, 17:23] = 1200.0  # 216 mm3: 0.8 % of the ROI, one compact focus -> excluded
    vol = _box_volume(hu, (1.0, 1.0, 1.0))
    ex = hu_exclusion(vol, CroppedMask((0, 0, 0), body), CroppedMask((0, 0, 0), roi))
    assert ex is not None and ex.reason is ExclusionReason.SCLEROSIS
    assert "largest dense focus" in ex.detail
