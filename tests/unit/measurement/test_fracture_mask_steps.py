"""At thick slices the mask confirms a loss only when it is at least one whole voxel step short of its neighbours
(fracture_check.MASK_MIN_STEPS): a mask less than a slice short may be as tall as they are."""

from __future__ import annotations

import pytest

from service.domain.levels import VertebraLevel as V
from service.domain.results import FractureStatus
from service.measurement.fracture import VertebralHeights
from service.measurement.fracture_check import LevelHeights, classify_fractures

LEVELS = [V.T10, V.T11, V.T12, V.L1, V.L2, V.L3, V.L4]
SLICE_MM = 5.0


def _neighbours() -> dict[V, LevelHeights]:
    """20 mm bodies on 5 mm slices, read by mask and image alike (the image's edges a quarter of a slice)."""
    mask = VertebralHeights(20.0, 20.0, 20.0, resolution_mm=SLICE_MM)
    image = VertebralHeights(20.1, 20.0, 20.1, resolution_mm=SLICE_MM / 4)
    return {lv: LevelHeights(mask, image) for lv in LEVELS if lv != V.L1}


@pytest.mark.parametrize(("mask_middle_mm", "expected"), [
    (17.5, FractureStatus.NOT_MEASURABLE),  # 12 % short: less than one slice, confirmed until session 20
    (15.0, FractureStatus.FRACTURED),  # one whole slice (25 %) short
])
def test_a_mask_less_than_one_thick_slice_short_does_not_confirm_the_image(
        mask_middle_mm: float, expected: FractureStatus) -> None:
    """The image reads L1's middle height 28 % short of its neighbours'. Tuning sets s19/s20 at 5 mm: normal levels
    with masks 11-23 % short were called fractured on image losses of 27-31 %."""
    heights = _neighbours()
    heights[V.L1] = LevelHeights(VertebralHeights(20.0, mask_middle_mm, 20.0, resolution_mm=SLICE_MM),
                                 VertebralHeights(20.1, 14.4, 20.1, resolution_mm=SLICE_MM / 4))
    found = classify_fractures(heights)
    assert found[V.L1].status is expected, found[V.L1].detail
    assert all(found[lv].status is FractureStatus.NOT_FRACTURED for lv in LEVELS if lv != V.L1)


@pytest.mark.parametrize(("mask_anterior_mm", "expected"), [
    (17.2, FractureStatus.NOT_MEASURABLE),  # 14 % short (s19 case_18's T4 read 14 % at 5 mm)
    (14.8, FractureStatus.FRACTURED),  # 26 %: more than a slice
])
def test_a_column_call_needs_the_mask_one_thick_slice_short_too(mask_anterior_mm: float,
                                                                expected: FractureStatus) -> None:
    """The image reads no middle or posterior endplate of L1 and an anterior height 30 % short of the neighbours':
    the column rule (fracture_columns) calls it only when the mask's anterior column is a whole slice short too."""
    heights = _neighbours()
    heights[V.L1] = LevelHeights(VertebralHeights(mask_anterior_mm, 19.0, 20.0, resolution_mm=SLICE_MM), None,
                                 "endplates not found on the image in the middle, posterior columns",
                                 (14.0, None, None))
    found = classify_fractures(heights)
    assert found[V.L1].status is expected, found[V.L1].detail
    if expected is FractureStatus.FRACTURED:
        assert "anterior column" in found[V.L1].detail
