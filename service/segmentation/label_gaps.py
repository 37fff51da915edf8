"""Bodies the detection missed: a gap in the column of detected bodies, and which names it makes uncertain."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from service.segmentation.labelling import BodyFeatures

GAP_FACTOR = 1.6
"""Centroid distance above this times the local median spacing means a body was missed."""


def gap_missing(bodies: list[BodyFeatures]) -> list[int]:
    """Number of bodies presumably missed between body i and i+1 (len n-1).

    Each spacing is compared with its neighbours' (up to two on each side): the spacing grows from ~22 mm
    (mid-thoracic) to ~40 mm (lumbar), so a global median would flag the lumbar spine as gaps.
    """
    z = np.array([b.centroid_mm[2] for b in bodies])
    if len(z) < 3:
        return [0] * max(0, len(z) - 1)
    d = -np.diff(z)
    # a body cut by the field of view has the centroid of its visible part: spacings to it are no reference
    solid = [not (bodies[j].cut_by_fov or bodies[j + 1].cut_by_fov) for j in range(len(d))]
    out = []
    for i, di in enumerate(d):
        neighbours = [d[j] for j in range(max(0, i - 2), min(len(d), i + 3)) if j != i and solid[j]]
        if not neighbours:
            out.append(0)
            continue
        local = float(np.median(neighbours))
        missing = round(di / local) - 1 if di > GAP_FACTOR * local else 0
        out.append(max(0, missing))
    return out


def across_every_gap(missing: list[int], pos: list[int], anchor_positions: list[int]) -> list[bool]:
    """Per body: a gap lies between it and every anchor's body (the number of missed bodies between them is a
    guess, so its name is uncertain).  ``pos``: each body's position counting the missed bodies; ``anchor_positions``:
    the position each anchor names."""
    return [all(any(missing[j] for j in range(len(missing)) if min(p, a) <= pos[j] < max(p, a))
                for a in anchor_positions) for p in pos]
