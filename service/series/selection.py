"""Which series of a study to screen: among the series that passed the checks, prefer an axial series, then
non-contrast, then a soft-tissue (smooth) kernel, then thin slices, then sagittal over coronal, then more slices.

Order of preference and why:
0. Axial: a sagittal or coronal series is screened only when no axial series of the study passed the checks (the
   studies measured on axial series; a study's sagittal and coronal series are mostly reformats of its axial one:
   the scheduler records them as ignored then).
1. Non-contrast: iodinated contrast raises trabecular HU (Pan 2020, Xiong 2025 report ~+10-30 HU in portal-venous
   phase), so an unenhanced series gives BMD closest to the QCT reference.
2. Soft kernel: sharp (bone/lung) kernels raise the noise and shift the mean HU of trabecular bone; the studies
   measured on standard soft-tissue reconstructions.
3. Thin slices: less partial volume at the endplates and a larger usable trabecular ROI.
4. Among sagittal and coronal series that tie on 1-3 (e.g. two reformats of one acquisition): sagittal first
   (``service.series.planes.PLANE_PREFERENCE``). The plane comes after the rules that change the measured HU, and
   before the slice count, which is not comparable across planes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

import pydicom

from service.series.planes import NON_AXIAL_PLANES, PLANE_PREFERENCE, SlicePlane


class KernelClass(IntEnum):
    SOFT = 0
    UNKNOWN = 1
    SHARP = 2


# Vendor kernel names. Siemens: B/Br/I/Qr/Hr + number (<= 45 soft, >= 50 sharp); GE: STANDARD/SOFT vs BONE/LUNG;
# Philips: A/B/C (soft) vs D/E/L/Y* (sharp); Canon/Toshiba: FC01-FC18 body, FC30+ bone/lung.
SOFT_KERNEL_NAMES = frozenset({"STANDARD", "SOFT", "STND", "SMOOTH", "BODY", "A", "B", "C", "UB", "UA", "UC"})
SHARP_KERNEL_NAMES = frozenset({"BONE", "BONEPLUS", "LUNG", "EDGE", "SHARP", "DETAIL", "D", "E", "L", "YA", "YB",
                                "YC", "YD", "YE", "YF"})
SIEMENS_SHARP_FROM = 50
SIEMENS_SOFT_UP_TO = 45
CANON_SOFT_UP_TO = 18

_SIEMENS_RE = re.compile(r"^(?:B|BR|BV|BF|I|IR|Q|QR|H|HR|J|T)(\d{2})[A-Z]?(?:\s.*)?$")
_CANON_RE = re.compile(r"^FC(\d{2})")
_CONTRAST_WORDS = re.compile(r"\b(?:KM|C\+|CONTRAST|ARTERIAL|ART|VENOUS|PORTAL|PV|NEPHRO|DELAY(?:ED)?|ANGIO|CTA)\b",
                             re.IGNORECASE)
_NON_CONTRAST_WORDS = re.compile(r"\b(?:NATIVE?|NON[- ]?CONTRAST|UNENHANCED|W/O|WO|C-|PLAIN|NC)\b", re.IGNORECASE)


def classify_kernel(kernel: str) -> KernelClass:
    name = kernel.strip().upper()
    if not name:
        return KernelClass.UNKNOWN
    if name in SOFT_KERNEL_NAMES:
        return KernelClass.SOFT
    if name in SHARP_KERNEL_NAMES:
        return KernelClass.SHARP
    match = _SIEMENS_RE.match(name)
    if match:
        number = int(match.group(1))
        if number <= SIEMENS_SOFT_UP_TO:
            return KernelClass.SOFT
        if number >= SIEMENS_SHARP_FROM:
            return KernelClass.SHARP
        return KernelClass.UNKNOWN
    match = _CANON_RE.match(name)
    if match:
        return KernelClass.SOFT if int(match.group(1)) <= CANON_SOFT_UP_TO else KernelClass.SHARP
    if any(word in name for word in ("BONE", "LUNG", "SHARP", "EDGE")):
        return KernelClass.SHARP
    if any(word in name for word in ("SOFT", "STANDARD", "SMOOTH", "BODY")):
        return KernelClass.SOFT
    return KernelClass.UNKNOWN


@dataclass(frozen=True)
class SeriesCandidate:
    series_instance_uid: str
    slice_count: int
    slice_thickness_mm: float | None
    convolution_kernel: str = ""
    contrast: bool = False
    series_description: str = ""
    plane: SlicePlane = SlicePlane.AXIAL
    """The plane of the slices (axial, sagittal or coronal: the planes that pass the checks)."""

    def __post_init__(self) -> None:
        if self.plane not in PLANE_PREFERENCE:
            raise ValueError(f"plane must be one of {sorted(PLANE_PREFERENCE)}, got {self.plane!r}")

    @property
    def kernel_class(self) -> KernelClass:
        return classify_kernel(self.convolution_kernel)

    def sort_key(self) -> tuple[int, int, int, float, int, int, str]:
        thickness = self.slice_thickness_mm if self.slice_thickness_mm is not None else 99.0
        return (int(self.plane in NON_AXIAL_PLANES), int(self.contrast), int(self.kernel_class), thickness,
                PLANE_PREFERENCE[self.plane], -self.slice_count, self.series_instance_uid)

    def describe(self) -> str:
        thickness = f"{self.slice_thickness_mm:g} mm" if self.slice_thickness_mm is not None else "unknown thickness"
        plane = f"{self.plane}, " if self.plane in NON_AXIAL_PLANES else ""
        return (f"{plane}{thickness}, kernel {self.convolution_kernel or '?'} ({self.kernel_class.name.lower()}), "
                f"{'contrast' if self.contrast else 'non-contrast'}, {self.slice_count} slices")


def _multi(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple | pydicom.multival.MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value)


def has_contrast(header: pydicom.Dataset) -> bool:
    """Contrast/bolus attributes present, or a description naming a contrast phase."""
    agent = _multi(header.get("ContrastBolusAgent", "")).strip()
    route = _multi(header.get("ContrastBolusRoute", "")).strip()
    description = _multi(header.get("SeriesDescription", ""))
    if _NON_CONTRAST_WORDS.search(description):
        return False
    if agent or route:
        return agent.upper() not in ("NONE", "NO", "N")
    return bool(_CONTRAST_WORDS.search(description))


def candidate_from_header(header: pydicom.Dataset, slice_count: int, slice_thickness_mm: float | None = None,
                          plane: SlicePlane = SlicePlane.AXIAL) -> SeriesCandidate:
    thickness = slice_thickness_mm
    if thickness is None and header.get("SliceThickness") not in (None, ""):
        try:
            thickness = float(header.SliceThickness)
        except (TypeError, ValueError):
            thickness = None
    return SeriesCandidate(
        series_instance_uid=str(header.SeriesInstanceUID),
        slice_count=slice_count,
        slice_thickness_mm=thickness,
        convolution_kernel=_multi(header.get("ConvolutionKernel", "")),
        contrast=has_contrast(header),
        series_description=_multi(header.get("SeriesDescription", "")),
        plane=plane,
    )


@dataclass(frozen=True)
class Selection:
    selected: SeriesCandidate | None
    not_selected: tuple[tuple[SeriesCandidate, str], ...]
    """Each other candidate with the reason it was not chosen."""


def select_series(candidates: Sequence[SeriesCandidate]) -> Selection:
    """The preferred eligible series of a study (see module doc), and why each other one was not chosen."""
    if not candidates:
        return Selection(None, ())
    ordered = sorted(candidates, key=SeriesCandidate.sort_key)
    best = ordered[0]
    others = tuple((c, f"series {best.series_instance_uid} preferred ({best.describe()} over {c.describe()})")
                   for c in ordered[1:])
    return Selection(best, others)
