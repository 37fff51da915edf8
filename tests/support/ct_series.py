"""The one CT-series writer of the tests and the benchmarks: CT Image Storage files, one per slice.

A series is a stack of stored pixel frames (each ``(rows, columns)``: uint16, int16 or uint8; the dtype gives Bits
Allocated and Pixel Representation) plus a ``CTSeriesHeader`` with what every slice shares (UIDs, orientation,
pixel spacing, rescale, extra attributes by DICOM keyword, attributes to leave out, transfer syntax).  Slice k lies
at ``origin + normal * slice_step * k`` (normal = row direction x column direction) unless the positions are
given one by one (gantry tilt, gaps, duplicates).  ``ct_slice`` builds one slice as a dataset (header tests).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

AXIAL: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
"""ImageOrientationPatient of a head-first supine axial series (rows +L, columns +P, normal +S)."""
UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
TRANSFER_SYNTAXES = (*UNCOMPRESSED, RLELossless, JPEG2000Lossless)
"""What the writer encodes: native pixel data, or compressed by pydicom (RLE) or its pylibjpeg plugin (JPEG 2000)."""
DEFAULT_HEADER: Mapping[str, Any] = MappingProxyType({
    "PatientName": "TEST^PATIENT",
    "PatientID": "TEST-ID-1",
    "PatientBirthDate": "19500101",
    "PatientSex": "F",
    "StudyDate": "20260101",
    "StudyTime": "120000",
    "AccessionNumber": "ACC1",
    "ReferringPhysicianName": "",
    "StudyID": "1",
    "SeriesNumber": 1,
    "KVP": 120,
    "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"],
})
"""Patient, study and series attributes every slice gets unless ``CTSeriesHeader.extra`` says otherwise."""
PIXEL_TYPES: Mapping[np.dtype[Any], tuple[int, int]] = MappingProxyType({
    np.dtype(np.uint8): (8, 0),
    np.dtype(np.uint16): (16, 0),
    np.dtype(np.int16): (16, 1),
})
"""Frame dtype -> (BitsAllocated, PixelRepresentation)."""


@dataclass(frozen=True)
class CTSeriesHeader:
    """What every slice of one series shares (all but pixels, position, instance number and SOP Instance UID)."""

    study_instance_uid: str = field(default_factory=generate_uid)
    series_instance_uid: str = field(default_factory=generate_uid)
    frame_of_reference_uid: str = field(default_factory=generate_uid)
    orientation: Sequence[float] = AXIAL
    """ImageOrientationPatient: row direction, then column direction (unit vectors, LPS)."""
    pixel_spacing_mm: tuple[float, float] = (1.0, 1.0)
    """PixelSpacing as DICOM orders it: (row spacing = between rows, column spacing = between columns)."""
    slice_thickness_mm: float = 2.0
    rescale_intercept: float | None = -1024.0
    """RescaleIntercept with slope 1 and type HU; None writes no Rescale attributes."""
    bits_stored: int | None = None
    """BitsStored; None: all the allocated bits."""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Attributes by DICOM keyword, over ``DEFAULT_HEADER`` and the geometry (Modality, SOPClassUID ... too)."""
    omit: tuple[str, ...] = ()
    """Keywords removed from every slice at the end (a header a test wants missing)."""
    private: tuple[tuple[int, int, str, Any], ...] = ()
    """Private (or any) elements by tag: (group, element, VR, value), e.g. a creator (0x0029, 0x0010, "LO",
    "SIEMENS CSA HEADER") and its block (0x0029, 0x1010, "OB", bytes); added after ``extra``."""
    transfer_syntax_uid: str = ExplicitVRLittleEndian

    def __post_init__(self) -> None:
        if len(self.orientation) != 6:
            raise ValueError(f"orientation must have 6 values, got {len(self.orientation)}")
        if len(self.pixel_spacing_mm) != 2 or min(self.pixel_spacing_mm) <= 0:
            raise ValueError(f"pixel_spacing_mm must be two positive values, got {self.pixel_spacing_mm}")
        if self.slice_thickness_mm <= 0:
            raise ValueError(f"slice_thickness_mm must be positive, got {self.slice_thickness_mm}")
        if self.bits_stored is not None and not 1 <= self.bits_stored <= 16:
            raise ValueError(f"bits_stored must be 1-16, got {self.bits_stored}")
        if self.transfer_syntax_uid not in TRANSFER_SYNTAXES:
            raise ValueError(f"transfer_syntax_uid must be one of {TRANSFER_SYNTAXES}, got {self.transfer_syntax_uid}")

    @property
    def normal(self) -> npt.NDArray[np.float64]:
        """Slice normal (row direction x column direction): the direction slice positions advance along."""
        return np.cross(np.asarray(self.orientation[:3], dtype=float), np.asarray(self.orientation[3:], dtype=float))


def instance_file_name(k: int) -> str:
    """Default file name of slice k: its instance number, ``0001.dcm`` ..."""
    return f"{k + 1:04d}.dcm"


def _attributes(header: CTSeriesHeader, sop_instance_uid: str, instance_number: int,
                position_lps_mm: Sequence[float]) -> dict[str, Any]:
    values: dict[str, Any] = {
        "SOPClassUID": CTImageStorage,
        "SOPInstanceUID": sop_instance_uid,
        "StudyInstanceUID": header.study_instance_uid,
        "SeriesInstanceUID": header.series_instance_uid,
        "FrameOfReferenceUID": header.frame_of_reference_uid,
        "Modality": "CT",
        **DEFAULT_HEADER,
        "InstanceNumber": instance_number,
        "ImagePositionPatient": [float(v) for v in position_lps_mm],
        "ImageOrientationPatient": [float(v) for v in header.orientation],
        "PixelSpacing": [float(v) for v in header.pixel_spacing_mm],
        "SliceThickness": float(header.slice_thickness_mm),
    }
    if header.rescale_intercept is not None:
        values.update(RescaleIntercept=header.rescale_intercept, RescaleSlope=1, RescaleType="HU")
    values.update(header.extra)
    return values


def ct_slice(frame: npt.NDArray[Any], header: CTSeriesHeader, *, instance_number: int,
             position_lps_mm: Sequence[float], sop_instance_uid: str | None = None) -> Dataset:
    """One slice of the series as a dataset with file meta, encoded in ``header.transfer_syntax_uid``."""
    pixels = np.ascontiguousarray(frame)
    if pixels.ndim != 2:
        raise ValueError(f"frame must be 2-D (rows, columns), got shape {pixels.shape}")
    if pixels.dtype not in PIXEL_TYPES:
        raise ValueError(f"frame dtype must be one of {[str(t) for t in PIXEL_TYPES]}, got {pixels.dtype}")
    bits_allocated, representation = PIXEL_TYPES[pixels.dtype]
    ds = Dataset()
    for keyword, value in _attributes(header, sop_instance_uid or generate_uid(), instance_number,
                                      position_lps_mm).items():
        setattr(ds, keyword, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.PixelRepresentation = bits_allocated, representation
    ds.BitsStored = header.bits_stored or bits_allocated
    ds.HighBit = ds.BitsStored - 1
    if header.transfer_syntax_uid in UNCOMPRESSED:
        ds.file_meta.TransferSyntaxUID = header.transfer_syntax_uid
        ds.PixelData = pixels.tobytes()
    else:
        ds.compress(header.transfer_syntax_uid, pixels)
    for group, element, vr, value in header.private:
        ds.add_new((group, element), vr, value)
    for keyword in header.omit:
        if keyword in ds:
            delattr(ds, keyword)
    return ds


def write_ct_series(folder: Path, frames: Iterable[npt.NDArray[Any]], header: CTSeriesHeader | None = None, *,
                    origin_lps_mm: Sequence[float] = (0.0, 0.0, 0.0), slice_step_mm: float | None = None,
                    positions_lps_mm: Sequence[Sequence[float]] | None = None,
                    sop_instance_uids: Sequence[str] | None = None,
                    slice_extra: Sequence[Mapping[str, Any]] | None = None,
                    file_name: Callable[[int], str] = instance_file_name) -> list[Path]:
    """Write one file per frame (slice k = the k-th frame, InstanceNumber k + 1) under ``folder``; the paths in
    slice order.

    ``slice_step_mm``: distance between neighbouring slice positions along the normal (negative: positions go
    against it), by default the slice thickness; ``positions_lps_mm`` instead gives every ImagePositionPatient.
    ``slice_extra[k]``: attributes by keyword for slice k only, over ``header.extra`` (per-instance Frame of
    Reference UIDs, AcquisitionNumber, AcquisitionTime, InstanceNumber ...).
    ``frames`` may be a generator (a large series is never held in memory) or a 3-D array ``(slices, rows,
    columns)``, i.e. ``stored.T`` of a CTVolume-ordered ``(columns, rows, slices)`` array.
    """
    header = header or CTSeriesHeader()
    folder.mkdir(parents=True, exist_ok=True)
    step = header.slice_thickness_mm if slice_step_mm is None else slice_step_mm
    origin = np.asarray(origin_lps_mm, dtype=float)
    paths = []
    for k, frame in enumerate(frames):
        position = positions_lps_mm[k] if positions_lps_mm is not None else origin + header.normal * (step * k)
        sop_instance_uid = sop_instance_uids[k] if sop_instance_uids is not None else None
        slice_header = header if slice_extra is None else replace(header, extra={**header.extra, **slice_extra[k]})
        ds = ct_slice(frame, slice_header, instance_number=k + 1, position_lps_mm=position,
                      sop_instance_uid=sop_instance_uid)
        path = folder / file_name(k)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
