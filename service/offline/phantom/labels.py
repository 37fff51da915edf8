"""The phantom's label scheme (labels.nii.gz). Fixed: other packages rely on these values.

    1..25         vertebral body cortical shell of VertebraLevel value (C1..S1)
    200 + value   trabecular core of that level (body = shell | core)
    26            sacrum below the S1 body (alae, S2..S5, coccyx)
    40 + value    posterior elements of that level (pedicles, laminae, spinous, transverse, articular processes)
    71..83        left ribs 1..13 (rib n articulates with thoracic level n; rib 13 with L1)
    91..103       right ribs 1..13
    110 sternum, 111 pelvis (iliac bones), 112 intervertebral disc, 113 spinal canal and cord,
    114 scapula, 115 clavicle, 116 humerus, 117 costal cartilage
    120+          soft tissues and organs (see below)
    150 calibration phantom body, 151.. calibration rods (in the order of truth.json "calibration_phantom.rods")
    160 metal (pedicle screws)

For transitional variants (lumbarised S1, sacralised L5) the labels keep the true anatomical name; the variant
is recorded in truth.json.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from service.domain.levels import VertebraLevel

CORE_OFFSET = 200
POSTERIOR_OFFSET = 40
SACRUM = 26
LEFT_RIB_BASE = 70  # left rib n -> 70 + n
RIGHT_RIB_BASE = 90  # right rib n -> 90 + n
STERNUM = 110
PELVIS = 111
DISC = 112
SPINAL_CANAL = 113
SCAPULA = 114
CLAVICLE = 115
HUMERUS = 116
COSTAL_CARTILAGE = 117

LUNG_LEFT = 120
LUNG_RIGHT = 121
HEART = 122
AORTA = 123
LIVER = 124
SPLEEN = 125
KIDNEY_LEFT = 126
KIDNEY_RIGHT = 127
STOMACH = 128
BOWEL = 129
MUSCLE = 130
SUBCUTANEOUS_FAT = 131
VISCERAL_FAT = 132
SKIN = 133
IVC = 134
AIRWAY = 135
ESOPHAGUS = 136
TABLE = 137

CALIBRATION_BODY = 150
CALIBRATION_ROD_BASE = 151
METAL = 160

NAMES: dict[int, str] = {
    SACRUM: "sacrum",
    STERNUM: "sternum",
    PELVIS: "pelvis",
    DISC: "intervertebral_disc",
    SPINAL_CANAL: "spinal_canal",
    SCAPULA: "scapula",
    CLAVICLE: "clavicle",
    HUMERUS: "humerus",
    COSTAL_CARTILAGE: "costal_cartilage",
    LUNG_LEFT: "lung_left",
    LUNG_RIGHT: "lung_right",
    HEART: "heart",
    AORTA: "aorta",
    LIVER: "liver",
    SPLEEN: "spleen",
    KIDNEY_LEFT: "kidney_left",
    KIDNEY_RIGHT: "kidney_right",
    STOMACH: "stomach",
    BOWEL: "bowel",
    MUSCLE: "muscle",
    SUBCUTANEOUS_FAT: "subcutaneous_fat",
    VISCERAL_FAT: "visceral_fat",
    SKIN: "skin",
    IVC: "inferior_vena_cava",
    AIRWAY: "airway",
    ESOPHAGUS: "esophagus",
    TABLE: "table",
    CALIBRATION_BODY: "calibration_phantom",
    METAL: "metal",
}


def body_shell(level: VertebraLevel) -> int:
    return int(level)


def body_core(level: VertebraLevel) -> int:
    return CORE_OFFSET + int(level)


def posterior(level: VertebraLevel) -> int:
    return POSTERIOR_OFFSET + int(level)


def rib(side: str, number: int) -> int:
    """Label of rib ``number`` (1..13) on ``side`` ('left' or 'right')."""
    if not 1 <= number <= 13:
        raise ValueError(f"rib number must be within 1..13, got {number}")
    if side == "left":
        return LEFT_RIB_BASE + number
    if side == "right":
        return RIGHT_RIB_BASE + number
    raise ValueError(f"side must be 'left' or 'right', got {side!r}")


def body_mask(labels: npt.NDArray[np.integer], level: VertebraLevel) -> npt.NDArray[np.bool_]:
    """Vertebral body of ``level`` including its trabecular core."""
    return (labels == body_shell(level)) | (labels == body_core(level))


def core_mask(labels: npt.NDArray[np.integer], level: VertebraLevel) -> npt.NDArray[np.bool_]:
    return labels == body_core(level)


def is_rib(label: int) -> bool:
    return LEFT_RIB_BASE + 1 <= label <= LEFT_RIB_BASE + 13 or RIGHT_RIB_BASE + 1 <= label <= RIGHT_RIB_BASE + 13


def body_labels_of(labels: npt.NDArray[np.integer]) -> npt.NDArray[np.int16]:
    """Map the phantom labels to one label per vertebral body (VertebraLevel value, 0 elsewhere)."""
    out = np.zeros(labels.shape, dtype=np.int16)
    shell = (labels >= 1) & (labels <= 25)
    out[shell] = labels[shell]
    core = (labels >= CORE_OFFSET + 1) & (labels <= CORE_OFFSET + 25)
    out[core] = labels[core] - CORE_OFFSET
    return out
