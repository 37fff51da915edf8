"""Conventional anatomical labelling of detected vertebral bodies, with quality checks (after Pan 2020).

Input: bodies ordered cranial -> caudal with per-body features measured on a canonical grid (+L, +P, +S).
Anchors (each implies the level of every body):
  * T12 anchor: the last rib-bearing body, provided a body without ribs is seen below it (counting up from T12
    and down from L1, as in Pan 2020);
  * L5 anchor: the lowest body sits directly on the sacrum (and is not cut by the field of view);
  * T1 anchor: the first rib-bearing body, provided a body without ribs is seen above it (C7);
  * group anchor: the transition between bodies the network calls thoracic and lumbar (weaker, used only when
    no rib/sacrum anchor exists, and then reported as uncertain).
Checks: anchors must agree (else 11/13 rib pairs or a transitional lumbosacral vertebra: all levels uncertain);
the spacing between neighbouring bodies must be regular (a gap means a missed body: the count across it is
uncertain); no anchor at all (short field of view) -> best guess from body heights, reported uncertain.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from service.domain.levels import VertebraLevel

logger = logging.getLogger(__name__)

RIB_RING_MM = (12.0, 45.0)
"""Horizontal distance from the body centre where rib heads / necks / costotransverse joints lie (bodies are
~15-25 mm in radius; a floating 12th rib passing beside L1 is further out)."""
RIB_ANTERIOR_TOLERANCE_MM = 5.0
"""Rib heads and necks are posterolateral: rib voxels more than this anterior to the body centre do not count."""
RIB_Z_MARGIN_MM = 0.0
RIB_MIN_REACH_MM = 0.0
"""How far (horizontally) a rib component must run from the body centre.  Off: at 3 mm the ribs fragment
(a 70-voxel piece of rib 10 reaches only ~40 mm in the phantoms), so the check rejected true ribs; kept as a
parameter for finer grids."""
S1_FUSION_CONTACT_VOXELS = 20
"""Face-adjacent voxels between the lowest body and the sacrum class for the body to count as fused (S1): a
disc (>= 1 voxel at 3 mm) separates L5 from the sacrum."""
S1_FUSION_SACRUM_MM3 = 30000.0
"""Sacrum-class volume (coarse 3 mm voxels, 27 mm3) below the body's middle required to call it S1."""
MIN_RIB_ATTACH_MM3 = 700.0
"""Rib volume in the ring on one side for that side to count as rib-bearing (~26 voxels at 3 mm; the tail of
the rib above or a transverse process read as rib gives ~5-20 voxels at L1; true ribs give > 40)."""
RIB_RELATIVE_FRACTION = 0.3
"""A side also needs this fraction of the typical rib volume of the scan's rib-bearing bodies (median of their
larger side): at 5 mm or low dose a lumbar transverse process or the tip of a floating rib read as rib reaches
the absolute minimum, but stays far below the rib heads of the thoracic bodies of the same scan."""
MIN_BODIES_FOR_RELATIVE = 3
SACRUM_SEARCH_MM = 30.0
"""The sacrum must start within this distance below the lowest body's centroid-to-bottom edge."""
MIN_SACRUM_VOLUME_MM3 = 8000.0
"""Sacrum-class volume required just below the lowest body (the S1 segment alone is > 30 cm3; stray voxels of
a misread lumbar body are far less)."""
GAP_FACTOR = 1.6
"""Centroid distance above this times the local median spacing means a body was missed."""

# Typical vertebral body heights (mm), used only for a best guess when no anchor is in the field of view.
# Approximate mean anterior heights from morphometric series (e.g. Busscher 2010 / Zhou 2000): T1 ~15 ... L5 ~27.
TYPICAL_HEIGHT_MM: dict[int, float] = {
    8: 15.0, 9: 16.0, 10: 16.5, 11: 17.0, 12: 17.5, 13: 18.0, 14: 18.5, 15: 19.0, 16: 20.0, 17: 21.0,
    18: 22.0, 19: 23.0, 20: 24.5, 21: 25.5, 22: 26.5, 23: 27.0, 24: 27.0,
}


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

    @property
    def rib_bearing(self) -> bool:
        return self.rib_left or self.rib_right


@dataclass(frozen=True)
class LevelDecision:
    level: VertebraLevel | None
    uncertain: bool
    reason: str | None


@dataclass
class LabellingResult:
    decisions: list[LevelDecision]
    notes: list[str] = field(default_factory=list)


def _gap_missing(bodies: list[BodyFeatures]) -> list[int]:
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


T1_ANCHOR_FOV_MARGIN_MM = 40.0
"""The T1 anchor needs the field of view to extend this far above the rib-free body over the first rib-bearing
one (otherwise that body's rib may simply leave the field of view)."""


def label_bodies(bodies: list[BodyFeatures], sacrum_below: bool, fov_top_mm: float | None = None) -> LabellingResult:
    """Name each body (cranial -> caudal order). ``fov_top_mm``: top of the field of view (canonical z, mm)."""
    n = len(bodies)
    notes: list[str] = []
    if n == 0:
        return LabellingResult([], ["no vertebral body found"])
    missing = _gap_missing(bodies)
    # position index of each body counting missed bodies in gaps
    pos = [0]
    for m in missing:
        pos.append(pos[-1] + 1 + m)
    if any(missing):
        notes.append(f"gap in the detected bodies: {sum(missing)} body(ies) presumably missed")
    ribs = [b.rib_bearing for b in bodies]
    anchors: dict[str, int] = {}
    """anchor name -> implied level value of position 0."""
    # T12: last rib-bearing body with a rib-free body below it
    rib_idx = [i for i, r in enumerate(ribs) if r]
    if rib_idx:
        last = rib_idx[-1]
        # the pair must not be a slab through both (upper cut at the top, lower cut at the bottom): such a slab
        # cannot show that the lower body has no ribs
        if last < n - 1 and not any(ribs[last + 1:]) and not (bodies[last].cut_top and bodies[last + 1].cut_bottom):
            anchors["T12 (last rib-bearing body)"] = int(VertebraLevel.T12) - pos[last]
        first = rib_idx[0]
        above = bodies[first - 1] if first > 0 else None
        if (above is not None and not above.cut_by_fov and not ribs[first - 1] and fov_top_mm is not None
                and fov_top_mm - above.centroid_mm[2] >= T1_ANCHOR_FOV_MARGIN_MM):
            anchors["T1 (first rib-bearing body)"] = int(VertebraLevel.T1) - pos[first]
    if sacrum_below and not bodies[-1].cut_by_fov:
        anchors["L5 (body on the sacrum)"] = int(VertebraLevel.L5) - pos[-1]
    values = set(anchors.values())
    if len(values) == 1:
        first_level = values.pop()
        notes.append("anchors: " + ", ".join(anchors))
        decisions = [_decide(first_level + pos[i], False, None) for i in range(n)]
        if any(missing):
            decisions = _gap_uncertain(decisions, missing, anchors, pos, first_level, ribs)
        return LabellingResult(decisions, notes)
    if len(values) > 1:
        # Disagreeing anchors: 11 or 13 rib pairs, a transitional lumbosacral vertebra, or one anchor misread.
        # Every level is reported uncertain; the names follow the anchor whose count agrees best with the
        # network's thoracic/lumbar appearance, by default the rib anchor (Pan 2020 counts from T12).
        key = _anchor_agreeing_with_votes(anchors, bodies, pos)
        first_level = anchors[key]
        detail = ", ".join(f"{k} -> first body {_name(v)}" for k, v in anchors.items())
        n_lumbar_like = None
        if "L5 (body on the sacrum)" in anchors and "T12 (last rib-bearing body)" in anchors:
            n_lumbar_like = anchors["T12 (last rib-bearing body)"] - anchors["L5 (body on the sacrum)"] + 5
        reason = "anchors disagree (" + detail + ")"
        if n_lumbar_like is not None:
            reason += (f": {n_lumbar_like} rib-free vertebrae above the sacrum; transitional lumbosacral vertebra "
                       "or 11/13 rib pairs")
        else:
            reason += ": 11 or 13 rib pairs"
        notes.append(reason)
        return LabellingResult([_decide(first_level + pos[i], True, reason) for i in range(n)], notes)
    # No rib/sacrum anchor: the network's thoracic/lumbar groups, else body heights. Always uncertain.
    votes = [b.thoracic_vote for b in bodies]
    trans = [i for i in range(n - 1) if votes[i] > 0.5 >= votes[i + 1]]
    if len(trans) == 1 and all(v > 0.5 for v in votes[: trans[0] + 1]) and all(v <= 0.5 for v in votes[trans[0] + 1:]):
        first_level = int(VertebraLevel.T12) - pos[trans[0]]
        reason = "no rib or sacrum anchor in the field of view; named from the thoracic/lumbar appearance"
    else:
        first_level = _best_height_fit(bodies, pos, votes)
        reason = "no anchor in the field of view (too short to see the last rib or the sacrum); best guess"
    notes.append(reason)
    return LabellingResult([_decide(first_level + pos[i], True, reason) for i in range(n)], notes)


ANCHOR_VOTE_MARGIN = 0.5
"""When anchors disagree, another anchor replaces the rib anchor only if its names disagree with the thoracic/lumbar
vote by at least this much less (sum over bodies of |vote - thoracic name|; one body fully on the other side = 1)."""


def _anchor_agreeing_with_votes(anchors: dict[str, int], bodies: list[BodyFeatures], pos: list[int]) -> str:
    def disagreement(first_level: int) -> float:
        return sum(abs(b.thoracic_vote - (1.0 if first_level + p <= int(VertebraLevel.T12) else 0.0))
                   for b, p in zip(bodies, pos, strict=True) if not b.cut_by_fov)

    default = next((k for k in anchors if k.startswith("T12")), next(iter(anchors)))
    best = min(anchors, key=lambda k: disagreement(anchors[k]))
    if disagreement(anchors[best]) <= disagreement(anchors[default]) - ANCHOR_VOTE_MARGIN:
        return best
    return default


def _name(v: int) -> str:
    return VertebraLevel(v).name if 1 <= v <= 25 else f"level {v}"


def _decide(v: int, uncertain: bool, reason: str | None) -> LevelDecision:
    if not 1 <= v <= 25:
        return LevelDecision(None, True, reason or "count runs outside C1-S1")
    return LevelDecision(VertebraLevel(v), uncertain, reason if uncertain else None)


def _gap_uncertain(decisions: list[LevelDecision], missing: list[int], anchors: dict[str, int], pos: list[int],
                   first_level: int, ribs: list[bool]) -> list[LevelDecision]:
    """Bodies separated from every anchor by a gap are uncertain (the number of missed bodies is a guess)."""
    anchor_positions = []
    for k, v in anchors.items():
        target = {"T12": 19, "T1": 8, "L5": 24}[k.split()[0]]
        anchor_positions.append(target - v)
    out = []
    for i, d in enumerate(decisions):
        p = pos[i]
        crosses_all = all(
            any(missing[j] for j in range(len(missing)) if min(p, a) <= pos[j] < max(p, a)) for a in anchor_positions)
        if crosses_all and d.level is not None:
            out.append(LevelDecision(d.level, True, "a body between this one and the anchor was not detected"))
        else:
            out.append(d)
    return out


def _best_height_fit(bodies: list[BodyFeatures], pos: list[int], votes: list[float]) -> int:
    heights = [b.height_mm for b in bodies]
    best, best_cost = int(VertebraLevel.T12) - pos[-1], float("inf")
    # the model knows T1-L5 context (phantoms cover C7-S1): guess within T1..L5
    for first in range(int(VertebraLevel.T1), int(VertebraLevel.L5) + 1 - pos[-1]):
        cost = 0.0
        for i, h in enumerate(heights):
            v = first + pos[i]
            # weak prior: short scans of the spine are mostly centred near the thoracolumbar junction
            cost += 0.3 * abs(v - int(VertebraLevel.T12)) / 12.0
            if bodies[i].cut_by_fov:
                continue
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


# ---------------------------------------------------------------------------------------------------------
# Feature extraction on a canonical grid (shared by inference on predictions and tests on phantom truth).

def rib_attachment(body_masks: list[npt.NDArray[np.bool_]], rib_mask: npt.NDArray[np.bool_],
                   spacing_mm: tuple[float, float, float]) -> list[tuple[float, float]]:
    """(left, right) rib volume (mm3) attached to each body: rib voxels in the posterolateral ring where rib
    heads and necks meet the vertebra (RIB_RING_MM from the body centre, not anterior of it, within its height),
    counted only for rib components that also run out laterally (RIB_MIN_REACH_MM): a lumbar transverse process
    read as rib stays short."""
    sp = np.asarray(spacing_mm, dtype=np.float64)
    out: list[tuple[float, float]] = []
    if not rib_mask.any():
        return [(0.0, 0.0) for _ in body_masks]
    # bridge one-voxel gaps (rib heads and necks fragment at 3 mm) before measuring how far a rib runs
    lab, _ = ndimage.label(ndimage.binary_dilation(rib_mask), structure=np.ones((3, 3, 3)))
    rib_idx = np.argwhere(rib_mask)
    rib_pts = rib_idx * sp
    rib_lab = lab[tuple(rib_idx.T)]
    voxel_mm3 = float(np.prod(sp))
    for m in body_masks:
        coords = np.argwhere(m) * sp
        c = coords.mean(axis=0)
        z0, z1 = coords[:, 2].min() - RIB_Z_MARGIN_MM, coords[:, 2].max() + RIB_Z_MARGIN_MM
        dx = rib_pts[:, 0] - c[0]
        dy = rib_pts[:, 1] - c[1]
        horiz = np.hypot(dx, dy)
        near = ((horiz >= RIB_RING_MM[0]) & (horiz <= RIB_RING_MM[1]) & (dy >= -RIB_ANTERIOR_TOLERANCE_MM)
                & (rib_pts[:, 2] >= z0) & (rib_pts[:, 2] <= z1))
        vols = []
        for side in (dx > 0, dx < 0):
            sel = near & side
            total = 0.0
            for comp in np.unique(rib_lab[sel]):
                reach = float(horiz[rib_lab == comp].max())
                if reach >= RIB_MIN_REACH_MM:
                    total += float(np.count_nonzero(sel & (rib_lab == comp))) * voxel_mm3
            vols.append(total)
        out.append((vols[0], vols[1]))
    return out


def fused_with_sacrum(body: npt.NDArray[np.bool_], sacrum_mask: npt.NDArray[np.bool_]) -> bool:
    """True when the body touches the sacrum without a disc in between (it is S1, not L5)."""
    if not sacrum_mask.any():
        return False
    ring = ndimage.binary_dilation(body, structure=np.ones((3, 3, 3))) & ~body
    if int(np.count_nonzero(ring & sacrum_mask)) < S1_FUSION_CONTACT_VOXELS:
        return False
    # and a real sacrum below it (stray sacrum-class voxels next to a lumbar body on an unfamiliar scan are not)
    zs = np.nonzero(body.any(axis=(0, 1)))[0]
    below = sacrum_mask[:, :, : max(1, int(zs.mean()))]
    return int(np.count_nonzero(below)) * 27 >= S1_FUSION_SACRUM_MM3


def sacrum_below(lowest_body: npt.NDArray[np.bool_], sacrum_mask: npt.NDArray[np.bool_],
                 spacing_mm: tuple[float, float, float]) -> bool:
    if not sacrum_mask.any() or not lowest_body.any():
        return False
    sp = np.asarray(spacing_mm)
    body_pts = np.argwhere(lowest_body) * sp
    cx, cy = body_pts[:, 0].mean(), body_pts[:, 1].mean()
    z_bottom = body_pts[:, 2].min()
    pts = np.argwhere(sacrum_mask) * sp
    near = (np.hypot(pts[:, 0] - cx, pts[:, 1] - cy) < 50.0) & (pts[:, 2] < z_bottom + 5.0) & (
        pts[:, 2] > z_bottom - SACRUM_SEARCH_MM)
    return bool(near.sum() * float(np.prod(sp)) >= MIN_SACRUM_VOLUME_MM3)


def features_from_masks(instance_masks: list[npt.NDArray[np.bool_]], rib_mask: npt.NDArray[np.bool_],
                        sacrum_mask: npt.NDArray[np.bool_], spacing_mm: tuple[float, float, float],
                        thoracic_votes: list[float] | None = None,
                        rib_volumes_mm3: list[tuple[float, float]] | None = None,
                        ) -> tuple[list[BodyFeatures], bool, float]:
    """(features, sacrum below the lowest body, top of the field of view in mm) from masks on a canonical grid
    (instances ordered cranial -> caudal).  ``rib_volumes_mm3``: (left, right) per body when measured elsewhere
    (the fine stage), else from ``rib_mask``."""
    sp = np.asarray(spacing_mm, dtype=np.float64)
    ribs = rib_volumes_mm3 if rib_volumes_mm3 is not None else rib_attachment(instance_masks, rib_mask, spacing_mm)
    bearing = [max(left, right) for left, right in ribs if max(left, right) >= MIN_RIB_ATTACH_MM3]
    min_rib_mm3 = MIN_RIB_ATTACH_MM3
    if len(bearing) >= MIN_BODIES_FOR_RELATIVE:
        min_rib_mm3 = max(MIN_RIB_ATTACH_MM3, RIB_RELATIVE_FRACTION * float(np.median(bearing)))
    feats = []
    for i, (m, (left, right)) in enumerate(zip(instance_masks, ribs, strict=True)):
        coords = np.argwhere(m)
        zs = coords[:, 2]
        cut_bottom, cut_top = bool(zs.min() == 0), bool(zs.max() == m.shape[2] - 1)
        cut = cut_bottom or cut_top
        feats.append(BodyFeatures(
            centroid_mm=tuple(float(v) for v in coords.mean(axis=0) * sp),  # type: ignore[arg-type]
            height_mm=float((zs.max() - zs.min() + 1) * sp[2]), rib_left=left >= min_rib_mm3,
            rib_right=right >= min_rib_mm3, rib_left_mm3=left, rib_right_mm3=right,
            thoracic_vote=0.5 if thoracic_votes is None else thoracic_votes[i], cut_by_fov=cut, cut_top=cut_top,
            cut_bottom=cut_bottom))
    sac = sacrum_below(instance_masks[-1], sacrum_mask, spacing_mm) if instance_masks else False
    fov_top_mm = float((rib_mask.shape[2] - 0.5) * sp[2])
    return feats, sac, fov_top_mm
