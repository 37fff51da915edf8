"""Cues that confirm (or fail to confirm) a level count, and whether the field of view can show a rib anchor.

A rib anchor says "this body has a rib, the one below has none".  The "none" is only evidence when the field of
view shows where that rib would be: a targeted spine reconstruction (90-200 mm field centred on the spine) cuts
the ribs a few centimetres from their heads, so a 12th rib can be outside it, or its stub too small to count.
Independent cues used to confirm a count (each names the first body's level value):
  * the network's thoracic/lumbar appearance (the vote transition sits where the count puts T12/L1);
  * the body-size progression (heights grow caudally; decisive only when the fit clearly prefers this count).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from service.domain.levels import VertebraLevel
from service.segmentation.label_spacing import TYPICAL_BODY_HEIGHT_MM, rejected_by_spacing, spacing_costs

if TYPE_CHECKING:
    from service.segmentation.labelling import BodyFeatures

RIB_FIELD_LATERAL_MM = 65.0
"""The field must reach this far left and right of the body centre for a rib-free body to count as rib-free: rib
heads, necks and tubercles (where rib attachment is measured, ribs.RIB_RING_MM) lie within 45 mm of the body
centre, even for a short 12th rib; 20 mm more shows the rib leaving that region, so a rib cut at the edge of the
field is not mistaken for no rib.  A 105 mm targeted field centred on the spine (~52 mm each side) fails."""
RIB_FIELD_POSTERIOR_MM = 50.0
"""... and this far posterior of the body centre (the costotransverse joints lie ~30-45 mm behind it)."""
VOTE_CUE_MARGIN = 0.3
"""The thoracic/lumbar appearance confirms a count when every other count within +-3 levels disagrees with the
votes by at least this much more (sum of |vote - thoracic name|; the T12 body voting 0.65 thoracic and L1 0.35
gives 0.3 against a shift by one)."""
HEIGHT_CUE_MARGIN = 2.0
"""The body-size progression confirms a count when every other count within +-3 levels costs at least this much
more (squared height residuals / (3 mm)^2: about two bodies each 3 mm further from their typical height)."""
SHIFTS = (-3, -2, -1, 1, 2, 3)

VOTE_CUE = "thoracic/lumbar appearance"
BILATERAL_RIB_CUE = "ribs on both sides, field wide enough to show them"
HEIGHT_CUE = "body size progression"

TYPICAL_HEIGHT_MM: dict[int, float] = {int(lv): h for lv, h in TYPICAL_BODY_HEIGHT_MM.items()
                                        if VertebraLevel.T1 <= lv <= VertebraLevel.L5}
"""Typical vertebral body heights (mm) T1-L5 by level value, for the size cue
(``label_spacing.TYPICAL_BODY_HEIGHT_MM``)."""


SMALL_RIB_FRACTION = 0.5
"""A body under the rib threshold whose larger side still reads at least this fraction of it carries a small rib
reading: a short or thin 12th rib cannot be told from a transverse process or the tip of the rib above read as
rib.  On the recorded phantom sets (labelling set 9, BMD set s20: `label_replay last-ribs`) the L1 under a
phantom T12 reads 0-834 mm3 (median 2; 5 of 102 at 350 or more; threshold 700); the real CPTAC chest's T12 (a short
rib on one side) reads 971 mm3 whole and 470-669 mm3 (larger side) in the 11 fields cut from it where it fell under
the threshold (`real_crops --features`), where the last rib then moved to T11."""


def small_rib_reading(body: BodyFeatures) -> float | None:
    """The larger side's rib volume (mm3) of a body read as rib-free when it is a small rib reading (see
    SMALL_RIB_FRACTION), else None."""
    larger = max(body.rib_left_mm3, body.rib_right_mm3)
    if body.rib_bearing or larger < SMALL_RIB_FRACTION * body.rib_threshold_mm3:
        return None
    return larger


def settle_small_rib(anchors: dict[str, int], dropped: dict[str, tuple[int, str]], t12_anchor: str,
                     alternative: int) -> None:
    """A last rib with a small rib reading below it allows two counts: the last rib-bearing body is T12 (the
    reading is a transverse process) or the body below is (a short 12th rib). A counted anchor (the first rib pair,
    the sacrum) that independently gives the first count confirms it, and the T12 anchor counts; one that gives
    the second makes the T12 anchor consistent with it without counting (its evidence is the small reading); with
    neither it disagrees with the other anchors or, alone, leaves a best guess. ``anchors`` (counted, name -> the
    level value of the first body) and ``dropped`` (name -> (value, reason)) are those of
    label_anchors.anchor_counts."""
    value, reason = dropped[t12_anchor]
    if value in anchors.values():
        anchors[t12_anchor] = value
        del dropped[t12_anchor]
    elif alternative in anchors.values():
        dropped[t12_anchor] = (alternative, reason)


def rib_field_shortfall(body: BodyFeatures) -> str | None:
    """None when the field of view shows this body's rib region on both sides; else how far it reaches (for a
    reason a radiologist reads, e.g. "52 mm each side of the spine").  Unmeasured extents (None) do not limit."""
    left, right, post = body.field_left_mm, body.field_right_mm, body.field_posterior_mm
    short_lr = [v for v in (left, right) if v is not None and v < RIB_FIELD_LATERAL_MM]
    short_p = post is not None and post < RIB_FIELD_POSTERIOR_MM
    if not short_lr and not short_p:
        return None
    parts = []
    if short_lr and left is not None and right is not None and abs(left - right) <= 10.0:
        parts.append(f"{min(left, right):.0f} mm each side of the spine")
    elif short_lr:
        parts.extend(f"{v:.0f} mm to the {side}" for side, v in (("left", left), ("right", right))
                     if v is not None and v < RIB_FIELD_LATERAL_MM)
    if short_p:
        parts.append(f"{post:.0f} mm behind the vertebral body centre")
    return ", ".join(parts)


def _vote_cost(bodies: list[BodyFeatures], pos: list[int], first_level: int) -> float:
    return sum(abs(b.thoracic_vote - (1.0 if first_level + p <= int(VertebraLevel.T12) else 0.0))
               for b, p in zip(bodies, pos, strict=True) if not b.cut_by_fov)


def votes_confirm(bodies: list[BodyFeatures], pos: list[int], first_level: int) -> bool:
    """The network's thoracic/lumbar appearance puts the transition where this count puts T12/L1 (the count must
    name at least one complete body on each side of it, else the votes cannot place it)."""
    names = [first_level + p for b, p in zip(bodies, pos, strict=True) if not b.cut_by_fov]
    if not any(v <= int(VertebraLevel.T12) for v in names) or not any(v > int(VertebraLevel.T12) for v in names):
        return False
    cost = _vote_cost(bodies, pos, first_level)
    return all(_vote_cost(bodies, pos, first_level + s) >= cost + VOTE_CUE_MARGIN for s in SHIFTS)


def votes_contradict(bodies: list[BodyFeatures], pos: list[int], first_level: int) -> bool:
    """The network's thoracic/lumbar appearance fits another count (within +-3 levels) clearly better."""
    cost = _vote_cost(bodies, pos, first_level)
    return any(_vote_cost(bodies, pos, first_level + s) <= cost - VOTE_CUE_MARGIN for s in SHIFTS)


def _height_cost(bodies: list[BodyFeatures], pos: list[int], first_level: int) -> float:
    return sum((b.height_mm - TYPICAL_HEIGHT_MM.get(first_level + p, 25.0)) ** 2 / 9.0
               for b, p in zip(bodies, pos, strict=True) if not b.cut_by_fov)


def heights_confirm(bodies: list[BodyFeatures], pos: list[int], first_level: int) -> bool:
    """The heights of the complete bodies fit this count clearly better than a count shifted by 1-3 levels."""
    if sum(not b.cut_by_fov for b in bodies) < 3:
        return False
    cost = _height_cost(bodies, pos, first_level)
    return all(_height_cost(bodies, pos, first_level + s) >= cost + HEIGHT_CUE_MARGIN for s in SHIFTS
               if int(VertebraLevel.C1) <= first_level + s and first_level + s + pos[-1] <= int(VertebraLevel.S1))


def confirming_cues(bodies: list[BodyFeatures], pos: list[int], first_level: int) -> tuple[str, ...]:
    """The independent (non-anchor) cues that put the count where ``first_level`` does."""
    out = []
    if votes_confirm(bodies, pos, first_level):
        out.append(VOTE_CUE)
    if heights_confirm(bodies, pos, first_level):
        out.append(HEIGHT_CUE)
    return tuple(out)


ANCHOR_VOTE_MARGIN = 0.5
"""When anchors disagree, another anchor replaces the rib anchor only if its names disagree with the thoracic/lumbar
vote by at least this much less (sum over bodies of |vote - thoracic name|; one body fully on the other side = 1)."""


APPEARANCE_OVERRULES_MARGIN = 0.8
"""The thoracic/lumbar appearance overrules a count it disagrees with only when it fits the votes better by at least
this much (one complete body voting 0.9 or more on the other side of the transition): a rib count the field of view
cannot confirm, where no anchor counts, and the count two anchors share against a third. The appearance is the weaker
cue: on the recorded phantom sets (``label_replay transitions``: BMD set s20, labelling sets 9 and 10) the last body
voting thoracic (``vote_transition``) is the reference T12 in 55 of 133 cases whose votes split once and cleanly and
one level off in 73, in whole and targeted fields alike, and the votes partly follow the ribs. The rib count has a
rib seen on the body above the rib-free one. With this margin and ``ribs_stay_thoracic`` the best guesses of the
targeted fields of labelling sets 9 and 10 (tuning: ``label_replay replay``) went from 76.9 % and 57.6 % of the
complete levels identified to 80.1 % and 78.3 %; 12 of the 14 cases still named wrong have 11 or 13 rib pairs, which
no count from a rib names right. Set 10's whole fields went from 93.0 % to 97.3 % (case_50: the first rib pair and
the sacrum agree, the votes favoured the last rib by 0.58)."""


def anchor_agreeing_with_votes(anchors: dict[str, int], bodies: list[BodyFeatures], pos: list[int],
                               default: str | None = None, margin: float = ANCHOR_VOTE_MARGIN) -> str:
    """The anchor whose count the thoracic/lumbar appearance fits clearly better (by ``margin``) than the
    ``default``'s, else the default (given, or the rib anchor T12)."""
    def disagreement(first_level: int) -> float:
        return _vote_cost(bodies, pos, first_level)

    if default is None:
        default = next((k for k in anchors if k.startswith("T12")), next(iter(anchors)))
    best = min(anchors, key=lambda k: disagreement(anchors[k]))
    if disagreement(anchors[best]) <= disagreement(anchors[default]) - margin:
        return best
    return default


def vote_transition(bodies: list[BodyFeatures]) -> int | None:
    """The index of the last body voting thoracic where the votes split once and cleanly (every body above votes
    thoracic, > 0.5, every body below lumbar), else None: where the appearance alone would put T12."""
    votes = [b.thoracic_vote for b in bodies]
    trans = [i for i in range(len(votes) - 1) if votes[i] > 0.5 >= votes[i + 1]]
    if len(trans) != 1 or not all(v > 0.5 for v in votes[: trans[0] + 1]) or any(v > 0.5 for v in votes[trans[0] + 1:]):
        return None
    return trans[0]


def ribs_stay_thoracic(first_level: int, bodies: list[BodyFeatures], pos: list[int]) -> int:
    """The count moved up, where it names a body with a rib on both sides below T12, until that body is T12: a rib
    pair is thoracic (a rib pair on L1, i.e. 13 rib pairs, is the rare variant).  For the appearance's best guess:
    in a targeted field the network's vote transition can fall a level or two below the last visible rib pair
    (recorded targeted phantom fields: bodies with ribs of 2000-4000 mm3 a side named L1 or L2 by the votes)."""
    paired = [p for b, p in zip(bodies, pos, strict=True) if b.rib_left and b.rib_right]
    if not paired:
        return first_level
    return min(first_level, int(VertebraLevel.T12) - paired[-1])


def best_height_fit(bodies: list[BodyFeatures], pos: list[int], votes: list[float]) -> int:
    """The best guess where no anchor or appearance gives a count, within T1..L5: the body sizes, votes and ribs.

    The body sizes are read from the spacing of the centroids (``label_spacing``) where two or more pairs of
    neighbouring complete bodies are in view, else from the bodies' extent along the scanner axis. The extent is
    inflated by the spine's tilt and the coarse grid: on the real CPTAC chest's middle windows (T4-T10, every body
    rib-bearing and voting thoracic) it named the bodies three levels low in every cut, where the spacing names them
    right (``real_crops``: best guesses equal to the whole scan's names 145 -> 170 of 276). Counts the spacing
    rejects are not tried."""
    heights = [b.height_mm for b in bodies]
    best, best_cost = int(VertebraLevel.T12) - pos[-1], float("inf")
    spacing = spacing_costs(bodies, pos)
    # the model knows T1-L5 context (phantoms cover C7-S1): guess within T1..L5
    for first in range(int(VertebraLevel.T1), int(VertebraLevel.L5) + 1 - pos[-1]):
        if rejected_by_spacing(spacing, first):
            continue
        cost = spacing.get(first, 0.0)
        for i, h in enumerate(heights):
            v = first + pos[i]
            # weak prior: short scans of the spine are mostly centred near the thoracolumbar junction
            cost += 0.3 * abs(v - int(VertebraLevel.T12)) / 12.0
            if bodies[i].cut_by_fov:
                continue
            if first not in spacing:
                cost += (h - TYPICAL_HEIGHT_MM.get(v, 25.0)) ** 2 / 9.0
            # group vote agreement
            is_thoracic = v <= int(VertebraLevel.T12)
            cost += 4.0 * abs(votes[i] - (1.0 if is_thoracic else 0.0))
            if bodies[i].rib_bearing and not is_thoracic:
                cost += 10.0
            if not bodies[i].rib_bearing and 9 <= v <= 18 and not bodies[i].cut_by_fov:
                cost += 10.0
        if cost < best_cost:
            best, best_cost = first, cost
    return best


T1_PAIR_FRACTION = 0.65
"""A complete body with a rib on both sides is not T1 when its weaker side carries less than this fraction of the
weaker side of the rib pair directly below (and less than T1_TYPICAL_FRACTION of the scan's typical pair): it is
C7, whose ring (ribs.RIB_RING_MM within its own height) catches the head and neck of the first rib, or a
rudimentary cervical rib.  Held-out set 2 whole fields (0.625-5 mm slices): complete C7s 0.44-0.76 of T1's volume,
T1s 0.60-1.15 of T2's; this ratio alone does not separate them."""
T1_TYPICAL_FRACTION = 0.55
"""... and less than this fraction of the median weaker side of the scan's complete rib pairs, the ratio that
separates them (set 2: C7 0.37-0.47 and one 0.63, which stays a pair and gives no T1 anchor; T1 0.63-0.97; a T3
above a missed T4 0.67).  Both ratios must call the pair weak."""


def is_complete_pair(body: BodyFeatures) -> bool:
    """A body not cut by the field with a rib on both sides."""
    return body.rib_left and body.rib_right and not body.cut_by_fov


def pair_mm3(body: BodyFeatures) -> float:
    """The weaker side's rib volume."""
    return min(body.rib_left_mm3, body.rib_right_mm3)


def typical_pair_mm3(bodies: list[BodyFeatures]) -> float:
    """Median weaker-side rib volume of the complete rib pairs (0 when none or not measured)."""
    pairs = sorted(pair_mm3(b) for b in bodies if is_complete_pair(b))
    return pairs[len(pairs) // 2] if pairs else 0.0


def weak_pair_above(upper: BodyFeatures, lower: BodyFeatures, typical_mm3: float) -> bool:
    """``upper`` (complete) carries a rib pair much smaller than ``lower``'s and than the scan's typical pair
    (T1_PAIR_FRACTION, T1_TYPICAL_FRACTION; never when volumes were not measured): C7 reading the first rib's
    head, or a cervical rib."""
    upper_mm3 = pair_mm3(upper)
    return (not upper.cut_by_fov and pair_mm3(lower) > 0.0 and typical_mm3 > 0.0
            and upper_mm3 < T1_PAIR_FRACTION * pair_mm3(lower) and upper_mm3 < T1_TYPICAL_FRACTION * typical_mm3)


def first_rib_pair(bodies: list[BodyFeatures]) -> int | None:
    """Index of the T1 candidate: the first complete body with a rib on both sides.  The first rib pair is the
    largest of the upper ribs and always bilateral; a body cut by the top of the field (its rib region partly
    outside) or a one-sided "rib" (a cervical transverse process, the clavicle or the first rib passing beside C6/C7
    on a coarse grid) does not count, nor a pair much smaller than the pair below it (``weak_pair_above``)."""
    first = next((i for i, b in enumerate(bodies) if is_complete_pair(b)), None)
    if first is not None and first + 1 < len(bodies) and is_complete_pair(bodies[first + 1]) and weak_pair_above(
            bodies[first], bodies[first + 1], typical_pair_mm3(bodies)):
        return first + 1
    return first


C7_MIN_VISIBLE_FRACTION = 0.6
"""A body above the first rib pair that the top of the field cuts still shows whether it carries a rib pair when
at least this fraction of the first rib-bearing body's height is in view: rib heads meet the upper half of their
body, and attachment is read in a ring within the body's own visible height (ribs.RIB_RING_MM)."""


def shows_no_rib_pair(above: BodyFeatures, first: BodyFeatures, typical_mm3: float = 0.0) -> bool:
    """The body above the first rib pair shows that it has no rib pair: it is in view (complete, or cut by the top of
    the field with most of its height visible) and carries no rib on at least one side.  A one-sided "rib" there is
    a cervical rib or the clavicle / first rib passing beside it, and so is a complete pair much smaller than the
    first pair's (``weak_pair_above``): either way the first pair below it is T1's."""
    if above.rib_left and above.rib_right and not weak_pair_above(above, first, typical_mm3):
        return False
    if not above.cut_by_fov:
        return True
    return above.cut_top and not above.cut_bottom and above.height_mm >= C7_MIN_VISIBLE_FRACTION * first.height_mm


def rib_count_variant(t1_level: int | None, l5_level: int | None, t12_level: int | None,
                      bodies: list[BodyFeatures], pos: list[int]) -> str | None:
    """When the first rib pair (T1) and the sacrum (L5) put the count at the same place and the last rib (T12) one
    level off, 11 or 13 rib pairs explain it: the reason for naming with confidence, or None.  A third cue must
    side with the pair: the thoracic/lumbar appearance fits their count better than the last rib's by
    ANCHOR_VOTE_MARGIN.  Without it the same anchors arise from a cervical rib pair (or a missed first rib) with a
    transitional lumbosacral vertebra in the same direction, and 12 rib pairs."""
    if t1_level is None or l5_level is None or t12_level is None:
        return None
    if t1_level != l5_level or abs(t12_level - t1_level) != 1:
        return None
    if _vote_cost(bodies, pos, t12_level) - _vote_cost(bodies, pos, t1_level) < ANCHOR_VOTE_MARGIN:
        return None
    pairs = 11 if t12_level > t1_level else 13
    return (f"{pairs} rib pairs: the first rib pair and the sacrum agree, the last rib is one level off, and the "
            "thoracic/lumbar appearance sides with the first rib pair and the sacrum")
