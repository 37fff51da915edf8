"""A posterior height that falls short on the image alone is a column the image did not read, not a level that cannot
be measured: biconcave fractures whose posterior band read the slope of the depressed endplate.

The heights are those the node measured on tuning set s25 (``bmd_set --seed 2676``, cases 4 and 44; recorded with
``fracture_outcomes --heights``), the truth the phantom's geometry of those bodies (``truth.json``), which the check
never reads.
"""

from __future__ import annotations

from service.domain.levels import VertebraLevel as V
from service.domain.results import FractureStatus
from service.measurement.fracture import VertebralHeights
from service.measurement.fracture_check import LevelHeights, classify_fractures

Reading = tuple[float, float, float, float]
"""Anterior, middle, posterior height (mm) and the measurement step (mm)."""


def _heights(mask: dict[V, Reading], image: dict[V, Reading]) -> dict[V, LevelHeights]:
    out = {}
    for level, m in mask.items():
        i = image[level]
        out[level] = LevelHeights(VertebralHeights(*m[:3], resolution_mm=m[3]),
                                  VertebralHeights(*i[:3], resolution_mm=i[3]), "", i[:3])
    return out


# case_04 (1 mm slices): L1 a grade 3 biconcave fracture, 45 % middle height loss; phantom heights 18.9 / 10.4 /
# 17.0 mm. The image read the posterior height 12.7 mm (the mask 17.2 mm).
CASE_04_MASK = {V.T11: (20.8, 19.9, 20.3, 1.21), V.T12: (20.7, 19.5, 20.4, 1.22), V.L1: (19.1, 13.3, 17.2, 1.23),
                V.L2: (25.4, 24.6, 25.7, 1.19), V.L3: (25.3, 23.7, 25.5, 1.08), V.L4: (25.7, 23.5, 23.5, 1.17),
                V.L5: (24.8, 23.0, 24.3, 1.27)}
CASE_04_IMAGE = {V.T11: (21.5, 20.9, 21.2, 0.3), V.T12: (21.4, 19.8, 21.5, 0.31), V.L1: (19.5, 12.3, 12.7, 0.31),
                 V.L2: (26.3, 25.6, 26.4, 0.3), V.L3: (26.5, 24.6, 26.1, 0.27), V.L4: (26.1, 24.7, 25.8, 0.29),
                 V.L5: (25.8, 23.7, 25.3, 0.32)}
# case_44 (2 mm slices): T12 a grade 2 biconcave fracture, 32 %; phantom heights 16.6 / 10.9 / 15.3 mm. The image read
# the posterior height 10.8 mm, short of the anterior one by more than MAX_POSTERIOR_SHORTFALL.
CASE_44_MASK = {V.T11: (18.2, 15.7, 16.8, 2.21), V.T12: (16.4, 12.8, 12.5, 2.21), V.L1: (21.8, 20.8, 19.4, 2.21),
                V.L2: (21.8, 19.4, 18.6, 2.18), V.L3: (22.2, 20.3, 21.6, 2.05), V.L4: (22.5, 21.2, 21.6, 2.14),
                V.L5: (21.4, 19.7, 18.0, 2.21)}
CASE_44_IMAGE = {V.T11: (17.8, 16.8, 17.9, 0.55), V.T12: (18.1, 12.4, 10.8, 0.55), V.L1: (22.8, 21.4, 21.3, 0.55),
                 V.L2: (22.3, 20.2, 21.7, 0.54), V.L3: (23.4, 21.2, 23.3, 0.51), V.L4: (22.5, 21.6, 21.6, 0.54),
                 V.L5: (22.2, 20.1, 26.0, 0.55)}


def test_a_grade_3_biconcave_fracture_with_a_short_posterior_image_height_is_called_from_its_middle_column() -> None:
    found = classify_fractures(_heights(CASE_04_MASK, CASE_04_IMAGE))
    assert found[V.L1].status is FractureStatus.FRACTURED, found[V.L1].detail
    assert found[V.L1].genant_grade == 3 and "middle column" in found[V.L1].detail
    assert all(found[lv].status is not FractureStatus.FRACTURED for lv in found if lv != V.L1)


def test_a_grade_2_biconcave_fracture_whose_posterior_image_height_is_no_deformity_pattern_is_called() -> None:
    found = classify_fractures(_heights(CASE_44_MASK, CASE_44_IMAGE))
    assert found[V.T12].status is FractureStatus.FRACTURED, found[V.T12].detail
    assert found[V.T12].genant_grade == 2
    assert all(found[lv].status is not FractureStatus.FRACTURED for lv in found if lv != V.T12)


def test_a_short_posterior_image_height_over_intact_anterior_and_middle_columns_is_no_call() -> None:
    """The same scan with T12's middle height as its neighbours': the short posterior image height alone calls
    nothing, and the level stays not measurable."""
    image = {**CASE_44_IMAGE, V.T12: (18.1, 17.0, 10.8, 0.55)}
    mask = {**CASE_44_MASK, V.T12: (16.4, 16.6, 15.5, 2.21)}
    found = classify_fractures(_heights(mask, image))
    assert found[V.T12].status is FractureStatus.NOT_MEASURABLE, found[V.T12].detail
    assert all(found[lv].status is not FractureStatus.FRACTURED for lv in found)


def test_a_posterior_height_short_on_the_mask_still_blocks_a_column_call() -> None:
    """Where the mask's posterior height falls short too, the heights are a measuring failure (session 13, s16
    case_09 L3): no call from the other columns."""
    mask = {**CASE_44_MASK, V.T12: (16.4, 12.8, 10.0, 2.21)}
    found = classify_fractures(_heights(mask, CASE_44_IMAGE))
    assert found[V.T12].status is FractureStatus.NOT_MEASURABLE, found[V.T12].detail
