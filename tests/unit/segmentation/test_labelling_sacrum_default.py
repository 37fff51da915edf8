"""The sacrum's count against the last rib's, where no first rib pair decides (issue 16, session 23).

Recorded features of two abdomen phantoms of labelling set 15 (seed 16030; ``label_replay record``): the sacrum and
the last rib disagree by one level and the thoracic/lumbar appearance, which follows the ribs, does not fit either
count clearly better. In both the last rib is the misread anchor: case_30 has 13 rib pairs (a rib pair on L1),
case_12 12 pairs and a transverse process of L1 read as a rib on one side (96 / 949 mm3). Named from the last rib,
every body was one level high; the names now follow the sacrum. Every level stays uncertain: a transitional
lumbosacral vertebra gives the same readings with the sacrum wrong (``test_labelling_fov``)."""

from __future__ import annotations

from service.domain.levels import VertebraLevel as V
from service.segmentation.labelling import L5_ANCHOR, BodyFeatures, label_bodies

Recorded = list[tuple[float, float, float, float, float]]
# canonical z (mm), height along the scanner axis (mm), rib volume left / right (mm3), thoracic vote
CASE_30: Recorded = [
    (307.5, 24.1, 2518, 2845, 0.9234),  # T10
    (280.0, 24.1, 2528, 2425, 0.8711),
    (252.6, 27.1, 1788, 2305, 0.7888),
    (222.6, 27.1, 1450, 1629, 0.7813),  # L1, carrying the 13th rib pair
    (187.4, 27.1, 0, 0, 0.5556),
    (151.6, 30.1, 248, 279, 0.3551),
    (115.2, 39.1, 369, 342, 0.0860),
    (79.1, 30.1, 0, 0, 0.0035),  # L5, on the sacrum
]
CASE_12: Recorded = [
    (314.1, 15.0, 1948, 2138, 0.9177),  # T10, cut by the top of the field
    (290.5, 30.1, 3258, 2570, 0.9036),
    (260.9, 30.1, 2297, 2487, 0.5887),
    (230.8, 36.1, 96, 949, 0.2533),  # L1: a transverse process read as a rib on the right
    (197.6, 39.1, 2, 0, 0.0136),
    (163.0, 33.1, 2, 8, 0.0043),
    (128.6, 36.1, 0, 41, 0.0009),
    (92.4, 45.1, 33, 0, 0.0010),  # L5, on the sacrum
]


def _bodies(recorded: Recorded, top_cut: bool) -> list[BodyFeatures]:
    out = []
    for i, (z, h, left, right, vote) in enumerate(recorded):
        top = top_cut and i == 0
        out.append(BodyFeatures(centroid_mm=(0.0, 0.0, z), height_mm=h, rib_left=left > 700, rib_right=right > 700,
                                thoracic_vote=vote, cut_by_fov=top, rib_left_mm3=left, rib_right_mm3=right,
                                cut_top=top, field_left_mm=170.0, field_right_mm=185.0, field_posterior_mm=110.0))
    return out


def test_thirteen_rib_pairs_are_named_from_the_sacrum_and_stay_uncertain() -> None:
    res = label_bodies(_bodies(CASE_30, top_cut=False), sacrum_below=True)
    assert [d.level for d in res.decisions] == [V(v) for v in range(V.T10, V.L5 + 1)], res.notes
    assert all(d.uncertain and "anchors disagree" in (d.reason or "") for d in res.decisions)
    assert all(d.cues[0] == L5_ANCHOR for d in res.decisions)


def test_a_transverse_process_read_as_the_last_rib_is_named_from_the_sacrum() -> None:
    res = label_bodies(_bodies(CASE_12, top_cut=True), sacrum_below=True)
    assert [d.level for d in res.decisions] == [V(v) for v in range(V.T10, V.L5 + 1)], res.notes
    assert all(d.uncertain for d in res.decisions)
