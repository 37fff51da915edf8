"""A body the detection missed: the gap is found from the local spacing, and names counted across it from every
anchor are uncertain."""

from __future__ import annotations

from service.domain.levels import VertebraLevel as V
from service.segmentation.label_gaps import across_every_gap, gap_missing
from service.segmentation.labelling import BodyFeatures, label_bodies


def _bodies(levels: list[V], ribs: set[V]) -> list[BodyFeatures]:
    """Complete bodies 27 mm apart along z at their level's place (a skipped level leaves a 54 mm gap); votes and
    field of view those of a whole-torso scan."""
    first = levels[0]
    return [BodyFeatures(centroid_mm=(0.0, 0.0, -27.0 * (lv - first)), height_mm=22.0, rib_left=lv in ribs,
                         rib_right=lv in ribs, rib_left_mm3=2800.0 * (lv in ribs), rib_right_mm3=2800.0 * (lv in ribs),
                         thoracic_vote=1.0 if lv <= V.T12 else 0.0, field_left_mm=170.0, field_right_mm=170.0,
                         field_posterior_mm=150.0) for lv in levels]


def test_gap_missing_counts_the_skipped_body() -> None:
    levels = [V.T8, V.T9, V.T10, V.T12, V.L1, V.L2]  # T11 missed
    assert gap_missing(_bodies(levels, set())) == [0, 0, 1, 0, 0]
    assert gap_missing(_bodies([V.T8, V.T9, V.T10, V.T11], set())) == [0, 0, 0]


def test_across_every_gap() -> None:
    pos = [0, 1, 2, 4, 5]  # a body missed between positions 2 and 4
    missing = [0, 0, 1, 0]
    assert across_every_gap(missing, pos, [4]) == [True, True, True, False, False]
    # a second anchor above the gap: nothing is counted across a gap from every anchor
    assert across_every_gap(missing, pos, [4, 0]) == [False] * 5


def test_names_across_a_gap_from_the_only_anchor_are_uncertain() -> None:
    # T12 anchor below the gap (last rib on T12, L1 rib-free); T11 missed: T8-T10 are counted across it
    levels = [V.T8, V.T9, V.T10, V.T12, V.L1, V.L2]
    res = label_bodies(_bodies(levels, {V.T8, V.T9, V.T10, V.T12}), sacrum_below=False)
    assert [d.level for d in res.decisions] == levels
    assert [d.uncertain for d in res.decisions] == [True, True, True, False, False, False]
    assert res.decisions[0].reason == "a body between this one and the anchor was not detected"
    assert any("gap in the detected bodies: 1" in n for n in res.notes)
