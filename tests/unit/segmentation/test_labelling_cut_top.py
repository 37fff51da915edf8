"""A chest field whose top cuts through T1, in a patient with 11 rib pairs (issue 16; `cut_top` set, session 22).

Recorded features of such a phantom (T1 cut at 20 % of its height, 1 mm slices): the last rib sits on T11, the
rib-free T12 looks lumbar to the network (its votes follow the ribs), and the cut T1 at the top carries its rib pair.
Counted from the last rib, every body is named one level low; the appearance agrees with that count, so a rule that
takes the appearance as a second cue named all twelve complete levels wrong with confidence. The count names the top
body T2: the first rib pair is in the field and gives no T1 anchor, so 11 or 13 rib pairs cannot be excluded."""

from __future__ import annotations

from service.domain.levels import VertebraLevel as V
from service.segmentation.labelling import T12_ANCHOR, BodyFeatures, label_bodies

# canonical z (mm), height along the scanner axis (mm), rib volume left / right (mm3), thoracic vote
RECORDED: list[tuple[float, float, float, float, float]] = [
    (309.2, 18.0, 2682, 2541, 0.81),  # T1, cut by the top of the field
    (290.2, 24.0, 4082, 3369, 0.91),
    (270.2, 21.0, 3574, 3256, 0.97),
    (249.7, 21.0, 3313, 3469, 0.98),
    (229.0, 21.0, 2697, 3089, 0.98),
    (207.0, 21.0, 2806, 3213, 0.97),
    (183.6, 21.0, 3447, 3484, 0.97),
    (160.1, 24.0, 3174, 3996, 0.97),
    (136.1, 24.0, 2908, 3132, 0.93),
    (108.6, 27.0, 3620, 3737, 0.98),
    (82.6, 30.0, 3655, 2532, 0.92),  # T11: the last rib
    (53.4, 33.0, 2, 0, 0.32),  # T12, rib-free
    (18.8, 39.0, 0, 0, 0.06),  # L1, cut by the bottom of the field
]
TRUTH = [V(v) for v in range(V.T1, V.L1 + 1)]


def _bodies() -> list[BodyFeatures]:
    out = []
    for i, (z, h, left, right, vote) in enumerate(RECORDED):
        top, bottom = i == 0, i == len(RECORDED) - 1
        out.append(BodyFeatures(centroid_mm=(0.0, 0.0, z), height_mm=h, rib_left=left > 700, rib_right=right > 700,
                                thoracic_vote=vote, cut_by_fov=top or bottom, rib_left_mm3=left, rib_right_mm3=right,
                                cut_top=top, cut_bottom=bottom, field_left_mm=188.0, field_right_mm=170.0,
                                field_posterior_mm=190.0))
    return out


def test_a_last_rib_count_that_reaches_an_unconfirmed_first_rib_pair_stays_uncertain_despite_the_appearance() -> None:
    res = label_bodies(_bodies(), sacrum_below=False)
    names = [d.level for d in res.decisions]
    assert names == [V(int(v) + 1) for v in TRUTH]  # the last rib's count: one level low (11 rib pairs) ...
    assert all(d.uncertain for d in res.decisions)  # ... never confident
    assert T12_ANCHOR in res.decisions[1].cues
    assert "reaches the first rib pair" in (res.decisions[1].reason or ""), res.notes
