"""A lone anchor is not confirmed when the scan shows the other end of the spine and no body was detected there
(label_reach): the detected column is then not the scan's column."""

from __future__ import annotations

from dataclasses import replace

from service.domain.levels import VertebraLevel as V
from service.segmentation.labelling import BodyFeatures, label_bodies

SPACING_MM = 25.0


def _column(levels: list[V], ribs: set[V], below_mm: float, above_mm: float = 10.0,
            pair_mm3: dict[V, float] | None = None) -> list[BodyFeatures]:
    """Bodies cranial -> caudal, the scan reaching ``above_mm`` above the first body's centre and ``below_mm`` below
    the last one's."""
    n = len(levels)
    out = []
    for i, lv in enumerate(levels):
        rib = lv in ribs
        mm3 = (pair_mm3 or {}).get(lv, 2500.0) if rib else 0.0
        z = (n - 1 - i) * SPACING_MM + below_mm
        out.append(BodyFeatures(centroid_mm=(0.0, 0.0, z), height_mm=20.0, rib_left=rib, rib_right=rib,
                                thoracic_vote=1.0 if V.T1 <= lv <= V.T12 else 0.0, rib_left_mm3=mm3,
                                rib_right_mm3=mm3, field_left_mm=130.0, field_right_mm=130.0,
                                field_posterior_mm=200.0, field_above_mm=above_mm + (i * SPACING_MM),
                                field_below_mm=z))
    return out


THORACIC = {V(v) for v in range(V.T1, V.T12 + 1)}


def test_first_rib_pair_count_is_uncertain_when_the_scan_shows_an_undetected_lumbar_spine() -> None:
    # s11 case_19: C7..T12 detected, the lumbar spine in the scan but not detected; the real T1's small first rib
    # pair was read as C7's, so the count from the first rib pair named every body one level too high
    real = [V(v) for v in range(V.C7, V.T12 + 1)]
    bodies = _column(real, THORACIC, below_mm=270.0, pair_mm3={V.T1: 1050.0, V.T2: 2600.0})
    res = label_bodies(bodies, sacrum_below=False)
    assert res.decisions[2].level == V.T1  # the real T2: the weak first pair was skipped
    assert all(d.uncertain for d in res.decisions)
    assert "the last rib" in (res.decisions[0].reason or "")
    assert "no vertebral body was detected there" in (res.decisions[0].reason or "")


def test_first_rib_pair_count_stays_confident_when_the_scan_ends_below_the_last_body() -> None:
    levels = [V(v) for v in range(V.C6, V.T10 + 1)]
    res = label_bodies(_column(levels, THORACIC, below_mm=20.0), sacrum_below=False)
    assert [d.level for d in res.decisions] == levels
    assert not any(d.uncertain for d in res.decisions)


def test_last_rib_count_is_uncertain_when_the_scan_shows_undetected_upper_thoracic_bodies() -> None:
    levels = [V(v) for v in range(V.T8, V.L3 + 1)]
    bodies = _column(levels, THORACIC, below_mm=20.0, above_mm=8 * SPACING_MM)
    res = label_bodies(bodies, sacrum_below=False)
    assert [d.level for d in res.decisions] == levels
    assert all(d.uncertain for d in res.decisions)
    assert "the first rib pair" in (res.decisions[0].reason or "")


def test_last_rib_count_is_uncertain_when_the_scan_shows_an_undetected_lumbosacral_junction() -> None:
    levels = [V(v) for v in range(V.T11, V.L3 + 1)]
    res = label_bodies(_column(levels, THORACIC, below_mm=4 * SPACING_MM), sacrum_below=False)
    assert all(d.uncertain for d in res.decisions)
    assert "the lumbosacral junction" in (res.decisions[0].reason or "")


def test_an_abdomen_ending_in_the_pelvis_with_both_anchors_stays_confident() -> None:
    levels = [V(v) for v in range(V.T10, V.L5 + 1)]
    # the scan starts three bodies above T10 (the lower chest) and ends in the pelvis
    res = label_bodies(_column(levels, THORACIC, below_mm=150.0, above_mm=3 * SPACING_MM), sacrum_below=True)
    assert [d.level for d in res.decisions] == levels
    assert not any(d.uncertain for d in res.decisions)


def test_the_reach_is_not_measured_without_the_field() -> None:
    levels = [V(v) for v in range(V.T11, V.L3 + 1)]
    bodies = [replace(b, field_above_mm=None, field_below_mm=None)
              for b in _column(levels, THORACIC, below_mm=4 * SPACING_MM)]
    res = label_bodies(bodies, sacrum_below=False)
    assert not any(d.uncertain for d in res.decisions)


def test_a_first_rib_pair_told_from_a_small_pair_above_by_volume_alone_does_not_stand_alone() -> None:
    # a chest whose field ends just below the last detected body: no other end to check; the real T1 carries a
    # short first rib pair (0.42 of the typical pair), so the pair below it was taken for the first: one level off
    real = [V(v) for v in range(V.C7, V.T10 + 1)]
    bodies = _column(real, THORACIC, below_mm=20.0, pair_mm3={V.T1: 1050.0})
    res = label_bodies(bodies, sacrum_below=False)
    assert res.decisions[2].level == V.T1  # the real T2
    assert all(d.uncertain for d in res.decisions)
    assert "small rib pair" in (res.decisions[0].reason or "")
    # a rib-free C7 above the first pair: the anchor stands alone, as before
    levels = [V(v) for v in range(V.C6, V.T10 + 1)]
    res = label_bodies(_column(levels, THORACIC, below_mm=20.0), sacrum_below=False)
    assert [d.level for d in res.decisions] == levels
    assert not any(d.uncertain for d in res.decisions)
