"""The one CT-series writer of the tests and the benchmarks: CT Image Storage files, one per slice.

A series is a stack of stored pixel frames (each ``(rows, columns)``: uint16, int16 or uint8; the dtype gives Bits
Allocated and Pixel Representation) plus a ``CTSeriesHeader`` with what every slice shares (UIDs, orientation,
pixel spacing, rescale, extra attributes by DICOM keyword, attributes to leave out, transfer syntax).  Slice k lies
at ``origin + normal * slice_step * k`` (normal = row direction x column direction) unless the positions are
given one by one (gantry tilt, gaps, duplicates).  ``ct_slice`` builds one slice as a dataset (header tests).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt
from highdicom.legacy import LegacyConvertedEnhancedCTImage
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    EnhancedCTImageStorage,
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
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, ds in enumerate(ct_slices(frames, header, origin_lps_mm=origin_lps_mm, slice_step_mm=slice_step_mm,
                                     positions_lps_mm=positions_lps_mm, sop_instance_uids=sop_instance_uids,
                                     slice_extra=slice_extra)):
        path = folder / file_name(k)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def ct_slices(frames: Iterable[npt.NDArray[Any]], header: CTSeriesHeader | None = None, *,
              origin_lps_mm: Sequence[float] = (0.0, 0.0, 0.0), slice_step_mm: float | None = None,
              positions_lps_mm: Sequence[Sequence[float]] | None = None,
              sop_instance_uids: Sequence[str] | None = None,
              slice_extra: Sequence[Mapping[str, Any]] | None = None) -> Iterator[Dataset]:
    """The datasets ``write_ct_series`` writes (same arguments), one at a time."""
    header = header or CTSeriesHeader()
    step = header.slice_thickness_mm if slice_step_mm is None else slice_step_mm
    origin = np.asarray(origin_lps_mm, dtype=float)
    for k, frame in enumerate(frames):
        position = positions_lps_mm[k] if positions_lps_mm is not None else origin + header.normal * (step * k)
        sop_instance_uid = sop_instance_uids[k] if sop_instance_uids is not None else None
        slice_header = header if slice_extra is None else replace(header, extra={**header.extra, **slice_extra[k]})
        yield ct_slice(frame, slice_header, instance_number=k + 1, position_lps_mm=position,
                       sop_instance_uid=sop_instance_uid)


MULTIFRAME_KINDS = ("enhanced", "legacy")
"""``write_multiframe_ct_series`` kinds: Enhanced CT Image Storage written here with pydicom (shared and per-frame
functional groups), or Legacy Converted Enhanced CT Image Storage made by highdicom's converter (an independent
implementation) from the single-frame datasets."""
_PER_FRAME_KEYWORDS = (
    "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness", "RescaleIntercept",
    "RescaleSlope", "RescaleType", "InstanceNumber", "ImageType", "AcquisitionNumber", "AcquisitionDate",
    "AcquisitionTime", "KVP", "ConvolutionKernel", "PixelData", "SOPInstanceUID", "SOPClassUID",
    "ContrastBolusAgent", "ContrastBolusRoute", "ContentDate", "ContentTime", "WindowCenter", "WindowWidth",
)
"""Single-frame attributes that live in functional groups (or are replaced) in an Enhanced CT instance."""


def write_multiframe_ct_series(folder: Path, frames: Iterable[npt.NDArray[Any]],
                               header: CTSeriesHeader | None = None, *, kind: str = "enhanced",
                               instances: Sequence[Sequence[int]] | None = None,
                               origin_lps_mm: Sequence[float] = (0.0, 0.0, 0.0), slice_step_mm: float | None = None,
                               positions_lps_mm: Sequence[Sequence[float]] | None = None,
                               slice_extra: Sequence[Mapping[str, Any]] | None = None) -> list[Path]:
    """The series ``write_ct_series`` writes with the same arguments (same slices: pixels, positions, rescale,
    ``slice_extra``), stored as multi-frame instances ``0001.dcm`` ...: file i holds the slices ``instances[i]``
    as its frames, in that order (default: one instance, slices in order). Native (uncompressed) pixel data or, for
    ``enhanced``, ``header.transfer_syntax_uid`` compressed per frame. The legacy converter orders the frames
    itself."""
    if kind not in MULTIFRAME_KINDS:
        raise ValueError(f"kind must be one of {MULTIFRAME_KINDS}, got {kind!r}")
    header = header or CTSeriesHeader()
    slices = list(ct_slices(frames, replace(header, transfer_syntax_uid=ExplicitVRLittleEndian),
                            origin_lps_mm=origin_lps_mm, slice_step_mm=slice_step_mm,
                            positions_lps_mm=positions_lps_mm, slice_extra=slice_extra))
    groups = [list(g) for g in instances] if instances is not None else [list(range(len(slices)))]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, group in enumerate(groups):
        if not group:
            raise ValueError(f"instances[{i}] is empty")
        sources = [slices[k] for k in group]
        if kind == "legacy":
            ds: Dataset = LegacyConvertedEnhancedCTImage(
                sources, series_instance_uid=header.series_instance_uid,
                series_number=int(sources[0].get("SeriesNumber", 1) or 1), sop_instance_uid=generate_uid(),
                instance_number=i + 1)
        else:
            ds = enhanced_ct_instance(sources, header, instance_number=i + 1)
        path = folder / instance_file_name(i)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _item(**attributes: Any) -> Dataset:
    item = Dataset()
    for keyword, value in attributes.items():
        setattr(item, keyword, value)
    return item


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    return _item(CodeValue=value, CodingSchemeDesignator=scheme, CodeMeaning=meaning)


def _frame_datetime(ds: Dataset) -> str:
    date = str(ds.get("AcquisitionDate", "") or ds.get("StudyDate", "") or "20260101")
    time = str(ds.get("AcquisitionTime", "") or ds.get("StudyTime", "") or "120000")
    return date + time


def _shared_groups(first: Dataset) -> Dataset:
    """What every frame shares: orientation, pixel measures, anatomy and the CT acquisition/reconstruction macros
    (required for ORIGINAL frames)."""
    return _item(
        PlaneOrientationSequence=[_item(ImageOrientationPatient=list(first.ImageOrientationPatient))],
        PixelMeasuresSequence=[_item(PixelSpacing=list(first.PixelSpacing), SliceThickness=first.SliceThickness)],
        FrameAnatomySequence=[_item(AnatomicRegionSequence=[_code("818981001", "SCT", "Abdomen")],
                                    FrameLaterality="U")],
        CTAcquisitionTypeSequence=[_item(AcquisitionType="SPIRAL", ConstantVolumeFlag="NO", FluoroscopyFlag="NO")],
        CTAcquisitionDetailsSequence=[_item(DataCollectionDiameter=500.0, RotationDirection="CW",
                                            RevolutionTime=0.5, SingleCollimationWidth=0.625,
                                            TotalCollimationWidth=40.0, TableHeight=150.0,
                                            GantryDetectorTilt=0.0)],
        CTTableDynamicsSequence=[_item(TableSpeed=80.0, TableFeedPerRotation=40.0, SpiralPitchFactor=1.0)],
        CTGeometrySequence=[_item(DistanceSourceToDetector=1040.0, DistanceSourceToDataCollectionCenter=570.0)],
        CTReconstructionSequence=[_item(ReconstructionAlgorithm="FILTER_BACK_PROJ",
                                        ConvolutionKernel=str(first.get("ConvolutionKernel", "") or "B30f"),
                                        ConvolutionKernelGroup="SOFT_TISSUE", ReconstructionDiameter=500.0,
                                        ReconstructionPixelSpacing=list(first.PixelSpacing),
                                        ReconstructionAngle=360.0, ImageFilter="NONE")],
        CTExposureSequence=[_item(ExposureTimeInms=500.0, XRayTubeCurrentInmA=200.0, ExposureInmAs=100.0,
                                  ExposureModulationType="NONE")],
        CTXRayDetailsSequence=[_item(KVP=float(first.get("KVP", 120) or 120), FocalSpots=[1.2],
                                     FilterType="BODY", FilterMaterial=["ALUMINUM"])],
        FrameVOILUTSequence=[_item(WindowCenter=40.0, WindowWidth=400.0)],
    )


def _per_frame_groups(ds: Dataset, stack_of: Mapping[str, int], in_stack: int, events: Mapping[str, str]) -> Dataset:
    acquisition = str(ds.get("AcquisitionNumber", "") or "1")
    image_type = [str(v) for v in ds.ImageType][:3]
    frame_type = [*image_type, *(["AXIAL"] if len(image_type) < 3 else []), "NONE"]
    content = _item(FrameAcquisitionNumber=int(acquisition), FrameAcquisitionDateTime=_frame_datetime(ds),
                    FrameReferenceDateTime=_frame_datetime(ds), FrameAcquisitionDuration=500.0,
                    StackID=str(stack_of[acquisition]), InStackPositionNumber=in_stack,
                    DimensionIndexValues=[stack_of[acquisition], in_stack])
    groups = _item(
        FrameContentSequence=[content],
        PlanePositionSequence=[_item(ImagePositionPatient=list(ds.ImagePositionPatient))],
        CTImageFrameTypeSequence=[_item(FrameType=frame_type, PixelPresentation="MONOCHROME",
                                        VolumetricProperties="VOLUME", VolumeBasedCalculationTechnique="NONE")],
        IrradiationEventIdentificationSequence=[_item(IrradiationEventUID=events[acquisition])],
        CTPositionSequence=[_item(TablePosition=-float(ds.ImagePositionPatient[2]),
                                  ReconstructionTargetCenterPatient=[0.0, 0.0, float(ds.ImagePositionPatient[2])],
                                  DataCollectionCenterPatient=[0.0, 0.0, float(ds.ImagePositionPatient[2])])],
    )
    if "RescaleSlope" in ds:
        groups.PixelValueTransformationSequence = [_item(RescaleIntercept=ds.RescaleIntercept,
                                                         RescaleSlope=ds.RescaleSlope, RescaleType="HU")]
    return groups


def enhanced_ct_instance(sources: Sequence[Dataset], header: CTSeriesHeader, *, instance_number: int) -> Dataset:
    """One Enhanced CT Image Storage instance holding ``sources`` (single-frame slices) as frames in that order:
    top-level attributes from the first slice, geometry and rescale in the functional groups, one stack per
    AcquisitionNumber (InStackPositionNumber in frame order)."""
    first = sources[0]
    if int(first.BitsAllocated) != 16:
        raise ValueError("Enhanced CT needs 16-bit pixels (uint16 or int16 frames)")
    ds = Dataset()
    for element in first:
        if element.keyword not in _PER_FRAME_KEYWORDS:
            ds.add(element)
    acquisitions = list(dict.fromkeys(str(s.get("AcquisitionNumber", "") or "1") for s in sources))
    stack_of = {a: n + 1 for n, a in enumerate(acquisitions)}
    events = {a: generate_uid() for a in acquisitions}
    counters = dict.fromkeys(acquisitions, 0)
    per_frame = []
    for source in sources:
        acquisition = str(source.get("AcquisitionNumber", "") or "1")
        counters[acquisition] += 1
        per_frame.append(_per_frame_groups(source, stack_of, counters[acquisition], events))
    dimension_uid = generate_uid()
    attributes: dict[str, Any] = {
        "SOPClassUID": EnhancedCTImageStorage, "SOPInstanceUID": generate_uid(), "InstanceNumber": instance_number,
        "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"], "ContentDate": str(first.StudyDate),
        "ContentTime": str(first.StudyTime), "AcquisitionDateTime": _frame_datetime(first),
        "AcquisitionDuration": 5.0, "AcquisitionNumber": int(acquisitions[0]),
        "PixelPresentation": "MONOCHROME", "VolumetricProperties": "VOLUME",
        "VolumeBasedCalculationTechnique": "NONE", "PresentationLUTShape": "IDENTITY", "BurnedInAnnotation": "NO",
        "LossyImageCompression": "00", "ContentQualification": "PRODUCT", "Manufacturer": "TEST",
        "ManufacturerModelName": "PHANTOM", "DeviceSerialNumber": "1", "SoftwareVersions": "1",
        "PatientPosition": "HFS", "PositionReferenceIndicator": "", "AcquisitionContextSequence": [],
        "NumberOfFrames": len(sources),
        "DimensionOrganizationSequence": [_item(DimensionOrganizationUID=dimension_uid)],
        "DimensionIndexSequence": [
            _item(DimensionOrganizationUID=dimension_uid, DimensionIndexPointer=0x00209056,
                  FunctionalGroupPointer=0x00209111, DimensionDescriptionLabel="Stack ID"),
            _item(DimensionOrganizationUID=dimension_uid, DimensionIndexPointer=0x00209057,
                  FunctionalGroupPointer=0x00209111, DimensionDescriptionLabel="In-Stack Position Number")],
        "SharedFunctionalGroupsSequence": [_shared_groups(first)], "PerFrameFunctionalGroupsSequence": per_frame,
    }
    attributes.update({k: v for k, v in header.extra.items() if k in ("Manufacturer", "ManufacturerModelName")})
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    stack = np.stack([s.pixel_array for s in sources])
    if header.transfer_syntax_uid in UNCOMPRESSED:
        ds.file_meta.TransferSyntaxUID = UID(header.transfer_syntax_uid)
        ds.PixelData = stack.tobytes()
    else:
        ds.compress(header.transfer_syntax_uid, stack)
    return ds
