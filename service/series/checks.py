"""Every assumption about an incoming CT series, checked once.

``check_series`` looks only at headers (no pixel data) and returns the geometry the loader needs, or the
reasons the series cannot be used. A failure is a recorded reason, never a crash.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pydicom

logger = logging.getLogger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"

MIN_SLICES_DEFAULT = 10
"""Fewer slices than this cannot hold a vertebral body at 5 mm (a lumbar body is ~25 mm high)."""
MAX_SLICE_THICKNESS_MM_DEFAULT = 5.0
"""Thicker slices blur trabecular HU too much (the studies used <= 5 mm reconstructions)."""
ORIENTATION_TOLERANCE = 1e-3
"""Max difference between direction cosines of slices of one series."""
SPACING_TOLERANCE_MM = 0.05
SPACING_TOLERANCE_FRACTION = 0.05
"""Slice spacing is regular when every gap is within max(0.05 mm, 5 %) of the median gap."""
MAX_TILT_DEGREES = 0.5
"""Angle between the slice normal and the line through the slice positions above which the series is tilted."""


@dataclass(frozen=True)
class SeriesCheck:
    ok: bool
    reasons: tuple[str, ...] = ()
    """Why the series is not usable (empty when ok)."""
    slice_count: int = 0
    slice_thickness_mm: float | None = None
    slice_spacing_mm: float | None = None
    order: tuple[int, ...] = ()
    """Indices into the headers given, sorted along the slice normal (increasing k)."""
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


def _float_list(value: object, count: int) -> list[float] | None:
    try:
        values = [float(v) for v in value]  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        return None
    return values if len(values) == count else None


def slice_normal(orientation: Sequence[float]) -> npt.NDArray[np.float64]:
    row = np.asarray(orientation[:3], dtype=np.float64)
    col = np.asarray(orientation[3:], dtype=np.float64)
    normal = np.cross(row, col)
    return normal / np.linalg.norm(normal)


def check_series(
    headers: Sequence[pydicom.Dataset],
    *,
    min_slices: int = MIN_SLICES_DEFAULT,
    max_slice_thickness_mm: float = MAX_SLICE_THICKNESS_MM_DEFAULT,
) -> SeriesCheck:
    """Check that the datasets form one regular, untilted, axial-stack CT volume."""
    n = len(headers)
    if n == 0:
        return SeriesCheck(ok=False, reasons=("no instances",))
    reasons = _kind_reasons(headers)
    if reasons:
        return SeriesCheck(ok=False, reasons=tuple(reasons), slice_count=n)
    reasons += _instance_reasons(headers)
    plane_reasons, planes = _read_planes(headers)
    reasons += plane_reasons
    if planes is None:
        return SeriesCheck(ok=False, reasons=tuple(reasons), slice_count=n)
    if n < min_slices:
        reasons.append(f"only {n} slices (at least {min_slices} needed)")
    order, spacing, stack_reasons = _stack_order(planes)
    reasons += stack_reasons
    thickness, thickness_reasons, warnings = _thickness(headers, spacing, max_slice_thickness_mm)
    reasons += thickness_reasons
    return SeriesCheck(
        ok=not reasons,
        reasons=tuple(reasons),
        slice_count=n,
        slice_thickness_mm=thickness,
        slice_spacing_mm=spacing,
        order=tuple(int(i) for i in order),
        warnings=tuple(warnings),
    )


def _kind_reasons(headers: Sequence[pydicom.Dataset]) -> list[str]:
    """Is it one classic CT Image Storage series of images (not a localizer)? Nothing else is looked at if not."""
    reasons: list[str] = []
    sop_classes = {str(getattr(h, "SOPClassUID", "")) for h in headers}
    if ENHANCED_CT_IMAGE_STORAGE in sop_classes:
        reasons.append("Enhanced CT (multi-frame) is not supported; send the classic CT Image Storage series")
    if sop_classes - {CT_IMAGE_STORAGE, ENHANCED_CT_IMAGE_STORAGE}:
        reasons.append(f"not CT Image Storage: SOP classes {sorted(sop_classes)}")
    modalities = {str(getattr(h, "Modality", "")) for h in headers}
    if modalities != {"CT"}:
        reasons.append(f"modality is {sorted(modalities)}, expected CT")
    series_uids = {str(getattr(h, "SeriesInstanceUID", "")) for h in headers}
    if len(series_uids) != 1:
        reasons.append(f"instances of {len(series_uids)} series were given as one")
    for h in headers:
        image_type = [str(v).upper() for v in getattr(h, "ImageType", [])]
        if "LOCALIZER" in image_type:
            reasons.append("localizer (scout) images")
            break
    return reasons


def _instance_reasons(headers: Sequence[pydicom.Dataset]) -> list[str]:
    """Unique single-frame instances with a rescale to HU, one Frame of Reference, one image size."""
    reasons: list[str] = []
    sop_uids = [str(getattr(h, "SOPInstanceUID", "")) for h in headers]
    if len(set(sop_uids)) != len(headers):
        reasons.append("duplicate SOP Instance UIDs")
    if any(int(getattr(h, "NumberOfFrames", 1) or 1) > 1 for h in headers):
        reasons.append("multi-frame images")
    if any(getattr(h, "RescaleSlope", None) is None or getattr(h, "RescaleIntercept", None) is None for h in headers):
        reasons.append("RescaleSlope/RescaleIntercept missing: HU cannot be computed")
    frames = {str(getattr(h, "FrameOfReferenceUID", "")) for h in headers}
    if len(frames) != 1 or frames == {""}:
        reasons.append(f"expected one Frame of Reference, found {len(frames - {''})}")
    shapes = {(int(getattr(h, "Rows", 0)), int(getattr(h, "Columns", 0))) for h in headers}
    if len(shapes) != 1:
        reasons.append(f"slices differ in size: {sorted(shapes)}")
    return reasons


@dataclass(frozen=True, eq=False)
class _Planes:
    normal: npt.NDArray[np.float64]
    """Unit slice normal of the (first) orientation."""
    positions: npt.NDArray[np.float64]
    """(n, 3) ImagePositionPatient of each header, in the order given."""


def _read_planes(headers: Sequence[pydicom.Dataset]) -> tuple[list[str], _Planes | None]:
    """One orientation and pixel spacing, an axial stack; None planes when the geometry cannot be read at all."""
    reasons: list[str] = []
    orientations: list[list[float]] = []
    positions: list[list[float]] = []
    spacings: list[list[float]] = []
    for h in headers:
        iop = _float_list(getattr(h, "ImageOrientationPatient", None), 6)
        ipp = _float_list(getattr(h, "ImagePositionPatient", None), 3)
        ps = _float_list(getattr(h, "PixelSpacing", None), 2)
        if iop is None or ipp is None or ps is None:
            return ["ImageOrientationPatient, ImagePositionPatient or PixelSpacing missing or malformed"], None
        orientations.append(iop)
        positions.append(ipp)
        spacings.append(ps)
    iop_array = np.asarray(orientations)
    if np.max(np.abs(iop_array - iop_array[0])) > ORIENTATION_TOLERANCE:
        reasons.append("slices have more than one orientation")
    ps_array = np.asarray(spacings)
    if np.max(np.abs(ps_array - ps_array[0])) > 1e-4:
        reasons.append("slices have more than one pixel spacing")
    if np.any(ps_array <= 0):
        reasons.append(f"PixelSpacing must be positive, got {ps_array[0].tolist()}")
    row, col = iop_array[0, :3], iop_array[0, 3:]
    if abs(np.linalg.norm(row) - 1) > 0.01 or abs(np.linalg.norm(col) - 1) > 0.01 or abs(float(row @ col)) > 0.01:
        reasons.append("ImageOrientationPatient is not two orthogonal unit vectors")
        return reasons, None
    normal = slice_normal(iop_array[0])
    if abs(normal[2]) < 0.8:
        reasons.append("not an axial stack (slice normal is not head-foot)")
    return reasons, _Planes(normal=normal, positions=np.asarray(positions))


def _stack_order(planes: _Planes) -> tuple[npt.NDArray[np.intp], float | None, list[str]]:
    """Order along the normal, the median slice spacing (None for one slice or duplicate positions) and the
    reasons: duplicate positions, irregular spacing (missing slices), gantry tilt."""
    reasons: list[str] = []
    ipp_array = planes.positions
    normal = planes.normal
    projections = ipp_array @ normal
    order = np.argsort(projections, kind="stable")
    sorted_proj = projections[order]
    spacing: float | None = None
    if len(ipp_array) >= 2:
        gaps = np.diff(sorted_proj)
        if np.any(gaps < 1e-3):
            reasons.append("duplicate slice positions")
        else:
            spacing = float(np.median(gaps))
            tolerance = max(SPACING_TOLERANCE_MM, SPACING_TOLERANCE_FRACTION * spacing)
            if np.max(np.abs(gaps - spacing)) > tolerance:
                reasons.append(
                    f"irregular slice spacing: gaps from {gaps.min():.2f} to {gaps.max():.2f} mm (missing slices?)"
                )
            line = ipp_array[order[-1]] - ipp_array[order[0]]
            length = float(np.linalg.norm(line))
            if length > 0:
                cos_angle = abs(float(line @ normal)) / length
                tilt_deg = float(np.degrees(np.arccos(min(1.0, cos_angle))))
                if tilt_deg > MAX_TILT_DEGREES:
                    reasons.append(f"gantry tilt of {tilt_deg:.1f} degrees")
    return order, spacing, reasons


def _thickness(headers: Sequence[pydicom.Dataset], spacing: float | None,
               max_slice_thickness_mm: float) -> tuple[float | None, list[str], list[str]]:
    """Slice thickness (median SliceThickness, else the spacing) with its reasons and warnings."""
    reasons: list[str] = []
    warnings: list[str] = []
    thickness_values = [float(getattr(h, "SliceThickness", 0) or 0) for h in headers]
    thickness = float(np.median(thickness_values)) if any(thickness_values) else None
    if thickness is None:
        thickness = spacing
        if thickness is not None:
            warnings.append("SliceThickness missing; using slice spacing")
    if thickness is not None and thickness > max_slice_thickness_mm + 1e-6:
        reasons.append(f"slice thickness {thickness:.1f} mm exceeds {max_slice_thickness_mm:.1f} mm")
    if spacing is not None and thickness is not None and spacing > thickness * 2.0 + 0.01:
        warnings.append(f"slice spacing {spacing:.2f} mm is more than twice the thickness (gaps between slices)")
    return thickness, reasons, warnings
