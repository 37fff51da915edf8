"""Whether the scan shows, beyond the detected bodies, the end of the spine that a lone anchor's count predicts.

A count from one end (the first rib pair, the last rib or the sacrum) names every body; it also says where the
other ends lie.  When the scan reaches one of them fully, yet no body was detected there, the column the labelling
step sees is not the column in the scan: bodies the model missed (a lumbar spine the coarse model did not take for
body; BMD set s11 case_19, a 5 mm chest-abdomen whose L1-L5 were not found, was named one level off, confidently,
from a first rib pair read one body too low).  That end cannot confirm the count, so the names are uncertain.

Reach is measured along the spine from the end body's centre (``BodyFeatures.field_above_mm`` /
``field_below_mm``) in steps of the spacing between the end bodies, plus half the end body's height: the predicted
body must lie wholly in the scan.  The spacing grows caudally (about 20 mm in the upper thoracic spine, 40 mm in the
lumbar spine), so counting upwards with the spacing at the top end overestimates the reach needed (never fires
early); counting downwards from a thoracic end body underestimates the lumbar bodies' spacing, so the margin
END_REACH_SPACINGS is added.
"""

from __future__ import annotations

from itertools import pairwise
from typing import TYPE_CHECKING

import numpy as np

from service.domain.levels import VertebraLevel

if TYPE_CHECKING:
    from service.segmentation.labelling import BodyFeatures

END_REACH_SPACINGS = 0.5
"""Extra spacings (of the end bodies) the scan must reach beyond the predicted body, for the growing spacing."""
SPACING_BODIES = 3
"""Centroid spacings at the end of the column that set the local spacing (median)."""


def _end_spacing_mm(bodies: list[BodyFeatures], pos: list[int], top: bool) -> float | None:
    pairs = list(pairwise(range(len(bodies))))
    pairs = pairs[:SPACING_BODIES] if top else pairs[-SPACING_BODIES:]
    gaps = [abs(bodies[a].centroid_mm[2] - bodies[b].centroid_mm[2]) / (pos[b] - pos[a]) for a, b in pairs
            if not (bodies[a].cut_by_fov or bodies[b].cut_by_fov)]
    return float(np.median(gaps)) if gaps else None


def reaches_undetected(bodies: list[BodyFeatures], pos: list[int], first_level: int, level: VertebraLevel) -> bool:
    """With the count that names the first body ``first_level``, body ``level`` lies beyond the detected column
    (above its first body or below its last) and wholly inside the scan."""
    names = [first_level + p for p in pos]
    top = int(level) < names[0]
    if not top and int(level) <= names[-1]:
        return False
    end = bodies[0] if top else bodies[-1]
    reach = end.field_above_mm if top else end.field_below_mm
    spacing = _end_spacing_mm(bodies, pos, top)
    if reach is None or spacing is None:
        return False
    steps = names[0] - int(level) if top else int(level) - names[-1]
    return reach >= (steps + END_REACH_SPACINGS) * spacing + 0.5 * end.height_mm


def undetected_end(bodies: list[BodyFeatures], pos: list[int], first_level: int, anchor: VertebraLevel) -> str | None:
    """For a count from one anchor (the level it names: T1, T12 or L5): the other end of the spine that the scan
    shows where no body was detected (for the reason), else None."""
    checks: dict[VertebraLevel, list[tuple[VertebraLevel, str]]] = {
        VertebraLevel.T1: [(VertebraLevel.L1, "the last rib")],
        VertebraLevel.T12: [(VertebraLevel.T1, "the first rib pair"), (VertebraLevel.S1, "the lumbosacral junction")],
        VertebraLevel.L5: [(VertebraLevel.T12, "the last rib")],
    }
    for level, what in checks.get(anchor, []):
        if reaches_undetected(bodies, pos, first_level, level):
            return what
    return None
