"""The spacing of the vertebral body centroids: a check against counts that are several levels off.

The distance between the centroids of adjacent bodies is half of each body's height plus the disc between them. It
grows from ~19 mm at T1/T2 to ~38 mm at L4/L5, about 1 mm per level in the thoracic spine and 2-3 mm per level at
the thoracolumbar junction. Unlike a body's extent along the scanner axis (``BodyFeatures.height_mm``, which a
kyphotic or lordotic tilt and the coarse grid's blockiness inflate: the real CPTAC chest's T4-T10 read 24-36 mm there
against typical heights of 17-21 mm), the distance between two centroids is measured in 3D and averages over
thousands of voxels, so tilt and blockiness barely change it.

A count ``first_level`` predicts the spacing of every pair of adjacent complete bodies as a body part (half of the
two bodies' typical heights) plus a disc part. The patient's body size scales the first (prior ``SCALE_SD``), the
state of the discs the second (``DISC_SCALE_SD``: discs narrow with age and degeneration), both fitted per count;
what remains is compared with ``SPACING_SD`` per pair (each pair's share capped at ``PAIR_COST_CAP``: a split or
merged body is one outlier, not a count). A patient's size and one level's growth are of the same order (4-8 %), so
the spacing cannot tell a count from one shifted by a level; it does tell counts 3-7 levels apart (thoracic bodies
~21 mm apart named as lumbar ones ~35 mm apart). It is therefore used to reject a best guess the spacing contradicts
clearly (``SPACING_REJECTS``) and as the body-size reading of a best guess without anchor
(``label_cues.best_height_fit``), never to confirm a name.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from service.domain.levels import VertebraLevel as V

if TYPE_CHECKING:
    from service.segmentation.labelling import BodyFeatures

TYPICAL_BODY_HEIGHT_MM: dict[V, float] = {
    V.C6: 13.5, V.C7: 14.0, V.T1: 15.0, V.T2: 16.0, V.T3: 16.5, V.T4: 17.0, V.T5: 17.5, V.T6: 18.0, V.T7: 18.5,
    V.T8: 19.0, V.T9: 20.0, V.T10: 21.0, V.T11: 22.0, V.T12: 23.0, V.L1: 24.5, V.L2: 25.5, V.L3: 26.5, V.L4: 27.0,
    V.L5: 27.0, V.S1: 26.0,
}
"""Approximate adult vertebral body heights (mm): mean anterior heights from morphometric series (e.g. Busscher 2010 /
Zhou 2000), T1 ~15 ... L5 ~27, with C6, C7 and S1 added; also the size cue's table
(``label_cues.TYPICAL_HEIGHT_MM``)."""
TYPICAL_DISC_BELOW_MM: dict[V, float] = {
    V.C6: 5.0, V.C7: 4.5, V.T1: 4.0, V.T2: 4.0, V.T3: 4.0, V.T4: 4.5, V.T5: 4.5, V.T6: 5.0, V.T7: 5.0, V.T8: 5.5,
    V.T9: 6.0, V.T10: 6.5, V.T11: 7.0, V.T12: 8.0, V.L1: 9.0, V.L2: 10.0, V.L3: 11.0, V.L4: 11.0, V.L5: 10.0,
}
"""Approximate adult disc heights (mm) below each level: thoracic discs ~4 mm in the upper and ~7 mm in the lower
thoracic spine, lumbar discs ~9-11 mm (anatomical and radiographic series, e.g. Pooni et al., Surg Radiol Anat
1986; Frobin et al., Eur Radiol 1997). The resulting centroid spacings agree with the real CPTAC chest's to
1.7 mm from C7/T1 to T11/T12 (T1/T2 20.2 mm against 19.5 here, T9/T10 26.7 against 26.5, T11/T12 30.0 against
29.5: ``python -m service.offline.evaluation.spacing_check --case ../shared/data/cptac_lscc_chest``). The phantom's
body and disc sizes come from the same literature, so the phantom's agreement with this table (within 1.0 mm from
C7/T1 to L4/L5) shows the measurement, not the table: the real chest is the independent check."""
SPACING_SD = 0.06
"""The spread of one pair's spacing about its typical value once the patient's size is taken out (log scale)."""
SCALE_SD = 0.08
"""The spread of the patient's vertebral body size (log scale): adult vertebral dimensions vary with stature by
~5-8 %."""
DISC_SCALE_SD = 0.5
"""The spread of the patient's disc heights (log scale), fitted apart from the bodies': discs narrow with age and
degeneration, often to a third or less of their height over several levels (the osteoporosis population), and the
phantom draws them 0.4-1.2 times typical. With one scale for both (as first written), a small patient with discs at
40 % of their height over T10-L5 had the right count rejected (``test_labelling_spacing.py``). Discs narrowed
further in a still smaller patient come close to the limit: such a spine's spacing reads like a count several
levels higher, and a right best guess could then be rejected (never a confident name)."""
BODY_SCALES = np.exp(np.linspace(-0.32, 0.32, 33))
DISC_SCALES = np.exp(np.linspace(math.log(0.15), math.log(1.3), 25))
"""The scales tried (body x disc grid). Discs narrow far more often than they exceed their typical height, and a
disc scale free to grow let the 250 mm lower-half cut of the real chest (four complete pairs) pass as C7-T6."""
_BODY, _DISC = np.meshgrid(BODY_SCALES, DISC_SCALES, indexing="ij")
PAIR_COST_CAP = 4.0
"""No pair adds more than this (two SDs squared): a body split in two or two bodies merged is one outlier."""
SPACING_REJECTS = 8.0
"""A count whose spacing cost, and that of the counts one level either side of it, exceed the best count's by more
than this is rejected as a best guess (``rejected_by_spacing``). On the recorded phantom features of labelling sets
9-11 and BMD set s20 (207 cases with a costable reference count) the reference count never exceeded the best by more
than 4.9, and none was rejected; counts 3 or more levels off were rejected in 51-65 % of the cases, 2 levels off in
0-2 %, 1 level off never (``python -m service.offline.evaluation.spacing_check --cache var/label_cache --cache
var/label_cache10 --cache var/label_cache10w --cache var/label_cache11w``). On the real CPTAC chest's 40 targeted
cuts it rejects a count from an unseen 12th rib that named C6-T8 as T7-L4 and a first rib-bearing body of a lower
half taken for T1 (``tests/unit/segmentation/test_labelling_spacing.py``); see docs/segmentation/README.md."""


def typical_parts_mm(upper: int) -> tuple[float, float] | None:
    """The typical centroid distance between level ``upper`` and the level below it, as (half of the two bodies'
    heights, the disc between them) in mm (None outside C6-S1)."""
    try:
        a, b = V(upper), V(upper + 1)
    except ValueError:
        return None
    if a not in TYPICAL_DISC_BELOW_MM or b not in TYPICAL_BODY_HEIGHT_MM:
        return None
    return (TYPICAL_BODY_HEIGHT_MM[a] + TYPICAL_BODY_HEIGHT_MM[b]) / 2.0, TYPICAL_DISC_BELOW_MM[a]


def typical_spacing_mm(upper: int) -> float | None:
    """The typical centroid distance between level ``upper`` and the level below it (None outside C6-S1)."""
    parts = typical_parts_mm(upper)
    return None if parts is None else parts[0] + parts[1]


def measured_spacings(bodies: list[BodyFeatures], pos: list[int]) -> list[tuple[int, int, float]]:
    """(position of the upper body, positions spanned, centroid distance in mm) of each pair of adjacent complete
    bodies (a body cut by the field has a displaced centroid)."""
    out = []
    for i in range(len(bodies) - 1):
        if bodies[i].cut_by_fov or bodies[i + 1].cut_by_fov:
            continue
        d = math.dist(bodies[i].centroid_mm, bodies[i + 1].centroid_mm)
        out.append((pos[i], pos[i + 1] - pos[i], d))
    return out


def spacing_cost(spacings: list[tuple[int, int, float]], first_level: int) -> float | None:
    """How badly the count that names position 0 ``first_level`` fits these spacings (None: fewer than two pairs
    with a typical spacing), at the body and disc scales that fit it best (``BODY_SCALES``, ``DISC_SCALES``)."""
    bodies_mm, discs_mm, measured = [], [], []
    for p, span, d in spacings:
        parts = [typical_parts_mm(first_level + p + k) for k in range(span)]
        if any(t is None for t in parts):
            return None
        bodies_mm.append(sum(t[0] for t in parts if t is not None))
        discs_mm.append(sum(t[1] for t in parts if t is not None))
        measured.append(d)
    if len(measured) < 2:
        return None
    predicted = (_BODY[:, :, None] * np.asarray(bodies_mm)[None, None, :]
                 + _DISC[:, :, None] * np.asarray(discs_mm)[None, None, :])
    residual = np.log(np.asarray(measured)[None, None, :] / predicted) ** 2 / SPACING_SD**2
    cost = (np.minimum(residual, PAIR_COST_CAP).sum(axis=2) + np.log(_BODY) ** 2 / SCALE_SD**2
            + np.log(_DISC) ** 2 / DISC_SCALE_SD**2)
    return float(cost.min())


def spacing_costs(bodies: list[BodyFeatures], pos: list[int]) -> dict[int, float]:
    """The spacing cost of every count that keeps all bodies within C1-S1 and can be costed."""
    spacings = measured_spacings(bodies, pos)
    out = {}
    for first in range(int(V.C1), int(V.S1) - pos[-1] + 1):
        cost = spacing_cost(spacings, first)
        if cost is not None:
            out[first] = cost
    return out


def rejected_by_spacing(costs: dict[int, float], first_level: int) -> bool:
    """The spacing contradicts this count, and the counts one level either side of it, clearly (see
    ``SPACING_REJECTS``): the spacing never decides between neighbouring counts, which a patient's size, collapsed
    discs or a fracture can shift. A count that cannot be costed (a pair outside C6-S1, or fewer than two complete
    pairs) is not rejected."""
    if first_level not in costs:
        return False
    limit = min(costs.values()) + SPACING_REJECTS
    return all(costs[f] > limit for f in (first_level - 1, first_level, first_level + 1) if f in costs)


def spacing_detail(bodies: list[BodyFeatures], pos: list[int], first_level: int) -> str:
    """A radiologist's reading of why the spacing rejects this count: the measured and the typical spacings."""
    spacings = measured_spacings(bodies, pos)
    measured = [d / span for _, span, d in spacings]
    typical = [t for p, span, _ in spacings for t in [typical_spacing_mm(first_level + p)] if t is not None]
    if not measured or not typical:
        return "the bodies' spacing does not fit it"
    return (f"the bodies lie {min(measured):.0f}-{max(measured):.0f} mm apart, where that count expects "
            f"{min(typical):.0f}-{max(typical):.0f} mm")


def spacing_filter(candidates: dict[str, int], bodies: list[BodyFeatures], pos: list[int]
                   ) -> tuple[dict[str, int], list[str]]:
    """The candidate counts (name -> level of position 0) the spacing does not reject, and a reason for each one
    it rejects."""
    costs = spacing_costs(bodies, pos)
    kept = {k: v for k, v in candidates.items() if not rejected_by_spacing(costs, v)}
    reasons = [f"the {k} count (first body {V(v).name if int(V.C1) <= v <= int(V.S1) else v}) is not used: "
               f"{spacing_detail(bodies, pos, v)}" for k, v in candidates.items() if k not in kept]
    return kept, reasons
