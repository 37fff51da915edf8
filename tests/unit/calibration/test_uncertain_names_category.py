"""The summary when only the level names are uncertain: the category of the levels around L1-L2, or indeterminate."""

from __future__ import annotations

import dataclasses

import pytest

from service.calibration.assess import assess_bmd
from service.calibration.summary import uncertain_names_category
from service.domain.guidelines import categorize
from service.domain.levels import VertebraLevel as V
from service.domain.results import Category, ExclusionReason
from service.offline.phantom.api import PhantomSpec, generate
from tests.unit.calibration.phantom_cases import truth_segmentation
from tests.unit.calibration.test_assess import SETTINGS

TARGETS = (V.L1, V.L2)


@pytest.mark.parametrize(("bmd", "expected"), [
    ({V.T12: 60.0, V.L1: 70.0, V.L2: 75.0, V.L3: 72.0}, (Category.OSTEOPOROSIS, (V.T12, V.L1, V.L2, V.L3))),
    ({V.L1: 130.0, V.L2: 150.0}, (Category.NORMAL, (V.L1, V.L2))),
    # T5-T9 are too far from L1-L2 to count; the ones near agree
    ({V.T5: 200.0, V.T9: 60.0, V.T11: 100.0, V.L2: 90.0, V.L4: 110.0}, (Category.OSTEOPENIA, (V.T11, V.L2, V.L4))),
    ({V.T12: 60.0, V.L1: 70.0, V.L2: 85.0}, None),  # one level in another category
    ({V.L1: 70.0}, None),  # a single level
    ({V.T11: 70.0, V.T12: 70.0}, None),  # no level named L1 or L2
    ({V.T7: 70.0, V.T8: 70.0, V.T9: 70.0}, None),
    ({}, None),
])
def test_the_category_holds_only_when_every_level_near_l1_l2_agrees(
        bmd: dict[V, float], expected: tuple[Category, tuple[V, ...]] | None) -> None:
    assert uncertain_names_category(bmd, TARGETS, categorize) == expected


def test_a_phantom_whose_names_are_all_uncertain_gets_its_category_and_no_value() -> None:
    phantom = generate(PhantomSpec(seed=78, region="abdomen", fov_top_level=V.T11, fov_bottom_level=V.L4,
                                   l1_l2_bmd_mg_cm3=60.0), spacing_mm=(2.0, 2.0, 3.0))
    seg = truth_segmentation(phantom)
    uncertain = dataclasses.replace(seg, vertebrae=tuple(
        dataclasses.replace(v, level_uncertain=True, uncertainty_reason="anchors disagree") for v in seg.vertebrae))
    result = assess_bmd(phantom.volume, uncertain, SETTINGS).result
    assert all(m.exclusion_reason is ExclusionReason.LEVEL_UNCERTAIN and m.bmd_mg_cm3 is None
               for m in result.vertebrae)
    assert phantom.truth["patient"]["category"] == "osteoporosis"  # the phantom's own truth
    assert result.summary.category is Category.OSTEOPOROSIS
    assert result.summary.bmd_mg_cm3 is None and result.summary.levels_used == ()
    assert result.summary.method.startswith("category only: every measurable level named")
    assert any("level names uncertain" in note for note in result.summary.notes)

    # one level left with a certain name, the rest uncertain: the summary still never averages uncertain levels
    one_certain = dataclasses.replace(uncertain, vertebrae=tuple(
        dataclasses.replace(v, level_uncertain=False) if v.level == V.T11 else v for v in uncertain.vertebrae))
    single = assess_bmd(phantom.volume, one_certain, SETTINGS).result.summary
    assert single.levels_used == (V.T11,) and single.bmd_mg_cm3 is not None
