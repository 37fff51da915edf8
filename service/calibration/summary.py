"""Patient-level summary: which levels enter the standard L1-L2 (configurable) mean, with adjacent substitution.

Rule (documented for the SR): the configured levels (default L1, L2; ISCD/ACR) that are evaluable are used. Each
configured level that is missing or not evaluable is replaced by the nearest evaluable level not already used,
at most ``MAX_SUBSTITUTE_DISTANCE`` levels away from the replaced one (ties: the caudal, lumbar side first, as QCT
measures L1-L3); this is what the studies did ("when fractured or pathological vertebrae were present, adjacent
vertebrae were measured instead", Xiong 2025). A standard summary needs ``MIN_SUMMARY_LEVELS`` levels; with fewer,
the thoracolumbar curve (chest CT) gives a lumbar-equivalent value; with no curve either, a single level is
reported with a note, and with none the summary is indeterminate.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from service.domain.levels import VertebraLevel

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
