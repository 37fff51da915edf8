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


def _bodies(recorded: list[tuple[float, float, float, float, float]]) -> list[BodyFeatures]:
    out = []
    for i, (z, h, left, right, vote) in enumerate(recorded):
        top, bottom = i == 0, i == len(recorded) - 1
        out.append(BodyFeatures(centroid_mm=(0.0, 0.0, z), height_mm=h, rib_left=left > 700, rib_right=right > 700,
                                thoracic_vote=vote, cut_by_fov=top or bottom, rib_left_mm3=left, rib_right_mm3=right,
                                cut_top=top, cut_bottom=bottom, field_left_mm=188.0, field_right_mm=170.0,
                                field_posterior_mm=190.0))
    return out


def test_a_last_rib_count_that_reaches_an_unconfirmed_first_rib_pair_stays_uncertain_despite_the_appearance() -> None:
    res = label_bodies(_bodies(RECORDED), sacrum_below=False)
    names = [d.level for d in res.decisions]
    assert names == [V(int(v) + 1) for v in TRUTH]  # the last rib's count: one level low (11 rib pairs) ...
    assert all(d.uncertain for d in res.decisions)  # ... never confident
    assert T12_ANCHOR in res.decisions[1].cues
    assert "reaches the first rib pair" in (res.decisions[1].reason or ""), res.notes


# cut_top set, first design (``cut_top write ... --seed 16100 --rib-turn parity``), case_05: T1 cut at half its height,
# 11 rib pairs, 1 mm; the segmenter took the cut T1 and T2 for one 27 mm body at the top of the field
MERGED_TOP: list[tuple[float, float, float, float, float]] = [
    (308.2, 27.0, 3779, 3605, 0.81),  # T1 (cut) and T2 as one body
    (285.0, 15.0, 2956, 2329, 0.93),
    (264.3, 18.0, 2835, 2380, 0.95),
    (244.4, 18.0, 2909, 3145, 0.96),
    (223.4, 21.0, 2800, 2712, 0.96),
    (199.3, 21.0, 2647, 2618, 0.95),
    (175.0, 24.0, 3274, 3094, 0.92),
    (149.8, 21.0, 3244, 2731, 0.91),
    (122.8, 27.0, 3067, 2685, 0.88),
    (94.2, 24.0, 2729, 3399, 0.81),  # T11: the last rib
    (67.5, 30.0, 0, 0, 0.41),  # T12
    (37.5, 30.0, 0, 0, 0.09),
    (8.6, 24.0, 0, 0, 0.02),  # L2, cut by the bottom of the field
]


def test_a_cut_top_body_as_tall_as_two_is_not_taken_for_one_below_the_first_rib_pair() -> None:
    """The last rib's count names the merged top body T3 (really T1 and T2), so the first rib pair seemed out of the
    field and the lone bilateral last rib stood: eleven names one level low with confidence. A body cut by the top
    of the field that is 1.8 times as tall as the complete body below it may hold two: the field may reach one level
    higher, to the first rib pair, which does not confirm the count."""
    res = label_bodies(_bodies(MERGED_TOP), sacrum_below=False)
    assert [d.level for d in res.decisions][1:4] == [V.T4, V.T5, V.T6]  # the count, one level low ...
    assert all(d.uncertain for d in res.decisions)  # ... never confident
    assert "reaches the first rib pair" in (res.decisions[1].reason or ""), res.notes


# cut_top set seed 16102, case_23: T1 cut at half its height, 13 rib pairs (a rib on L1), 2 mm; the cut T1 reads no
# rib pair (its rib heads are above the field), and the body below the last rib reads a small rib-like structure
CUT_T1_THIRTEEN_RIBS: list[tuple[float, float, float, float, float]] = [
    (308.0, 12.0, 732, 412, 0.82),  # T1, cut: read as a rib-free C7
    (290.8, 17.9, 2753, 2553, 0.96),
    (269.7, 17.9, 3183, 3054, 0.99),
    (248.3, 20.9, 3244, 2434, 0.98),
    (225.3, 20.9, 3217, 3224, 0.99),
    (202.6, 20.9, 3546, 3281, 0.99),
    (178.0, 20.9, 3226, 3114, 0.99),
    (154.1, 20.9, 3058, 3434, 0.99),
    (127.5, 23.9, 3786, 3177, 0.99),
    (100.0, 26.9, 3254, 3352, 0.98),
    (70.4, 26.9, 3136, 3905, 0.93),
    (40.8, 29.9, 2736, 3120, 0.79),  # T12
    (9.5, 23.9, 822, 646, 0.31),  # L1 with its rib, cut by the bottom of the field
]


def test_a_first_rib_pair_under_a_body_cut_by_the_top_of_the_field_does_not_stand_alone() -> None:
    """The T1 anchor takes the cut T1 for a rib-free C7 and names T2 "T1"; with ribs on both sides it stood alone and
    named eleven levels one too high with confidence. "No rib pair" read on part of a body is no second
    observation: the count stays uncertain."""
    res = label_bodies(_bodies(CUT_T1_THIRTEEN_RIBS), sacrum_below=False)
    assert [d.level for d in res.decisions][1:3] == [V.T1, V.T2]  # the first rib pair's count, one level high ...
    assert all(d.uncertain for d in res.decisions)  # ... never confident
