"""The anchors of the vertebral count: which body each names, whether the field of view can show it, and when a
lone one stands alone (``labelling`` weighs them).

  * T12 anchor: the last rib-bearing body, provided a body without ribs is seen below it (Pan 2020);
  * T1 anchor: the first rib-bearing body, provided a body without ribs is seen above it (C7);
  * L5 anchor: the lowest body sits directly on the sacrum (and is not cut by the field of view), and the field
    reaches far enough below it to show the sacrum (``sacrum_field_shortfall``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from service.domain.levels import VertebraLevel
from service.segmentation.label_cues import (
    first_rib_pair,
    rib_field_shortfall,
    settle_small_rib,
    shows_no_rib_pair,
    small_rib_reading,
    typical_pair_mm3,
)

if TYPE_CHECKING:
    from service.segmentation.labelling import BodyFeatures

T12_ANCHOR = "T12 (last rib-bearing body)"
T1_ANCHOR = "T1 (first rib-bearing body)"
L5_ANCHOR = "L5 (body on the sacrum)"
ANCHOR_LEVEL = {T12_ANCHOR: VertebraLevel.T12, T1_ANCHOR: VertebraLevel.T1, L5_ANCHOR: VertebraLevel.L5}
"""The level each anchor names."""


def anchor_counts(bodies: list[BodyFeatures], pos: list[int], sacrum_below: bool
                  ) -> tuple[dict[str, int], dict[str, tuple[int, str]]]:
    """(anchor name -> implied level value of position 0, and for anchors the field of view cannot show: name ->
    (the value they would imply, the reason they do not count))."""
    n = len(bodies)
    ribs = [b.rib_bearing for b in bodies]
    anchors: dict[str, int] = {}
    dropped: dict[str, tuple[int, str]] = {}
    t12_alternative: int | None = None  # a small rib reading below the last rib: the count if that body is T12
    rib_idx = [i for i, r in enumerate(ribs) if r]
    if rib_idx:
        last = rib_idx[-1]
        # the pair must not be a slab through both (upper cut at the top, lower cut at the bottom): such a slab
        # cannot show that the lower body has no ribs; nor a field too narrow to show where its rib would be
        if last < n - 1 and not any(ribs[last + 1:]) and not (bodies[last].cut_top and bodies[last + 1].cut_bottom):
            short = rib_field_shortfall(bodies[last + 1])
            small = small_rib_reading(bodies[last + 1])
            value = int(VertebraLevel.T12) - pos[last]
            if short is not None:
                dropped[T12_ANCHOR] = (value, f"field of view too narrow ({short}) to see whether T12 carries a rib")
            elif small is not None:
                dropped[T12_ANCHOR] = (value, f"the vertebra below the last rib-bearing one shows a small rib-like "
                                              f"structure ({small:.0f} mm3): a short 12th rib cannot be told from a "
                                              f"transverse process, so which vertebra is T12 is uncertain")
                t12_alternative = int(VertebraLevel.T12) - pos[last + 1]
            else:
                anchors[T12_ANCHOR] = value
        first = first_rib_pair(bodies)
        above = bodies[first - 1] if first is not None and first > 0 else None
        typical = typical_pair_mm3(bodies)
        if first is not None and above is not None and shows_no_rib_pair(above, bodies[first], typical):
            short = rib_field_shortfall(above)
            value = int(VertebraLevel.T1) - pos[first]
            if short is None:
                anchors[T1_ANCHOR] = value
            else:
                dropped[T1_ANCHOR] = (value, f"field of view too narrow ({short}) to see whether C7 carries a rib")
    if sacrum_below and not bodies[-1].cut_by_fov:
        value = int(VertebraLevel.L5) - pos[-1]
        short = sacrum_field_shortfall(bodies[-1])
        if short is None:
            anchors[L5_ANCHOR] = value
        else:
            dropped[L5_ANCHOR] = (value, f"the field of view ends {short:.0f} mm below the centre of the lowest "
                                         "vertebra: too close to tell the sacrum from an L5 cut by the field")
    if t12_alternative is not None:
        settle_small_rib(anchors, dropped, T12_ANCHOR, t12_alternative)
    return anchors, dropped



def bilateral_rib_anchor(bodies: list[BodyFeatures], anchor: str) -> bool:
    """A rib anchor whose rib-bearing body carries a rib on both sides (its rib-free neighbour's field was checked
    by ``anchor_counts``): a rib on each side is two observations, where a one-sided "rib" may be a transverse process
    or a stray stub.  Such an anchor stands alone unless the thoracic/lumbar appearance contradicts it."""
    rib_idx = [i for i, b in enumerate(bodies) if b.rib_bearing]
    if anchor == T12_ANCHOR:
        body = bodies[rib_idx[-1]]
    elif anchor == T1_ANCHOR:
        first = first_rib_pair(bodies)
        # "no rib pair" on a body the top of the field cuts rests on a part of it (cut_top sets: a T1 cut at the top
        # loses its rib heads first and read no pair in 12 of 44), so such an anchor does not stand alone
        if first is None or t1_from_weak_pair(bodies) or (first > 0 and bodies[first - 1].cut_by_fov):
            return False
        body = bodies[first]
    else:
        return False
    return body.rib_left and body.rib_right


def t1_from_weak_pair(bodies: list[BodyFeatures]) -> bool:
    """The body above the first rib pair carries a (small) pair itself, so T1 was told from it by rib volume alone:
    C7's ring catching the first rib's head, or a short first rib pair on T1.  The recorded features of labelling
    set 7 and BMD set s11 (``label_replay first-pairs``) give C7s 0.34-0.55 of the scan's typical pair, but also two
    T1s (0.38, 0.47; s11 case_19 named one level off from the second) and a T2 (0.37): a T1 anchor found so does not
    stand alone."""
    first = first_rib_pair(bodies)
    return first is not None and first > 0 and bodies[first - 1].rib_left and bodies[first - 1].rib_right


SACRUM_BELOW_DISC_MM = 45.0
"""The L5 anchor counts only when the field of view reaches at least this far below the lowest body's lower
endplate (its centre less half its height), i.e. past the lumbosacral disc (~10 mm) and more than the height of one
segment (~30 mm) into what the segmenter calls sacrum: a body cut by the bottom of the field reads as sacrum too.
Labelling set 16 (seed 16031) narrow case_19: a field ending 55 mm below the centre of L4 (33 mm tall), in the upper
part of L5; the cut L5 was taken for the sacrum and the count was one level off. Every whole field of sets 15 and 16
with a sacrum reached 72 mm or more below the centre of its L5 (30-48 mm tall)."""


def sacrum_field_shortfall(lowest: BodyFeatures) -> float | None:
    """How far (mm) the field reaches below the lowest body's centre when that is too close to show the sacrum
    (SACRUM_BELOW_DISC_MM), else None (also when not measured)."""
    below = lowest.field_below_mm
    if below is None or below >= 0.5 * lowest.height_mm + SACRUM_BELOW_DISC_MM:
        return None
    return float(below)


FIRST_PAIR_REACH = VertebraLevel.T2
"""A count from the last rib that names a body this level or higher puts the first rib pair in the field of view
(with 11 rib pairs it names the real T1 "T2", the real C7 "T1"): the first pair should then confirm it."""
FIRST_PAIR_END = "the first rib pair"
SACRUM_REACH = VertebraLevel.L5
"""... and one that names a body this level or lower, not cut at its bottom, puts the sacrum in the field."""


def other_end_in_view(bodies: list[BodyFeatures], pos: list[int], first_level: int, anchor: str) -> str | None:
    """A lone rib anchor's count puts the other end of the rib cage or the sacrum in the field of view, yet that
    end gave no agreeing anchor: what it reaches (for the reason), else None.  A rib pair misread on C7 (the first
    rib's head beside it) hides the first pair; a 12th rib missing from an 11-pair patient shifts the count from the
    last rib by one.  Held-out labelling set 5: two chests with 11 rib pairs, C7 in view and read as rib-bearing,
    were named one level off from a lone bilateral last rib."""
    names = [first_level + p for p in pos]
    if anchor == T12_ANCHOR and names[0] <= int(FIRST_PAIR_REACH) + _top_may_hold_two(bodies):
        return FIRST_PAIR_END
    if anchor == T1_ANCHOR and names[-1] > int(VertebraLevel.T12):
        return "the last rib"
    if anchor in (T12_ANCHOR, T1_ANCHOR) and any(v >= int(SACRUM_REACH) and not b.cut_bottom
                                                for v, b in zip(names, bodies, strict=True)):
        return "the lumbosacral junction"
    return None


TOP_TWO_BODIES_RATIO = 1.4
"""A body cut by the top of the field whose visible height reaches this multiple of the complete body below it may
hold two bodies (the segmenter merged a cut body with the next): the top of the field may then lie one level higher
than the count says."""


def _top_may_hold_two(bodies: list[BodyFeatures]) -> int:
    """1 when the top body is cut by the field and at least TOP_TWO_BODIES_RATIO times as tall as the complete body
    below it, else 0."""
    top = bodies[0]
    below = bodies[1] if len(bodies) > 1 else None
    tall = (top.cut_top and below is not None and not below.cut_by_fov
            and top.height_mm >= TOP_TWO_BODIES_RATIO * below.height_mm)
    return int(tall)
