"""The sacrum counts as an anchor only where the field of view reaches far enough below the lowest vertebra to show
it (issue 16, session 23; ``label_anchors.SACRUM_BELOW_DISC_MM``).

Recorded features of held-out labelling set 16 (seed 16031) narrow case_19: a targeted field from T9 to the upper
part of L5, 3 mm slices. The field ends 55 mm below the centre of L4; the segmenter took the cut L5 for the sacrum,
so "the body on the sacrum" named L4 as L5, one level off the last rib's (right) count. With the sacrum's count
preferred to the last rib's (session 23), every name was one level high."""

from __future__ import annotations

import dataclasses

from service.domain.levels import VertebraLevel as V
from service.segmentation.labelling import L5_ANCHOR, T12_ANCHOR, BodyFeatures, label_bodies

# canonical z (mm), height along the scanner axis (mm), rib volume left / right (mm3), thoracic vote, field below (mm)
CASE_19: list[tuple[float, float, float, float, float, float]] = [
    (270.4, 30.0, 3601, 3273, 0.9182, 271.9),  # T9, cut by the top of the field
    (242.7, 27.0, 3260, 3476, 0.8992, 244.2),
    (214.4, 30.0, 2546, 3030, 0.9123, 215.9),
    (184.2, 33.0, 1332, 484, 0.8720, 185.7),  # T12: the last rib (one side)
    (153.5, 33.0, 146, 86, 0.5526, 155.0),
    (122.1, 33.0, 0, 0, 0.0479, 123.6),
    (86.7, 30.0, 0, 0, 0.0048, 88.2),
    (53.5, 33.0, 2, 0, 0.0019, 55.0),  # L4; below it the cut L5, read as sacrum
]
TRUTH = [V(v) for v in range(V.T9, V.L4 + 1)]


def _bodies() -> list[BodyFeatures]:
    out = []
    for i, (z, h, left, right, vote, below) in enumerate(CASE_19):
        out.append(BodyFeatures(centroid_mm=(0.0, 0.0, z), height_mm=h, rib_left=left > 700, rib_right=right > 700,
                                thoracic_vote=vote, cut_by_fov=i == 0, cut_top=i == 0, rib_left_mm3=left,
                                rib_right_mm3=right, field_left_mm=98.0, field_right_mm=101.0,
                                field_posterior_mm=77.0 + 4.5 * i, field_below_mm=below))
    return out


def test_a_field_ending_in_a_cut_l5_does_not_count_the_sacrum() -> None:
    res = label_bodies(_bodies(), sacrum_below=True)
    assert [d.level for d in res.decisions] == TRUTH, res.notes
    assert all(d.uncertain for d in res.decisions)  # the unconfirmed sacrum's count still disagrees
    assert all(d.cues[0] == T12_ANCHOR for d in res.decisions)
    assert "too close to tell the sacrum from an L5 cut by the field" in (res.decisions[0].reason or "")


def test_the_same_spine_with_the_field_reaching_into_the_sacrum_counts_it() -> None:
    """The same readings with the field reaching 80 mm below the lowest centre: the sacrum counts, and its count is
    preferred to the last rib's (the names one level high here, where the sacrum was in truth a cut L5)."""
    bodies = _bodies()
    bodies[-1] = dataclasses.replace(bodies[-1], field_below_mm=80.0)
    res = label_bodies(bodies, sacrum_below=True)
    assert all(d.uncertain and d.cues[0] == L5_ANCHOR for d in res.decisions)
    assert [d.level for d in res.decisions] == [V(int(v) + 1) for v in TRUTH]
