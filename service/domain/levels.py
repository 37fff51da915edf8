"""Vertebral levels: an ordered enumeration from C1 to S1.

The integer value is also the label value used for that level's vertebral body in
every label map the project writes or reads internally (``SpineSegmentation.body_labels``,
the phantom's ``labels.nii.gz``), so ``VertebraLevel(label_value)`` is the inverse.
"""

from __future__ import annotations

from enum import IntEnum


class VertebraLevel(IntEnum):
    C1 = 1
    C2 = 2
    C3 = 3
    C4 = 4
    C5 = 5
    C6 = 6
    C7 = 7
    T1 = 8
    T2 = 9
    T3 = 10
    T4 = 11
    T5 = 12
    T6 = 13
    T7 = 14
    T8 = 15
    T9 = 16
    T10 = 17
    T11 = 18
    T12 = 19
    L1 = 20
    L2 = 21
    L3 = 22
    L4 = 23
    L5 = 24
    S1 = 25

    @property
    def region(self) -> str:
        """``cervical``, ``thoracic``, ``lumbar`` or ``sacral``."""
        if self.value <= 7:
            return "cervical"
        if self.value <= 19:
            return "thoracic"
        if self.value <= 24:
            return "lumbar"
        return "sacral"

    @property
    def xiong_index(self) -> int | None:
        """Level number on the Xiong 2025 thoracolumbar curve: T5 = 1 ... L2 = 10, else None."""
        if VertebraLevel.T5 <= self <= VertebraLevel.L2:
            return int(self.value) - int(VertebraLevel.T5) + 1
        return None

    @classmethod
    def from_name(cls, name: str) -> VertebraLevel:
        """Parse ``"L1"`` (case-insensitive); raises ValueError naming the input."""
        try:
            return cls[name.strip().upper()]
        except KeyError:
            raise ValueError(f"unknown vertebra level {name!r}; expected C1..C7, T1..T12, L1..L5 or S1") from None

    def shifted(self, offset: int) -> VertebraLevel | None:
        """The level ``offset`` positions caudal (positive) or cranial (negative), or None past the ends."""
        value = int(self.value) + offset
        if value < 1 or value > 25:
            return None
        return VertebraLevel(value)


THORACOLUMBAR_LEVELS: tuple[VertebraLevel, ...] = tuple(
    VertebraLevel(v) for v in range(VertebraLevel.T1, VertebraLevel.L5 + 1)
)
"""T1..L5: the levels the screening pipeline measures."""

XIONG_CURVE_LEVELS: tuple[VertebraLevel, ...] = tuple(
    VertebraLevel(v) for v in range(VertebraLevel.T5, VertebraLevel.L2 + 1)
)
"""T5..L2: the levels of the Xiong 2025 thoracic-to-lumbar calibration curve."""

# TotalSegmentator v2 class ids (see ../shared/data/README.md) <-> levels.
TOTALSEG_V2_VERTEBRA_IDS: dict[int, VertebraLevel] = {
    26: VertebraLevel.S1,
    27: VertebraLevel.L5,
    28: VertebraLevel.L4,
    29: VertebraLevel.L3,
    30: VertebraLevel.L2,
    31: VertebraLevel.L1,
    32: VertebraLevel.T12,
    33: VertebraLevel.T11,
    34: VertebraLevel.T10,
    35: VertebraLevel.T9,
    36: VertebraLevel.T8,
    37: VertebraLevel.T7,
    38: VertebraLevel.T6,
    39: VertebraLevel.T5,
    40: VertebraLevel.T4,
    41: VertebraLevel.T3,
    42: VertebraLevel.T2,
    43: VertebraLevel.T1,
    44: VertebraLevel.C7,
    45: VertebraLevel.C6,
    46: VertebraLevel.C5,
    47: VertebraLevel.C4,
    48: VertebraLevel.C3,
    49: VertebraLevel.C2,
    50: VertebraLevel.C1,
}
TOTALSEG_V2_SACRUM_ID = 25
TOTALSEG_V2_RIB_IDS: tuple[int, ...] = tuple(range(92, 116))  # left 1-12 = 92..103, right 1-12 = 104..115
