"""Every assumption about an incoming CT series, checked once.

``check_series`` looks at headers (pixel data only to tell re-sent copies at one position apart, when the datasets
carry it) and returns the geometry the loader needs, or the reasons the series cannot be used. Which instances form
the stack (copies, two acquisitions, missing slices, tilt) is decided in ``service.series.stacks``; the loader loads
``order``, which may be a subset, each left-out part named in ``warnings`` (localizer images among the slices are
left out too). Axial, sagittal and coronal stacks pass (``plane`` names which, ``service.series.planes``; a sagittal
or coronal one carries a note into the result); an oblique stack is rejected. A failure is a recorded reason, never
a crash.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt
import pydicom

from service.series.multiframe import MULTIFRAME_CT_SOP_CLASSES, frame_number
from service.series.planes import (
    ANALYSED_PLANES,
    NON_AXIAL_PLANES,
    SlicePlane,
    non_axial_note,
    oblique_reason,
    slice_plane,
)
from service.series.stacks import Planes, StackLimits, choose_stack

logger = logging.getLogger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
CT_SOP_CLASSES = frozenset({CT_IMAGE_STORAGE, *MULTIFRAME_CT_SOP_CLASSES})
"""CT Image Storage, and the multi-frame CT classes as frames expanded by ``service.series.multiframe``."""

MIN_SLICES_DEFAULT = 10
"""Fewer slices than this cannot hold a vertebral body at 5 mm (a lumbar body is ~25 mm high)."""
MAX_SLICE_THICKNESS_MM_DEFAULT = 5.0
MAX_MATRIX = 4096
"""Largest Rows or Columns analysed: CT is reconstructed at 512 x 512, high-resolution scanners at 1024 or 2048;
a larger value is a corrupt or hostile header (a 30000 x 30000 slice alone would need 1.8 GB as int16)."""
"""Thicker slices blur trabecular HU too much (the studies used <= 5 mm reconstructions)."""
ORIENTATION_TOLERANCE = 1e-3
"""Max difference between direction cosines of slices of one series."""


@dataclass(frozen=True)
class SeriesCheck:
    ok: bool
    reasons: tuple[str, ...] = ()
    """Why the series is not usable (empty when ok)."""
    slice_count: int = 0
    """Slices used (``len(order)``) when ok; the instances given otherwise."""
    slice_thickness_mm: float | None = None
    slice_spacing_mm: float | None = None
    order: tuple[int, ...] = ()
    """Indices into the headers given, sorted along the slice normal (increasing k): the instances to load, a subset
    when copies, another acquisition or the part beyond a gap were left out (each named in ``warnings``)."""
    warnings: tuple[str, ...] = field(default_factory=tuple)
    plane: SlicePlane | None = None
    """The plane of the slices (first orientation); None when the geometry could not be read."""

    def __post_init__(self) -> None:
        if self.ok == bool(self.reasons):
            raise ValueError(f"ok={self.ok} contradicts the reasons {self.reasons}")
        if self.ok and (not self.order or self.slice_count != len(self.order)):
            raise ValueError(f"an ok check needs order with slice_count entries, got {self.slice_count} and "
                             f"{len(self.order)}")
        if len(set(self.order)) != len(self.order) or any(i < 0 for i in self.order):
            raise ValueError("order must hold distinct non-negative indices")

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
    """Check that the datasets form one regular, untilted CT stack in the axial, sagittal or coronal plane.
    Localizer (scout) images among the slices are left out (named in ``warnings``); a series of localizers only is
    rejected."""
    n = len(headers)
    if n == 0:
        return SeriesCheck(ok=False, reasons=("no instances",))
    reasons = _kind_reasons(headers)
    if reasons:
        return SeriesCheck(ok=False, reasons=tuple(reasons), slice_count=n)
    images = [i for i, h in enumerate(headers) if not _is_localizer(h)]
    if not images:
        return SeriesCheck(ok=False, reasons=("localizer (scout) images",), slice_count=n)
    if len(images) == n:
        return _check_images(headers, min_slices, max_slice_thickness_mm)
    check = _check_images([headers[i] for i in images], min_slices, max_slice_thickness_mm)
    left_out = f"{n - len(images)} localizer image(s) left out (scout images are not part of the stack)"
    return replace(check, slice_count=check.slice_count if check.ok else n,
                   order=tuple(images[k] for k in check.order), warnings=(left_out, *check.warnings))


def _check_images(headers: Sequence[pydicom.Dataset], min_slices: int,
                  max_slice_thickness_mm: float) -> SeriesCheck:
    """The checks of one series' images (no localizers): instances, planes, the stack, the Frame of Reference."""
    n = len(headers)
    reasons = _instance_reasons(headers)
    plane_reasons, planes = _read_planes(headers)
    reasons += plane_reasons
    if planes is None:
        return SeriesCheck(ok=False, reasons=tuple(reasons), slice_count=n)
    plane = slice_plane(planes.normal)
    if plane not in ANALYSED_PLANES:  # an oblique stack: the plane is the reason, the stack is not looked at
        return SeriesCheck(ok=False, reasons=tuple(reasons), slice_count=n, plane=plane)
    stack = choose_stack(headers, planes, StackLimits(min_slices, max_slice_thickness_mm))
    reasons += stack.reasons
    frame_reasons, frame_warnings = _frame_of_reference(headers, stack.indices, geometry_consistent=not plane_reasons)
    reasons += frame_reasons
    ok = not reasons
    return SeriesCheck(
        ok=ok,
        reasons=tuple(reasons),
        slice_count=len(stack.indices) if ok else n,
        slice_thickness_mm=stack.thickness_mm,
        slice_spacing_mm=stack.spacing_mm,
        order=stack.indices,
        warnings=(*stack.warnings, *frame_warnings, *([non_axial_note(plane)] if ok and plane in NON_AXIAL_PLANES
                                                      else [])),
        plane=plane,
    )


def _frame_of_reference(headers: Sequence[pydicom.Dataset], order: Sequence[int], *,
                        geometry_consistent: bool) -> tuple[list[str], list[str]]:
    """One Frame of Reference, or one per instance with one consistent geometry (de-identification gives each
    instance its own): then a warning, and the result objects reference the first slice's (the loader takes the
    first ordered header's)."""
    frames = [str(getattr(h, "FrameOfReferenceUID", "") or "") for h in headers]
    missing = frames.count("")
    if missing == len(frames):
        return ["expected one Frame of Reference, found 0"], []
    if missing:
        return [f"FrameOfReferenceUID missing on {missing} of {len(frames)} instances"], []
    distinct = len(set(frames))
    if distinct == 1:
        return [], []
    if not geometry_consistent:
        return [f"expected one Frame of Reference, found {distinct} (with inconsistent geometry)"], []
    used = len({frames[i] for i in order})
    if used <= 1:
        return [], []
    return [], [f"{used} Frame of Reference UIDs in the {len(order)} slices used (one orientation and pixel "
                f"spacing, a regular stack: consistent geometry, e.g. one UID per instance after "
                f"de-identification); the result objects reference the first slice's in slice order"]


def _kind_reasons(headers: Sequence[pydicom.Dataset]) -> list[str]:
    """Is it one CT series of images (CT Image Storage, or frames of Enhanced / Legacy Converted Enhanced CT)?
    Nothing else is looked at if not."""
    reasons: list[str] = []
    sop_classes = {str(getattr(h, "SOPClassUID", "")) for h in headers}
    if sop_classes - CT_SOP_CLASSES:
        reasons.append(f"not CT Image Storage: SOP classes {sorted(sop_classes)}")
    modalities = {str(getattr(h, "Modality", "")) for h in headers}
    if modalities != {"CT"}:
        reasons.append(f"modality is {sorted(modalities)}, expected CT")
    series_uids = {str(getattr(h, "SeriesInstanceUID", "")) for h in headers}
    if len(series_uids) != 1:
        reasons.append(f"instances of {len(series_uids)} series were given as one")
    return reasons


def _is_localizer(header: pydicom.Dataset) -> bool:
    """ImageType names LOCALIZER (a scout/topogram: a projection image, never a slice of the stack)."""
    return "LOCALIZER" in [str(v).upper() for v in header.get("ImageType", None) or []]


def _instance_reasons(headers: Sequence[pydicom.Dataset]) -> list[str]:
    """Unique slices (single-frame instances, or frames of multi-frame instances) with a rescale to HU, one image
    size."""
    reasons: list[str] = []
    slice_ids = {(str(getattr(h, "SOPInstanceUID", "")), frame_number(h)) for h in headers}
    if len(slice_ids) != len(headers):
        reasons.append("duplicate SOP Instance UIDs")
    if any(int(getattr(h, "NumberOfFrames", 1) or 1) > 1 for h in headers):
        reasons.append("multi-frame images not expanded into frames (read them with "
                       "service.series.volume_loader.read_headers)")
    if any(getattr(h, "RescaleSlope", None) is None or getattr(h, "RescaleIntercept", None) is None for h in headers):
        reasons.append("RescaleSlope/RescaleIntercept missing: HU cannot be computed")
    shapes = {(int(getattr(h, "Rows", 0)), int(getattr(h, "Columns", 0))) for h in headers}
    if len(shapes) != 1:
        reasons.append(f"slices differ in size: {sorted(shapes)}")
    too_large = sorted(shape for shape in shapes if max(shape) > MAX_MATRIX)
    if too_large:
        reasons.append(f"image size {too_large[-1][0]} x {too_large[-1][1]} exceeds {MAX_MATRIX} x {MAX_MATRIX} "
                       "(no CT reconstruction is that large: refused before loading)")
    return reasons


def _read_planes(headers: Sequence[pydicom.Dataset]) -> tuple[list[str], Planes | None]:
    """One orientation and pixel spacing, not oblique; None planes when the geometry cannot be read at all."""
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
    if slice_plane(normal) not in ANALYSED_PLANES:
        reasons.append(oblique_reason())
    return reasons, Planes(normal=normal, positions=np.asarray(positions))
