"""The first rib pair under a C7 that reads part of the first rib, and 11/13 rib pairs named with confidence only
when the first rib pair, the sacrum and the thoracic/lumbar appearance agree (issue 16, held-out set 2 whole
fields).  Hand-made body features with rib volumes as the fine stage measures them (mm3 per side)."""

from __future__ import annotations

from service.domain.levels import VertebraLevel as V
from service.segmentation.label_cues import first_rib_pair
from service.segmentation.labelling import T1_ANCHOR, T12_ANCHOR, BodyFeatures, label_bodies

FULL_PAIR_MM3 = 2800.0
"""A thoracic rib pair in the ring around its body (set 2: 2000-4400 mm3 per side)."""


def _spine(levels: list[V], ribs_mm3: dict[V, float], votes: dict[V, float] | None = None) -> list[BodyFeatures]:
    """Complete bodies 24 mm apart and 22 mm tall (heights carry no level information); ``ribs_mm3``: the rib
    volume on each side of the rib-bearing bodies (flagged rib-bearing, as features_from_masks does above the
    scan's relative threshold); votes: the truth (1 thoracic, 0 lumbar, cervical 0.5) unless given."""
    out = []
    for i, lv in enumerate(levels):
        mm3 = ribs_mm3.get(lv, 0.0)
        truth = 0.5 if lv < V.T1 else (1.0 if lv <= V.T12 else 0.0)
        vote = truth if votes is None or lv not in votes else votes[lv]
        out.append(BodyFeatures(centroid_mm=(0.0, 0.0, -24.0 * i), height_mm=22.0, rib_left=mm3 > 0.0,
                                rib_right=mm3 > 0.0, thoracic_vote=vote, rib_left_mm3=mm3, rib_right_mm3=mm3,
                                field_left_mm=170.0, field_right_mm=185.0, field_posterior_mm=150.0))
    return out


def _ribs(first: V, last: V, mm3: float = FULL_PAIR_MM3) -> dict[V, float]:
    return {V(v): mm3 for v in range(first, last + 1)}


def test_c7_reading_the_first_rib_head_is_not_the_first_rib_pair() -> None:
    """Set 2 case_46 (chest, 12 rib pairs, 0.625 mm): C7 at the top of the field reads 1300 mm3 of the first rib on
    its weaker side, T1 3000; T12 looks lumbar to the network (vote 0.24), which alone would leave the last rib
    uncertain.  C7's weak pair is not T1's: the T1 anchor counts from the full pair below and agrees with T12."""
    levels = [V(v) for v in range(V.C7, V.L2 + 1)]
    bodies = _spine(levels, {**_ribs(V.T1, V.T12), V.C7: 1300.0}, votes={V.T12: 0.24})
    assert first_rib_pair(bodies) == 1
    res = label_bodies(bodies, sacrum_below=False)
    assert [d.level for d in res.decisions] == levels
    assert not any(d.uncertain for d in res.decisions)
    assert {T1_ANCHOR, T12_ANCHOR} <= set(res.decisions[1].cues)


def test_weak_c7_pair_under_a_rib_free_c6_does_not_move_the_count() -> None:
    """Set 2 case_58 (chest, 5 mm): C6 without ribs, C7 reading 1130 mm3 per side, T1 2000: the first rib pair was
    taken at C7 and named T1, one level off the last rib.  Now T1 is the full pair, in agreement with T12."""
    levels = [V(v) for v in range(V.C6, V.L2 + 1)]
    bodies = _spine(levels, {**_ribs(V.T2, V.T12), V.T1: 2000.0, V.C7: 1130.0})
    res = label_bodies(bodies, sacrum_below=False)
    assert [d.level for d in res.decisions] == levels
    assert not any(d.uncertain for d in res.decisions)


def test_a_real_first_rib_pair_smaller_than_the_second_stays_t1() -> None:
    """Only a pair far below both the pair under it and the scan's typical pair is C7's: a first pair at 0.7 of
    the second, one at 0.58 of both (set 2's smallest T1s: 0.60 of T2, 0.63 of the median), or a pair above a
    missed body at 0.64 of the next but 0.68 of the typical pair, is kept; C7 at 0.45 of both is not."""
    levels = [V(v) for v in range(V.T1, V.L1 + 1)]
    assert first_rib_pair(_spine(levels, {**_ribs(V.T2, V.T12), V.T1: 0.7 * FULL_PAIR_MM3})) == 0
    assert first_rib_pair(_spine(levels, {**_ribs(V.T2, V.T12), V.T1: 0.58 * FULL_PAIR_MM3})) == 0
    assert first_rib_pair(_spine(levels, {**_ribs(V.T2, V.T12), V.T1: 0.45 * FULL_PAIR_MM3})) == 1
    upper_mm3 = 0.68 * FULL_PAIR_MM3
    assert first_rib_pair(_spine(levels, {**_ribs(V.T3, V.T12), V.T2: upper_mm3 / 0.64, V.T1: upper_mm3})) == 0
    # without measured volumes (rib flags only) nothing moves
    flags = [BodyFeatures(b.centroid_mm, b.height_mm, True, True, 1.0) for b in _spine(levels, {})]
    assert first_rib_pair(flags) == 0


def test_eleven_rib_pairs_named_when_first_rib_pair_sacrum_and_appearance_agree() -> None:
    """Set 2 case_20 (chest-abdomen, 11 rib pairs, C7 to the sacrum): T1 and L5 anchors agree, the last rib (T11)
    names one level too low; the network calls T12 thoracic (0.84) but also L1 (0.78).  The appearance still fits
    the T1/L5 count better than the last rib's: three cues against one, named with confidence."""
    levels = [V(v) for v in range(V.C7, V.L5 + 1)]
    bodies = _spine(levels, {**_ribs(V.T1, V.T11), V.C7: 1050.0}, votes={V.T12: 0.84, V.L1: 0.78, V.L2: 0.45})
    res = label_bodies(bodies, sacrum_below=True)
    assert [d.level for d in res.decisions] == levels
    assert not any(d.uncertain for d in res.decisions)
    assert T1_ANCHOR in res.decisions[0].cues
    assert any("11 rib pairs" in n for n in res.notes)


def test_thirteen_rib_pairs_named_when_first_rib_pair_sacrum_and_appearance_agree() -> None:
    levels = [V(v) for v in range(V.C6, V.L5 + 1)]
    bodies = _spine(levels, _ribs(V.T1, V.L1))
    res = label_bodies(bodies, sacrum_below=True)
    assert [d.level for d in res.decisions] == levels
    assert not any(d.uncertain for d in res.decisions)
    assert any("13 rib pairs" in n for n in res.notes)


def test_cervical_rib_pair_with_a_sacralised_l5_stays_uncertain() -> None:
    """The anatomy that fools two anchors at once: a full cervical rib pair on C7 (the T1 anchor names C7 'T1') and
    L5 fused to the sacrum (the L4 on it is named 'L5'), 12 rib pairs.  T1 and L5 agree and the last rib is one
    level off, as with 13 rib pairs, but the thoracic/lumbar appearance sides with the last rib: uncertain."""
    levels = [V(v) for v in range(V.C6, V.L4 + 1)]
    bodies = _spine(levels, _ribs(V.C7, V.T12))
    res = label_bodies(bodies, sacrum_below=True)
    assert all(d.uncertain for d in res.decisions)
    # and without any thoracic/lumbar information the two anchors are not enough either
    blind = [BodyFeatures(**{**b.__dict__, "thoracic_vote": 0.5}) for b in bodies]
    assert all(d.uncertain for d in label_bodies(blind, sacrum_below=True).decisions)


def test_eleven_rib_pairs_without_the_sacrum_stay_uncertain() -> None:
    """First rib pair and last rib disagree, no sacrum: one anchor against the other, uncertain (set 2 case_10)."""
    levels = [V(v) for v in range(V.C7, V.L2 + 1)]
    res = label_bodies(_spine(levels, _ribs(V.T1, V.T11)), sacrum_below=False)
    assert all(d.uncertain for d in res.decisions)


def test_first_rib_pair_against_the_last_rib_alone_names_the_best_guess_from_the_first_pair() -> None:
    """Held-out sets 4 and 6 case_10 and case_40 (chests, 11 rib pairs, C7 in view, no sacrum): the first rib pair and
    the last rib disagree by one and the appearance decides nothing.  Uncertain, and the best guess counts from the
    first rib pair (before: from the last rib, every name one level off): an absent 12th rib is far commoner than a
    cervical rib pair."""
    levels = [V(v) for v in range(V.C7, V.L2 + 1)]
    bodies = [BodyFeatures(**{**b.__dict__, "thoracic_vote": 0.5}) for b in _spine(levels, _ribs(V.T1, V.T11))]
    res = label_bodies(bodies, sacrum_below=False)
    assert all(d.uncertain for d in res.decisions)
    assert [d.level for d in res.decisions] == levels
    assert "11 or 13 rib pairs" in (res.decisions[0].reason or "")


def test_without_a_clear_appearance_the_best_guess_follows_two_anchors_against_one() -> None:
    """Held-out labelling set 4 case_20 (chest-abdomen, 11 rib pairs, C7 to the sacrum): the first rib pair and the
    sacrum agree, the last rib is one level off, and the appearance sides with neither by the margin.  Every level
    stays uncertain; the best-guess names follow the two agreeing anchors (before: the last rib, all one level off)."""
    levels = [V(v) for v in range(V.C7, V.L5 + 1)]
    bodies = [BodyFeatures(**{**b.__dict__, "thoracic_vote": 0.5})
              for b in _spine(levels, {**_ribs(V.T1, V.T11), V.C7: 1050.0})]
    res = label_bodies(bodies, sacrum_below=True)
    assert all(d.uncertain for d in res.decisions)
    assert [d.level for d in res.decisions] == levels


def test_an_appearance_that_clearly_sides_with_the_last_rib_still_outweighs_two_anchors() -> None:
    """The cervical-rib pair with a sacralised L5 (12 rib pairs): the first rib pair and the sacrum agree on a wrong
    count; the appearance fits the last rib's count by a whole body, so the best guess follows the last rib."""
    levels = [V(v) for v in range(V.C6, V.L4 + 1)]
    res = label_bodies(_spine(levels, _ribs(V.C7, V.T12)), sacrum_below=True)
    assert all(d.uncertain for d in res.decisions)
    assert [d.level for d in res.decisions] == levels


def test_votes_that_follow_a_thirteenth_rib_do_not_outweigh_two_anchors() -> None:
    """Labelling set 10 case_50 (chest-abdomen, 13 rib pairs, C7 to the sacrum): the first rib pair and the sacrum
    agree, the last rib (on L1) is one level off, and the network votes the rib-bearing L1 thoracic (0.79): its
    votes partly follow the ribs.  That fits the last rib's count better by 0.58, less than one body clearly on the
    other side (label_cues.APPEARANCE_OVERRULES_MARGIN), so the best guess follows the two anchors (before: the
    last rib, every name one level off).  Every level stays uncertain."""
    levels = [V(v) for v in range(V.C7, V.L5 + 1)]
    bodies = _spine(levels, _ribs(V.T1, V.L1), votes={V.L1: 0.79})
    res = label_bodies(bodies, sacrum_below=True)
    assert all(d.uncertain for d in res.decisions)
    assert [d.level for d in res.decisions] == levels
    assert T1_ANCHOR in res.decisions[0].cues


def test_lone_last_rib_with_the_first_pair_in_view_but_unconfirmed_is_uncertain() -> None:
    """Held-out labelling set 5 case_40 (chest, 11 rib pairs): C7 reads 1740 mm3 of the first rib's head per side, T1
    3000, so no rib-free body shows above the first pair; T12 carries no rib and the network's appearance is
    undecided there.  The lone bilateral last rib (on T11) named every body one level off with confidence.  Its
    count names a body T1, so the field shows the first pair, which does not confirm it: uncertain."""
    levels = [V(v) for v in range(V.C7, V.L2 + 1)]
    bodies = _spine(levels, {**_ribs(V.T1, V.T11), V.C7: 1740.0}, votes={V.C7: 0.57, V.T12: 0.45})
    res = label_bodies(bodies, sacrum_below=False)
    assert [d.level for d in res.decisions][-3] == V.L1  # the last rib's count, one level off (T12 named L1) ...
    assert all(d.uncertain for d in res.decisions)  # ... never confident
    assert "reaches the first rib pair" in (res.decisions[0].reason or ""), res.notes


def test_lone_last_rib_with_the_lumbosacral_junction_in_view_but_no_sacrum_is_uncertain() -> None:
    """11 rib pairs, T8 to L4, the field ending below a complete L4 (no sacrum found): the last rib's count names L4
    "L5" with nothing on which it would sit.  The sacrum's end of the count is in view and does not confirm it."""
    levels = [V(v) for v in range(V.T8, V.L4 + 1)]
    bodies = _spine(levels, _ribs(V.T8, V.T11), votes={V.T12: 0.5})
    res = label_bodies(bodies, sacrum_below=False)
    assert [d.level for d in res.decisions][-1] == V.L5
    assert all(d.uncertain for d in res.decisions)
    assert "lumbosacral junction" in (res.decisions[0].reason or ""), res.notes


def test_lone_last_rib_whose_field_shows_neither_end_stays_confident() -> None:
    """An abdomen from T10 to L3 (ts_abdomen_t11_l2 is such a field): the last rib on both sides in a wide field, the
    appearance undecided.  Neither the first rib pair nor the sacrum could confirm or contradict: the bilateral
    last rib stands (the residual risk of 11 rib pairs that no cue in such a field can show)."""
    levels = [V(v) for v in range(V.T10, V.L3 + 1)]
    bodies = _spine(levels, _ribs(V.T10, V.T12), votes={V.T12: 0.5, V.L1: 0.5})
    res = label_bodies(bodies, sacrum_below=False)
    assert [d.level for d in res.decisions] == levels
    assert not any(d.uncertain for d in res.decisions)


def test_lone_sacrum_anchor_gives_its_own_reason_not_the_lumbosacral_junction() -> None:
    """A targeted lumbar field (set 7 narrow case_27: L1 to the sacrum, no rib in view, an appearance undecided
    between a count with L1 at the top and one with T12): the sacrum is the only anchor.  It is uncertain as a single
    cue; its reason must not say that the lumbosacral junction fails to confirm a count the junction itself placed."""
    levels = [V(v) for v in range(V.L1, V.L5 + 1)]
    bodies = _spine(levels, {}, votes={V.L1: 0.5})
    res = label_bodies(bodies, sacrum_below=True)
    assert [d.level for d in res.decisions] == levels
    assert all(d.uncertain for d in res.decisions)
    reason = res.decisions[0].reason or ""
    assert "a single cue places the count (L5" in reason and "lumbosacral junction" not in reason, res.notes
