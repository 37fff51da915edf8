"""Patient-level summary: which levels enter the standard L1-L2 (configurable) mean, with adjacent substitution.

Rule (documented for the SR): the configured levels (default L1, L2; ISCD/ACR) that are evaluable are used. Each
configured level that is missing or not evaluable is replaced by the nearest evaluable level not already used,
at most ``MAX_SUBSTITUTE_DISTANCE`` levels away from the replaced one (ties: the caudal, lumbar side first, as QCT
measures L1-L3); this is what the studies did ("when fractured or pathological vertebrae were present, adjacent
vertebrae were measured instead", Xiong 2025). A standard summary needs ``MIN_SUMMARY_LEVELS`` levels; with fewer,
the thoracolumbar curve (chest CT) gives a lumbar-equivalent value; with no curve either, a single level is
reported with a note. When no level's name is certain enough for any of these, but the levels around the
configured ones (``uncertain_names_category``) all fall in one category, that category is reported without a value;
otherwise the summary is indeterminate.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence

from service.domain.levels import VertebraLevel
from service.domain.results import Category

MAX_SUBSTITUTE_DISTANCE = 2
MIN_SUMMARY_LEVELS = 2


def summary_levels(targets: Sequence[VertebraLevel], evaluable: Collection[VertebraLevel]
                   ) -> tuple[tuple[VertebraLevel, ...], tuple[str, ...]]:
    """(levels to average, notes on substitutions)."""
    used = [lv for lv in targets if lv in evaluable]
    notes: list[str] = []
    for target in targets:
        if target in evaluable:
            continue
        substitute = None
        for distance in range(1, MAX_SUBSTITUTE_DISTANCE + 1):
            for sign in (1, -1):  # caudal first
                cand = target.shifted(sign * distance)
                if cand is not None and cand in evaluable and cand not in used and cand not in targets:
                    substitute = cand
                    break
            if substitute is not None:
                break
        if substitute is not None:
            used.append(substitute)
            notes.append(f"{target.name} not evaluable or absent: replaced by {substitute.name}")
        else:
            notes.append(f"{target.name} not evaluable or absent: no adjacent evaluable level")
    return tuple(sorted(used)), tuple(notes)


def uncertain_names_category(bmd_by_level: Mapping[VertebraLevel, float], targets: Sequence[VertebraLevel],
                             categorize: Callable[[float], Category]
                             ) -> tuple[Category, tuple[VertebraLevel, ...]] | None:
    """(category, levels it rests on) of levels whose names are uncertain but which are otherwise evaluable, or None.

    Names that are uncertain are at most a level or two off (a transitional vertebra, 11 or 13 rib pairs), so the
    real L1-L2 lie among the levels named within ``MAX_SUBSTITUTE_DISTANCE`` of the targets. When every measurable
    level there (at least ``MIN_SUMMARY_LEVELS``, one of them named as a target) falls in one category, L1-L2 do
    too, whatever their right names: the category is reported, without a value (issue 16: "when every measurable
    level in view falls in the same category, the summary may still report that category"). One level in another
    category, and the summary stays indeterminate."""
    window = {shifted for target in targets for distance in range(-MAX_SUBSTITUTE_DISTANCE,
                                                                   MAX_SUBSTITUTE_DISTANCE + 1)
              if (shifted := target.shifted(distance)) is not None}
    near = tuple(sorted(level for level in bmd_by_level if level in window))
    if len(near) < MIN_SUMMARY_LEVELS or not any(level in targets for level in near):
        return None
    categories = {categorize(bmd_by_level[level]) for level in near}
    if len(categories) != 1 or Category.INDETERMINATE in categories:
        return None
    return categories.pop(), near
