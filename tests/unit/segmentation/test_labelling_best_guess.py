"""The best guess where no anchor counts (a targeted field): the network's thoracic/lumbar appearance is the weaker
cue, so it replaces a rib count the field cannot confirm only when it fits clearly better, and it never names a
body with a rib pair lumbar.  Hand-made body features; the votes are those the network gave on recorded targeted
phantom fields (labelling set 10, ``label_replay``)."""

from __future__ import annotations

from service.domain.levels import VertebraLevel as V
from service.segmentation.label_cues import VOTE_CUE, ribs_stay_thoracic
from service.segmentation.labelling import T12_ANCHOR, BodyFeatures, label_bodies

NARROW = (52.0, 52.0, 60.0)
"""A 105 mm field centred on the spine: too narrow to show whether a body carries a rib."""


def _spine(levels: list[V], votes: list[float], ribs: dict[V, tuple[bool, bool]],
           field_mm: tuple[float, float, float] = NARROW) -> list[BodyFeatures]:
    """Complete bodies 27 mm apart, 22 mm tall (heights carry no level information); ``ribs``: (left, right)."""
    out = []
    for i, (lv, vote) in enumerate(zip(levels, votes, strict=True)):
        left, right = ribs.get(lv, (False, False))
        out.append(BodyFeatures(centroid_mm=(0.0, 0.0, -27.0 * i), height_mm=22.0, rib_left=left, rib_right=right,
                                rib_left_mm3=2500.0 * left, rib_right_mm3=2500.0 * right, thoracic_vote=vote,
                                field_left_mm=field_mm[0], field_right_mm=field_mm[1],
                                field_posterior_mm=field_mm[2]))
    return out


def _levels(first: V, last: V) -> list[V]:
    return [V(v) for v in range(first, last + 1)]


PAIR = (True, True)


def test_soft_appearance_one_level_low_does_not_replace_the_rib_count() -> None:
    # set 10 narrow case_03: ribs on T9-T12, none on L1; the network still votes L1 thoracic (0.76)
    levels = _levels(V.T9, V.L3)
    votes = [0.71, 0.88, 0.85, 0.86, 0.76, 0.42, 0.16]
    res = label_bodies(_spine(levels, votes, {v: PAIR for v in _levels(V.T9, V.T12)}), sacrum_below=False)
    assert all(d.uncertain for d in res.decisions)
    assert [d.level for d in res.decisions] == levels
    assert all(T12_ANCHOR in d.cues for d in res.decisions)
    assert "named from the T12 (last rib-bearing body) count, which this scan cannot confirm" in (
        res.decisions[0].reason or "")


def test_clear_appearance_still_replaces_the_rib_count() -> None:
    # the T9-L4 field with the T12 rib stubs missed: the real T12 votes clearly thoracic, L1 clearly lumbar
    levels = _levels(V.T9, V.L4)
    votes = [0.95, 0.95, 0.95, 0.92, 0.05, 0.05, 0.05, 0.05]
    res = label_bodies(_spine(levels, votes, {v: PAIR for v in _levels(V.T9, V.T11)}), sacrum_below=False)
    assert all(d.uncertain for d in res.decisions)
    assert [d.level for d in res.decisions] == levels
    assert all(VOTE_CUE in d.cues for d in res.decisions)


def test_appearance_never_names_a_rib_pair_lumbar() -> None:
    # set 10 narrow case_37: T7-T12 all with rib pairs, no rib-free body in view; the network votes T12 lumbar
    levels = _levels(V.T7, V.T12)
    votes = [0.74, 0.92, 0.97, 0.95, 0.79, 0.05]
    res = label_bodies(_spine(levels, votes, {v: PAIR for v in levels}), sacrum_below=False)
    assert all(d.uncertain for d in res.decisions)
    assert [d.level for d in res.decisions] == levels
    assert "moved up to keep the last rib pair in view thoracic" in (res.decisions[0].reason or "")


def test_a_one_sided_rib_does_not_move_the_appearance() -> None:
    # a "rib" on one side only may be a transverse process: the appearance's count stands
    levels = _levels(V.T8, V.L1)
    votes = [0.9, 0.9, 0.9, 0.9, 0.9, 0.05]
    ribs = {**{v: PAIR for v in _levels(V.T8, V.T12)}, V.L1: (True, False)}
    res = label_bodies(_spine(levels, votes, ribs), sacrum_below=False)
    assert [d.level for d in res.decisions] == levels
    assert all(d.uncertain for d in res.decisions)
    assert "moved up" not in (res.decisions[0].reason or "")


def test_ribs_stay_thoracic_moves_the_count_only_where_a_pair_falls_below_t12() -> None:
    bodies = _spine(_levels(V.T10, V.L1), [0.5] * 4, {V.T10: PAIR, V.T11: PAIR, V.T12: PAIR})
    pos = [0, 1, 2, 3]
    assert ribs_stay_thoracic(int(V.T10), bodies, pos) == int(V.T10)  # T12 is the last pair: unchanged
    assert ribs_stay_thoracic(int(V.T8), bodies, pos) == int(V.T8)  # names the pairs higher: unchanged
    assert ribs_stay_thoracic(int(V.T11), bodies, pos) == int(V.T10)  # would name the last pair L1
    assert ribs_stay_thoracic(int(V.T11), _spine(_levels(V.T10, V.L1), [0.5] * 4, {}), pos) == int(V.T11)
