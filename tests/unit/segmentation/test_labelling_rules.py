"""Labelling rules on hand-made body features (anchors, conflicts, gaps, no anchor)."""

from __future__ import annotations

from service.domain.levels import VertebraLevel as V
from service.segmentation.labelling import T1_ANCHOR, T12_ANCHOR, BodyFeatures, label_bodies


def _spine(levels: list[V], rib_levels: set[V], spacing_mm: float = 27.0, cut: set[V] | None = None,
           skip: set[V] | None = None) -> list[BodyFeatures]:
    out = []
    for i, lv in enumerate(levels):
        if skip and lv in skip:
            continue
        ribs = lv in rib_levels
        out.append(BodyFeatures(centroid_mm=(0.0, 0.0, -i * spacing_mm), height_mm=22.0, rib_left=ribs,
                                rib_right=ribs, thoracic_vote=1.0 if lv <= V.T12 else 0.0,
                                cut_by_fov=bool(cut and lv in cut), cut_top=bool(cut and lv in cut and i == 0),
                                cut_bottom=bool(cut and lv in cut and i == len(levels) - 1)))
    return out


THORACIC = {V(v) for v in range(V.T1, V.T12 + 1)}


def test_t12_anchor_names_abdomen() -> None:
    levels = [V.T10, V.T11, V.T12, V.L1, V.L2]
    res = label_bodies(_spine(levels, THORACIC), sacrum_below=False)
    assert [d.level for d in res.decisions] == levels
    assert not any(d.uncertain for d in res.decisions)


def test_l5_anchor_and_t12_agree() -> None:
    levels = [V(v) for v in range(V.T11, V.L5 + 1)]
    res = label_bodies(_spine(levels, THORACIC), sacrum_below=True)
    assert [d.level for d in res.decisions] == levels
    assert not any(d.uncertain for d in res.decisions)


def test_thirteen_rib_pairs_with_sacrum_is_uncertain() -> None:
    levels = [V(v) for v in range(V.T10, V.L5 + 1)]
    res = label_bodies(_spine(levels, THORACIC | {V.L1}), sacrum_below=True)
    assert all(d.uncertain for d in res.decisions)
    assert "disagree" in (res.decisions[0].reason or "")


def test_eleven_rib_pairs_with_t1_visible_is_uncertain() -> None:
    levels = [V(v) for v in range(V.C6, V.L1 + 1)]
    ribs = {V(v) for v in range(V.T1, V.T11 + 1)}
    res = label_bodies(_spine(levels, ribs), sacrum_below=False)
    assert all(d.uncertain for d in res.decisions)


def test_lumbarised_s1_is_uncertain() -> None:
    # six rib-free mobile vertebrae above the sacrum (S1 lumbarised)
    levels = [V(v) for v in range(V.T11, V.S1 + 1)]
    res = label_bodies(_spine(levels, THORACIC), sacrum_below=True)
    assert all(d.uncertain for d in res.decisions)
    # named by the rib anchor: T12 stays T12
    assert res.decisions[1].level == V.T12


def test_short_slab_without_anchor_is_uncertain() -> None:
    levels = [V.T11, V.T12]
    res = label_bodies(_spine(levels, THORACIC, cut={V.T11, V.T12}), sacrum_below=False)
    assert all(d.uncertain for d in res.decisions)
    assert "anchor" in (res.decisions[0].reason or "")


def test_missed_body_is_counted_in_the_gap() -> None:
    levels = [V(v) for v in range(V.T9, V.L3 + 1)]
    res = label_bodies(_spine(levels, THORACIC, skip={V.T10}), sacrum_below=False)
    names = [d.level for d in res.decisions]
    assert names == [lv for lv in levels if lv != V.T10]
    assert res.decisions[0].uncertain  # T9 is across the gap from the T12 anchor
    assert not res.decisions[-1].uncertain


def test_cut_bodies_at_the_fov_edges_do_not_fake_a_gap() -> None:
    # a 90 mm abdomen slab: a sliver of T11 at the top (its centroid close to T12), then T12, L1 and the top of
    # L2 cut at the bottom; the T11 sliver's short spacing must not make L1 -> L2 look like a missed body
    bodies = [
        BodyFeatures(centroid_mm=(0.0, 0.0, 88.0), height_mm=6.0, rib_left=True, rib_right=True, thoracic_vote=1.0,
                     cut_by_fov=True, cut_top=True),
        BodyFeatures(centroid_mm=(0.0, 0.0, 80.0), height_mm=24.0, rib_left=True, rib_right=True, thoracic_vote=1.0),
        BodyFeatures(centroid_mm=(0.0, 0.0, 48.0), height_mm=25.0, rib_left=False, rib_right=False, thoracic_vote=0.0),
        BodyFeatures(centroid_mm=(0.0, 0.0, 12.0), height_mm=18.0, rib_left=False, rib_right=False, thoracic_vote=0.0,
                     cut_by_fov=True, cut_bottom=True),
    ]
    res = label_bodies(bodies, sacrum_below=False)
    assert [d.level for d in res.decisions] == [V.T11, V.T12, V.L1, V.L2]
    assert not any("gap" in n for n in res.notes)


def test_disagreeing_anchors_follow_the_count_the_thoracic_lumbar_appearance_supports() -> None:
    """A lumbar transverse process read as a rib at L1 (noisy low-dose scan) moves the rib anchor down a level; the
    sacrum anchor and the network's thoracic/lumbar vote agree on the other count.  All levels stay uncertain."""
    levels = [V(v) for v in range(V.T10, V.L5 + 1)]
    res = label_bodies(_spine(levels, THORACIC | {V.L1}), sacrum_below=True)  # votes: T10-T12 thoracic, L1-L5 lumbar
    assert all(d.uncertain for d in res.decisions)
    assert [d.level for d in res.decisions] == levels


def test_disagreeing_anchors_without_a_clear_vote_follow_the_sacrum_against_the_last_rib() -> None:
    """The same transverse process read as a rib at L1, with no thoracic/lumbar information: the names follow the
    sacrum's count (session 23; until then the last rib's, as Pan 2020 counts from T12), all uncertain."""
    levels = [V(v) for v in range(V.T10, V.L5 + 1)]
    bodies = [BodyFeatures(b.centroid_mm, b.height_mm, b.rib_left, b.rib_right, 0.5) for b in
              _spine(levels, THORACIC | {V.L1})]  # no thoracic/lumbar information
    res = label_bodies(bodies, sacrum_below=True)
    assert all(d.uncertain for d in res.decisions)
    assert [d.level for d in res.decisions] == levels  # the rib-bearing L1 is named L1


def _chest_c6_to_l1(first_body: BodyFeatures, c7_rib_left: bool = False) -> list[BodyFeatures]:
    """A chest CT from a C6 cut by the top of the field to L1 cut by the bottom; the T12 rib is one-sided (short 12th
    rib on the right) and the thoracic/lumbar appearance cannot place the transition (L1 is cut)."""
    levels = [V(v) for v in range(V.C7, V.L1 + 1)]
    bodies = [first_body]
    for i, lv in enumerate(levels, start=1):
        ribs = V.T1 <= lv <= V.T12
        bodies.append(BodyFeatures(
            centroid_mm=(0.0, 0.0, -i * 24.0), height_mm=22.0, rib_left=ribs or (lv == V.C7 and c7_rib_left),
            rib_right=ribs and lv != V.T12, thoracic_vote=1.0 if lv <= V.T12 else 0.2,
            cut_by_fov=lv == V.L1, cut_bottom=lv == V.L1))
    return bodies


def test_first_rib_pair_under_a_rib_free_c7_confirms_the_last_rib() -> None:
    """The real CPTAC chest pattern: the cut C6 at the top reads a one-sided "rib" (first rib or clavicle passing
    beside it on a coarse grid). T1 is still the first complete body with ribs on both sides, C7 above it is complete
    and rib-free: the T1 anchor agrees with the T12 anchor and the names are confident."""
    c6 = BodyFeatures(centroid_mm=(0.0, 0.0, 0.0), height_mm=14.0, rib_left=True, rib_right=False, thoracic_vote=0.9,
                      cut_by_fov=True, cut_top=True)
    res = label_bodies(_chest_c6_to_l1(c6), sacrum_below=False)
    assert [d.level for d in res.decisions] == [V(v) for v in range(V.C6, V.L1 + 1)]
    assert not any(d.uncertain for d in res.decisions)
    assert {T1_ANCHOR, T12_ANCHOR} <= set(res.decisions[5].cues)


def test_one_sided_cervical_rib_on_c7_keeps_the_t1_anchor() -> None:
    """A one-sided cervical rib on C7: the first rib pair is still T1's, so the T1 anchor stands and agrees with the
    last rib."""
    c6 = BodyFeatures(centroid_mm=(0.0, 0.0, 0.0), height_mm=14.0, rib_left=False, rib_right=False, thoracic_vote=0.9,
                      cut_by_fov=True, cut_top=True)
    res = label_bodies(_chest_c6_to_l1(c6, c7_rib_left=True), sacrum_below=False)
    assert [d.level for d in res.decisions] == [V(v) for v in range(V.C6, V.L1 + 1)]
    assert not any(d.uncertain for d in res.decisions)
    assert T1_ANCHOR in res.decisions[5].cues


def test_eleven_rib_pairs_under_a_cut_c7_are_not_named_confidently() -> None:
    """The held-out set's failure (labelling_set case_40): a chest CT whose top cuts C7 (21 of ~24 mm in view, no
    rib), T1-T11 bilateral ribs, T12 rib-free: the last rib alone named T11 'T12' with confidence. The cut C7 shows
    no rib pair, so the T1 anchor counts and disagrees with the last rib: every name uncertain."""
    levels = [V(v) for v in range(V.C7, V.L1 + 1)]
    bodies = [BodyFeatures(centroid_mm=(0.0, 0.0, -i * 24.0), height_mm=21.0 if lv == V.C7 else 24.0,
                           rib_left=V.T1 <= lv <= V.T11, rib_right=V.T1 <= lv <= V.T11,
                           thoracic_vote=1.0 if lv <= V.T12 else 0.2, cut_by_fov=lv == V.C7, cut_top=lv == V.C7)
              for i, lv in enumerate(levels)]
    res = label_bodies(bodies, sacrum_below=False)
    assert all(d.uncertain for d in res.decisions)
    assert "disagree" in (res.decisions[1].reason or "")
    # a sliver of C7 (a third of its height) cannot show that: no T1 anchor from it
    sliver = [bodies[0].__class__(**{**bodies[0].__dict__, "height_mm": 8.0}), *bodies[1:]]
    assert T1_ANCHOR not in label_bodies(sliver, sacrum_below=False).decisions[1].cues
