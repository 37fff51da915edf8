"""Conventional anatomical labelling of detected vertebral bodies, with quality checks (after Pan 2020).

Input: bodies ordered cranial -> caudal with per-body features measured on a canonical grid (+L, +P, +S).
Anchors (each implies the level of every body):
  * T12 anchor: the last rib-bearing body, provided a body without ribs is seen below it (counting up from T12
    and down from L1, as in Pan 2020);
  * L5 anchor: the lowest body sits directly on the sacrum (and is not cut by the field of view), in a field that
    reaches far enough below it to show the sacrum (label_anchors.SACRUM_BELOW_DISC_MM);
  * T1 anchor: the first rib-bearing body, provided a body without ribs is seen above it (C7);
  * group anchor: the transition between bodies the network calls thoracic and lumbar (weaker, used only when
    no rib/sacrum anchor exists, and then reported as uncertain).
An anchor counts only when the field of view can show it: a rib-free body is evidence of "no rib" only when the
field reaches far enough around it (label_cues.RIB_FIELD_LATERAL_MM); else the anchor is dropped with a reason.
Nor does the T12 anchor stand on a body below the last rib that reads a small rib (label_cues.SMALL_RIB_FRACTION):
a short 12th rib cannot be told from a transverse process, so the last rib counts only where the first rib pair
or the sacrum independently gives its count.
A name is confident only when two independent cues agree: two anchors, or one anchor and the network's
thoracic/lumbar appearance or the body-size progression (label_cues); a single cue -> uncertain.  A lone rib anchor
with a rib on both sides stands alone only when its count puts neither the first rib pair nor the lumbosacral
junction in the field of view (there, that end must confirm it: 11 or 13 rib pairs shift the last rib's count); a
last-rib count that puts the first rib pair in the field needs that pair's confirmation whatever else agrees (the
appearance follows the ribs).
Checks: anchors must agree (else 11/13 rib pairs or a transitional lumbosacral vertebra: all levels uncertain),
except that the first rib pair and the sacrum agreeing, the last rib one level off and the thoracic/lumbar appearance
siding with the pair name confidently (11/13 rib pairs, label_cues.rib_count_variant);
the spacing between neighbouring bodies must be regular (a gap means a missed body: the count across it is
uncertain); no anchor at all (short field of view) -> best guess from body sizes (the spacing of the body centroids,
label_spacing) and the appearance, reported uncertain.
A best guess (every uncertain name) never follows a count that the spacing of the body centroids contradicts by
several levels (label_spacing: thoracic bodies ~21 mm apart are not named lumbar ones ~35 mm apart).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from service.domain.levels import VertebraLevel
from service.segmentation.label_anchors import (
    ANCHOR_LEVEL,
    FIRST_PAIR_END,
    L5_ANCHOR,
    T1_ANCHOR,
    T12_ANCHOR,
    anchor_counts,
    bilateral_rib_anchor,
    other_end_in_view,
    t1_from_weak_pair,
)
from service.segmentation.label_cues import (
    ANCHOR_VOTE_MARGIN,
    APPEARANCE_OVERRULES_MARGIN,
    BILATERAL_RIB_CUE,
    VOTE_CUE,
    anchor_agreeing_with_votes,
    best_height_fit,
    confirming_cues,
    rib_count_variant,
    rib_field_shortfall,
    ribs_stay_thoracic,
    vote_transition,
    votes_contradict,
)
from service.segmentation.label_gaps import across_every_gap, gap_missing
from service.segmentation.label_reach import undetected_end
from service.segmentation.label_spacing import spacing_filter

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BodyFeatures:
    centroid_mm: tuple[float, float, float]
    """Canonical millimetres (+L, +P, +S)."""
    height_mm: float
    rib_left: bool
    rib_right: bool
    thoracic_vote: float
    """Mean thoracic-group probability share of the body (0 lumbar .. 1 thoracic); 0.5 when unknown."""
    cut_by_fov: bool = False
    rib_left_mm3: float = 0.0
    rib_right_mm3: float = 0.0
    cut_top: bool = False
    cut_bottom: bool = False
    field_left_mm: float | None = None
    """How far the reconstructed field of view reaches to the left of the body centre (mm); None: not measured."""
    field_right_mm: float | None = None
    field_posterior_mm: float | None = None
    field_above_mm: float | None = None
    """How far the scan reaches above the body centre along the spine's axis (to the grid's top edge, mm); None:
    not measured."""
    field_below_mm: float | None = None
    """... and below it (to the grid's bottom edge, mm)."""
    rib_threshold_mm3: float = 700.0
    """The rib volume a side needed to count as rib-bearing in this scan (features.MIN_RIB_ATTACH_MM3 or more)."""

    @property
    def rib_bearing(self) -> bool:
        return self.rib_left or self.rib_right


@dataclass(frozen=True)
class LevelDecision:
    level: VertebraLevel | None
    uncertain: bool
    reason: str | None
    cues: tuple[str, ...] = ()
    """The cues that put this body at this level (anchors, appearance, size progression)."""


@dataclass
class LabellingResult:
    decisions: list[LevelDecision]
    notes: list[str] = field(default_factory=list)


def body_positions(missing: list[int]) -> list[int]:
    """The position of each body counting the bodies presumed missed in the gaps (``label_gaps.gap_missing``)."""
    pos = [0]
    for m in missing:
        pos.append(pos[-1] + 1 + m)
    return pos


def label_bodies(bodies: list[BodyFeatures], sacrum_below: bool) -> LabellingResult:
    """Name each body (cranial -> caudal order).

    A name is confident only when two independent cues agree (two anchors, or an anchor and the thoracic/lumbar
    appearance or the body-size progression); a single cue, disagreeing cues or no anchor: uncertain."""
    n = len(bodies)
    notes: list[str] = []
    if n == 0:
        return LabellingResult([], ["no vertebral body found"])
    missing = gap_missing(bodies)
    pos = body_positions(missing)
    if any(missing):
        notes.append(f"gap in the detected bodies: {sum(missing)} body(ies) presumably missed")
    anchors, unseen = anchor_counts(bodies, pos, sacrum_below)
    dropped = [reason for _, reason in unseen.values()]
    notes.extend(dropped)
    values = set(anchors.values())
    # a count the field of view (or a small rib reading) cannot confirm still disagrees with a counted anchor
    # when it differs from it
    stray = {k: v for k, (v, _) in unseen.items() if v not in values}
    if len(values) == 1 and stray:
        return LabellingResult(_disagreeing_anchors(bodies, pos, {**anchors, **stray}, notes, dropped, set(stray)),
                               notes)
    if len(values) == 1:
        decisions = _agreeing_anchors(bodies, pos, anchors, dropped, notes)
        if any(missing):
            crossing = across_every_gap(missing, pos, [int(ANCHOR_LEVEL[k]) - v for k, v in anchors.items()])
            decisions = [LevelDecision(d.level, True, "a body between this one and the anchor was not detected",
                                       d.cues) if cross and d.level is not None else d
                         for d, cross in zip(decisions, crossing, strict=True)]
        return LabellingResult(decisions, notes)
    variant = None if any(missing) else rib_count_variant(
        anchors.get(T1_ANCHOR), anchors.get(L5_ANCHOR), anchors.get(T12_ANCHOR), bodies, pos)
    if variant is not None:  # three cues against one: 11 or 13 rib pairs
        notes.append(f"anchors: {', '.join(anchors)}; {variant}")
        cues = (T1_ANCHOR, L5_ANCHOR, VOTE_CUE)
        return LabellingResult([_decide(anchors[T1_ANCHOR] + p, False, None, cues) for p in pos], notes)
    if len(values) > 1:
        return LabellingResult(_disagreeing_anchors(bodies, pos, anchors, notes), notes)
    return LabellingResult(_without_anchor(bodies, pos, unseen, notes), notes)


def _agreeing_anchors(bodies: list[BodyFeatures], pos: list[int], anchors: dict[str, int], dropped: list[str],
                      notes: list[str]) -> list[LevelDecision]:
    """One count from every anchor: confident when a second independent cue agrees, else uncertain."""
    first_level = next(iter(anchors.values()))
    cues = (*anchors, *confirming_cues(bodies, pos, first_level))
    # a lone anchor that the network's thoracic/lumbar appearance contradicts is never confident
    contradicted = len(anchors) == 1 and votes_contradict(bodies, pos, first_level)
    # a lone anchor whose count puts the other end in the field, which does not confirm it: 11 or 13 rib pairs
    # cannot be excluded. Whatever else agrees when that end is the first rib pair: the appearance follows the ribs
    # (an 11th rib pair makes T12 look lumbar) and cannot tell a rib-count variant (cut_top set, session 22)
    end = other_end_in_view(bodies, pos, first_level, cues[0]) if len(anchors) == 1 else None
    unconfirmed_end = end if len(cues) == 1 or end == FIRST_PAIR_END else None
    if len(cues) == 1 and bilateral_rib_anchor(bodies, cues[0]) and not contradicted and unconfirmed_end is None:
        cues = (*cues, BILATERAL_RIB_CUE)
    notes.append("anchors: " + ", ".join(anchors) + "; cues agreeing: " + ", ".join(cues))
    # a lone anchor whose count puts the other end of the spine wholly in the scan, where no body was detected:
    # the detected column is not the scan's column, whatever else agrees (label_reach)
    missed = undetected_end(bodies, pos, first_level, ANCHOR_LEVEL[cues[0]]) if len(anchors) == 1 else None
    if len(cues) >= 2 and not contradicted and missed is None and unconfirmed_end is None:
        return [_decide(first_level + p, False, None, cues) for p in pos]
    reasons = []
    if contradicted:
        reasons.append(f"the thoracic/lumbar appearance of the vertebrae contradicts the count from {cues[0]}")
    if missed is not None:
        reasons.append(f"the scan shows {missed} beyond the detected vertebrae, but no vertebral body was detected "
                       f"there: it cannot confirm the count from {cues[0]}")
    if unconfirmed_end is not None:
        reasons.append(f"the field of view reaches {unconfirmed_end}, which does not confirm the count from "
                       f"{cues[0]}: 11 or 13 rib pairs cannot be excluded")
    if cues[0] == T1_ANCHOR and t1_from_weak_pair(bodies):
        reasons.append("the body above the first rib pair carries a small rib pair: whether it is C7 reading the "
                       "first rib's head or T1 with a short first rib pair rests on rib volume alone")
    reason = "; ".join(reasons) or (f"a single cue places the count ({cues[0]}); neither the thoracic/lumbar "
                                    "appearance nor the body sizes confirm it")
    reason = "; ".join([*dropped, reason])
    notes.append(reason)
    return [_decide(first_level + p, True, reason, cues) for p in pos]


def _disagreeing_anchors(bodies: list[BodyFeatures], pos: list[int], anchors: dict[str, int],
                         notes: list[str], dropped: list[str] | None = None,
                         unconfirmed: set[str] | None = None) -> list[LevelDecision]:
    """Disagreeing anchors: 11 or 13 rib pairs, a transitional lumbosacral vertebra, or one anchor misread.
    Every level is reported uncertain. The names follow the count two anchors share against a third (the first rib
    pair and the sacrum against the last rib: 11 or 13 rib pairs; held-out labelling set 4 case_20) unless the
    thoracic/lumbar appearance fits another by APPEARANCE_OVERRULES_MARGIN: the network's votes partly follow the
    ribs (labelling set 10 case_50, 13 rib pairs: the rib-bearing L1 votes 0.79 thoracic, 0.58 for the last rib's
    count).  Else the anchor whose count the appearance fits better by ANCHOR_VOTE_MARGIN, else the first rib pair's
    count against the last rib's (the 12th rib is the variable one: a hypoplastic or absent 12th rib or a lumbar rib
    is far commoner than a cervical rib pair; held-out sets 4 and 6 case_10 and case_40, chests with 11 rib pairs).
    The sacrum's count against the last rib's (no first rib pair; session 23), unless the appearance fits the last
    rib's by APPEARANCE_OVERRULES_MARGIN (it follows the ribs, so it is no independent vote for them): the last rib
    is read from the 12th rib, the most variable rib and the hardest to read (a short 12th rib under the rib
    threshold, an L1 transverse process over it), the sacrum is large and errs only where the segmenter counts a
    transitional lumbosacral vertebra. On the recorded sets 9-14 and s20 the last rib misread its own body in 34 of
    279 counts, the sacrum in 4 of 181 (``anchor_errors``). Until session 23 the names followed the last rib
    (Pan 2020 counts from T12). A sacrum count the field of view cannot confirm (``unconfirmed``: the anchors that
    did not count, ``label_anchors.sacrum_field_shortfall``) has no such precedence."""
    counts = list(anchors.values())
    shared = next((k for k, v in anchors.items() if counts.count(v) >= 2 and len(set(counts)) > 1), None)
    if shared is None and T1_ANCHOR in anchors and T12_ANCHOR in anchors:
        shared = T1_ANCHOR
    # the sacrum against the last rib: the sacrum by default, the appearance overruling it only clearly
    sacrum_first = (shared is None and L5_ANCHOR in anchors and T12_ANCHOR in anchors
                    and L5_ANCHOR not in (unconfirmed or set()))
    if sacrum_first:
        shared = L5_ANCHOR
    two_agree = shared is not None and counts.count(anchors[shared]) >= 2
    margin = APPEARANCE_OVERRULES_MARGIN if two_agree or sacrum_first else ANCHOR_VOTE_MARGIN
    key = anchor_agreeing_with_votes(anchors, bodies, pos, default=shared, margin=margin)
    kept, rejected = spacing_filter(anchors, bodies, pos)
    if kept and key not in kept:  # a count several levels off (a misread anchor): the spacing rejects it
        key = anchor_agreeing_with_votes(kept, bodies, pos, default=next(iter(kept)), margin=ANCHOR_VOTE_MARGIN)
    else:
        rejected = []
    first_level = anchors[key]
    detail = ", ".join(f"{k} -> first body {_name(v)}" for k, v in anchors.items())
    reason = "anchors disagree (" + detail + ")"
    if L5_ANCHOR in anchors and T12_ANCHOR in anchors:
        n_lumbar_like = anchors[T12_ANCHOR] - anchors[L5_ANCHOR] + 5
        reason += (f": {n_lumbar_like} rib-free vertebrae above the sacrum; transitional lumbosacral vertebra "
                   "or 11/13 rib pairs")
    else:
        reason += ": 11 or 13 rib pairs"
    reason = "; ".join([*(dropped or []), reason, *rejected])
    notes.append(reason)
    cues = (key, *confirming_cues(bodies, pos, first_level))
    return [_decide(first_level + p, True, reason, cues) for p in pos]


def _without_anchor(bodies: list[BodyFeatures], pos: list[int], unseen: dict[str, tuple[int, str]],
                    notes: list[str]) -> list[LevelDecision]:
    """No rib/sacrum anchor that counts: a best guess, always uncertain.  Candidates: the count of a rib anchor the
    field of view cannot confirm and the network's thoracic/lumbar groups (the rib count unless the groups fit
    clearly better); else body heights."""
    votes = [b.thoracic_vote for b in bodies]
    candidates = {k: v for k, (v, _) in unseen.items()}
    last_thoracic = vote_transition(bodies)
    if last_thoracic is not None:
        raw = int(VertebraLevel.T12) - pos[last_thoracic]
        candidates[VOTE_CUE] = ribs_stay_thoracic(raw, bodies, pos)
    candidates, rejected = spacing_filter(candidates, bodies, pos)
    if candidates:
        key = anchor_agreeing_with_votes(candidates, bodies, pos, margin=APPEARANCE_OVERRULES_MARGIN)
        first_level = candidates[key]
        cues = tuple(k for k, v in candidates.items() if v == first_level)
        reason = ("no rib or sacrum anchor in the field of view; named from the thoracic/lumbar appearance"
                  if key == VOTE_CUE else f"named from the {key} count, which this scan cannot confirm")
        if key == VOTE_CUE and first_level != raw:
            reason += ", moved up to keep the last rib pair in view thoracic"
    else:
        first_level = best_height_fit(bodies, pos, votes)
        reason = "no anchor in the field of view (too short to see the last rib or the sacrum); best guess"
        cues = ("best guess from body sizes",)
    field = [r for _, r in unseen.values()]
    if not field:
        short = next((s for b in bodies if not b.rib_bearing and (s := rib_field_shortfall(b)) is not None), None)
        if short is not None:
            field.append(f"field of view too narrow ({short}) to see the ribs")
    reason = "; ".join([*field, *rejected, reason])
    notes.append(reason)
    return [_decide(first_level + p, True, reason, cues) for p in pos]


def _name(v: int) -> str:
    return VertebraLevel(v).name if 1 <= v <= 25 else f"level {v}"


def _decide(v: int, uncertain: bool, reason: str | None, cues: tuple[str, ...] = ()) -> LevelDecision:
    if not 1 <= v <= 25:
        return LevelDecision(None, True, reason or "count runs outside C1-S1", cues)
    return LevelDecision(VertebraLevel(v), uncertain, reason if uncertain else None, cues)
