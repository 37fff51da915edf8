"""Semantic classes of the coarse model and mappings from the label schemes it can be trained on.

The model predicts classes that generalise across patients and fields of view (not 24 level classes);
level names come from the conventional labelling step (labelling.py).  The body is split into a thoracic
(C1-T12) and a lumbar (L1-L5) group, as in Pan 2020 (group classes, then counting from T12 / L1): the group vote
is a second, independent cue next to rib attachment.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from service.domain.levels import TOTALSEG_V2_VERTEBRA_IDS, VertebraLevel

BACKGROUND = 0
BODY_THORACIC = 1
BODY_LUMBAR = 2
POSTERIOR = 3
DISC = 4
RIB = 5
SACRUM = 6
NUM_CLASSES = 7
CLASS_NAMES = ("background", "body_thoracic", "body_lumbar", "posterior", "disc", "rib", "sacrum")
IGNORE = 255
"""Target value for voxels whose class the source labels do not tell (excluded from the loss)."""

# --- phantom label scheme (service/phantom) ---
PHANTOM_SACRUM = 26
PHANTOM_POSTERIOR_OFFSET = 40
PHANTOM_CORE_OFFSET = 200
PHANTOM_RIBS = (range(71, 84), range(91, 104))
PHANTOM_DISC = 112
PHANTOM_L6 = 0  # the phantom labels a lumbarised / extra lumbar vertebra with a level value; nothing special


def _body_class(level_value: int) -> int:
    if level_value <= int(VertebraLevel.T12):
        return BODY_THORACIC
    if level_value <= int(VertebraLevel.L5):
        return BODY_LUMBAR
    return SACRUM  # S1 belongs to the sacrum


def phantom_body_levels(labels: npt.NDArray[np.integer]) -> npt.NDArray[np.int16]:
    """Body level map (VertebraLevel values, 0 elsewhere) from a phantom label map (shell v or core 200+v)."""
    lab = labels.astype(np.int32)
    out = np.where((lab >= 1) & (lab <= 25), lab, 0)
    core = (lab >= PHANTOM_CORE_OFFSET + 1) & (lab <= PHANTOM_CORE_OFFSET + 25)
    out = np.where(core, lab - PHANTOM_CORE_OFFSET, out)
    return out.astype(np.int16)


def phantom_targets(labels: npt.NDArray[np.integer], lumbarised_s1: bool = False) -> npt.NDArray[np.uint8]:
    """Semantic training target from a phantom label map."""
    lab = labels.astype(np.int32)
    out = np.zeros(lab.shape, dtype=np.uint8)
    body = phantom_body_levels(lab)
    out[(body >= 1) & (body <= int(VertebraLevel.T12))] = BODY_THORACIC
    out[(body > int(VertebraLevel.T12)) & (body <= int(VertebraLevel.L5))] = BODY_LUMBAR
    # a normal S1 is part of the sacrum; a lumbarised S1 is a free, lumbar-like vertebra
    out[body == int(VertebraLevel.S1)] = BODY_LUMBAR if lumbarised_s1 else SACRUM
    out[lab == PHANTOM_SACRUM] = SACRUM
    post = (lab >= PHANTOM_POSTERIOR_OFFSET + 1) & (lab <= PHANTOM_POSTERIOR_OFFSET + 25)
    out[post] = POSTERIOR
    # S1 posterior elements are part of the sacrum
    if not lumbarised_s1:
        out[lab == PHANTOM_POSTERIOR_OFFSET + int(VertebraLevel.S1)] = SACRUM
    for r in PHANTOM_RIBS:
        out[(lab >= r.start) & (lab < r.stop)] = RIB
    out[lab == PHANTOM_DISC] = DISC
    return out


# --- TotalSegmentator v2 ---
TOTALSEG_SPINAL_CORD_ID = 79


def totalseg_vertebra_levels(labels: npt.NDArray[np.integer]) -> npt.NDArray[np.int16]:
    """Whole-vertebra level map (VertebraLevel values) from TotalSegmentator v2 ids."""
    lab = labels.astype(np.int32)
    out = np.zeros(lab.shape, dtype=np.int16)
    for ts_id, level in TOTALSEG_V2_VERTEBRA_IDS.items():
        out[lab == ts_id] = int(level)
    return out


# --- VerSe: 1-24 = C1-L5, 25 = L6, 28 = T13 (whole vertebra) ---
VERSE_L6 = 25
VERSE_T13 = 28


def verse_vertebra_levels(labels: npt.NDArray[np.integer]) -> tuple[npt.NDArray[np.int16], npt.NDArray[np.int16]]:
    """(level map with VertebraLevel values, group map: BODY_THORACIC / BODY_LUMBAR per vertebra voxel).

    T13 is a thoracic-group vertebra and L6 a lumbar-group one; they have no VertebraLevel of their own, so in the
    level map they carry the value of their cranial neighbour + 1 is not representable: they are marked -1.
    """
    lab = labels.astype(np.int32)
    levels = np.where((lab >= 1) & (lab <= 24), lab, 0).astype(np.int16)
    levels[(lab == VERSE_L6) | (lab == VERSE_T13)] = -1
    group = np.zeros(lab.shape, dtype=np.int16)
    group[(lab >= 1) & (lab <= 19)] = BODY_THORACIC
    group[lab == VERSE_T13] = BODY_THORACIC
    group[(lab >= 20) & (lab <= 24)] = BODY_LUMBAR
    group[lab == VERSE_L6] = BODY_LUMBAR
    return levels, group


def whole_vertebra_targets(group: npt.NDArray[np.integer], body_mask: npt.NDArray[np.bool_],
                           hu: npt.NDArray[np.floating], ribs: npt.NDArray[np.bool_] | None,
                           sacrum: npt.NDArray[np.bool_] | None) -> npt.NDArray[np.uint8]:
    """Targets from whole-vertebra labels (real data): body part by ``body_mask``, the rest posterior.

    Bone-like voxels (> 150 HU) that the source does not label (ribs in VerSe, pelvis ...) are IGNOREd rather than
    taught as background, and discs are not labelled in these schemes so voxels between bodies are IGNOREd too.
    """
    out = np.zeros(group.shape, dtype=np.uint8)
    vert = group > 0
    out[vert & body_mask] = group[vert & body_mask].astype(np.uint8)
    out[vert & ~body_mask] = POSTERIOR
    if ribs is not None:
        out[ribs] = RIB
    if sacrum is not None:
        out[sacrum] = SACRUM
    unlabelled_bone = (hu > 150) & (out == 0)
    if ribs is None:
        out[unlabelled_bone] = IGNORE
    # discs: voxels between two labelled bodies along the spine are unknown in these schemes
    spine_hull = ndimage.binary_closing(body_mask & vert, iterations=2)
    out[spine_hull & (out == 0)] = IGNORE
    return out
