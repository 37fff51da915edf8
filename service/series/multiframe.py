"""Multi-frame CT (Enhanced CT, Legacy Converted Enhanced CT) as the per-slice headers the rest of the node reads.

Modern scanners send one Enhanced CT Image Storage instance (or one per stack) instead of one CT Image Storage file
per slice; archives may convert classic series to Legacy Converted Enhanced CT. ``expand_frames`` turns such an
instance into one ``FrameHeader`` per frame: a classic-looking dataset (no pixel data) built from

1. the instance's top-level attributes (patient, study, series, equipment, SOP Class/Instance UID, Frame of
   Reference, PixelPaddingValue, ...), without pixel data and without the functional group sequences;
2. every functional group of the Shared Functional Groups Sequence, then of the frame's item of the Per-Frame
   Functional Groups Sequence (per-frame wins): the attributes of each macro's item are copied as they are, so that
   PlanePositionSequence gives ImagePositionPatient, PlaneOrientationSequence ImageOrientationPatient,
   PixelMeasuresSequence PixelSpacing and SliceThickness, PixelValueTransformationSequence RescaleSlope/Intercept,
   CTReconstructionSequence ConvolutionKernel, CTXRayDetailsSequence KVP; the Unassigned (Shared/Per-Frame)
   Converted Attributes of a legacy conversion only fill attributes the top level lacks;
3. the multi-frame names mapped to the classic ones the checks read: FrameAcquisitionNumber -> AcquisitionNumber,
   FrameAcquisitionDateTime -> AcquisitionDate and AcquisitionTime, FrameType -> ImageType (a LOCALIZER frame is
   left out like a scout), ContrastBolusAgentAdministered -> ContrastBolusAgent (the agent's name, or NONE),
   AnatomicRegionSequence -> BodyPartExamined when the instance names none.

``service.series.checks``, ``stacks`` and ``selection`` then work on frames as on single-frame slices (gaps,
acquisitions, tilt, duplicates); the loader decodes each frame from the instance's file (``FrameHeader.path``,
``frame_number``) one frame at a time.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path

import pydicom
from pydicom.dataelem import DataElement

ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.2"
MULTIFRAME_CT_SOP_CLASSES = frozenset({ENHANCED_CT_IMAGE_STORAGE, LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE})
"""The multi-frame CT SOP classes the node loads through their functional groups."""

_NOT_COPIED_KEYWORDS = frozenset({
    "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence",
    "NumberOfFrames",
    "FrameIncrementPointer",
})
_FILL_ONLY_MACROS = frozenset({
    "UnassignedSharedConvertedAttributesSequence",
    "UnassignedPerFrameConvertedAttributesSequence",
})
"""Legacy conversion leftovers: the original slices' attributes that have no functional group; they never override
the instance's own top-level attributes (e.g. the original SeriesNumber)."""
_PIXEL_DATA_GROUP = 0x7FE0
_CS_INVALID = re.compile(r"[^A-Z0-9_ ]+")


class MultiFrameError(ValueError):
    """A multi-frame CT instance whose functional groups cannot give per-frame headers; the message says why."""


class FrameHeader(pydicom.Dataset):
    """The classic header of one frame of a multi-frame CT instance (no pixel data).

    ``frame_number`` is the DICOM frame number (1-based, as ReferencedFrameNumber counts); ``multiframe`` the
    instance's own header (shared by all its frames; the loader releases its pixel data); ``path`` its file.
    """

    def __init__(self, multiframe: pydicom.Dataset, frame_number: int, path: Path | None) -> None:
        super().__init__()
        if frame_number < 1:
            raise ValueError(f"frame_number must be >= 1, got {frame_number}")
        self.frame_number = frame_number
        self.multiframe = multiframe
        self.path = path


def frame_number(ds: pydicom.Dataset) -> int | None:
    """The frame number of a frame header; None for a single-frame slice."""
    return ds.frame_number if isinstance(ds, FrameHeader) else None


def is_multiframe_ct(ds: pydicom.Dataset) -> bool:
    """An Enhanced or Legacy Converted Enhanced CT instance (expanded by ``expand_frames``)."""
    return str(ds.get("SOPClassUID", "") or "") in MULTIFRAME_CT_SOP_CLASSES


def expand_frames(ds: pydicom.Dataset, path: Path | None = None) -> list[FrameHeader]:
    """One ``FrameHeader`` per frame of a multi-frame CT instance, in frame order; MultiFrameError when the
    functional groups do not give one (pixel data is never read)."""
    frames = _number_of_frames(ds)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence", None)
    if per_frame is None or len(per_frame) != frames:
        raise MultiFrameError(f"Per-Frame Functional Groups Sequence has {0 if per_frame is None else len(per_frame)} "
                              f"items for NumberOfFrames {frames}")
    shared_sequence = ds.get("SharedFunctionalGroupsSequence", None)
    shared = shared_sequence[0] if shared_sequence else pydicom.Dataset()
    tags = list(ds.keys())  # tags, not elements: iterating the dataset would read the deferred pixel data
    top = [ds[tag] for tag in tags if _copied(tag)]
    shared_elements = list(_macro_elements(shared))
    agent = _agent_name(ds)
    headers = []
    for number, item in enumerate(per_frame, start=1):
        frame = FrameHeader(ds, number, path)
        frame.file_meta = getattr(ds, "file_meta", pydicom.dataset.FileMetaDataset())
        for element in top:
            frame.add(copy.copy(element))
        for fill_only, element in (*shared_elements, *_macro_elements(item)):
            if not (fill_only and element.tag in ds):
                frame.add(copy.copy(element))
        _classic_names(frame, agent)
        headers.append(frame)
    return headers


def _number_of_frames(ds: pydicom.Dataset) -> int:
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError) as exc:
        raise MultiFrameError(f"NumberOfFrames unreadable: {ds.get('NumberOfFrames')!r}") from exc
    if frames < 1:
        raise MultiFrameError(f"NumberOfFrames must be >= 1, got {frames}")
    return frames


def _copied(tag: pydicom.tag.BaseTag) -> bool:
    if tag.group == _PIXEL_DATA_GROUP:
        return False
    return pydicom.datadict.keyword_for_tag(tag) not in _NOT_COPIED_KEYWORDS


def _macro_elements(groups: pydicom.Dataset) -> Iterator[tuple[bool, DataElement]]:
    """(fill only, element) for the attributes of each functional group macro's first item."""
    for macro in groups:
        if macro.VR != "SQ" or not macro.value:
            continue
        fill_only = macro.keyword in _FILL_ONLY_MACROS
        for element in macro.value[0]:
            yield fill_only, element


def _agent_name(ds: pydicom.Dataset) -> str:
    """The contrast agent's name from the Enhanced Contrast/Bolus module ("contrast" when it names none)."""
    for item in ds.get("ContrastBolusAgentSequence", None) or []:
        meaning = str(item.get("CodeMeaning", "") or "").strip()
        if meaning:
            return meaning
    return "contrast"


def _classic_names(frame: FrameHeader, agent: str) -> None:
    """The classic attributes the checks and the selection read, from their multi-frame counterparts."""
    number = frame.get("FrameAcquisitionNumber", None)
    if number not in (None, ""):
        frame.AcquisitionNumber = int(number)
    when = str(frame.get("FrameAcquisitionDateTime", "") or "").strip()
    if len(when) >= 10 and when[:8].isdigit():
        frame.AcquisitionDate = when[:8]
        frame.AcquisitionTime = when[8:].split("+")[0].split("-")[0]
    frame_type = frame.get("FrameType", None)
    if frame_type:
        frame.ImageType = list(frame_type)
    administered = str(frame.get("ContrastBolusAgentAdministered", "") or "").strip().upper()
    if administered in ("YES", "NO") and not str(frame.get("ContrastBolusAgent", "") or "").strip():
        frame.ContrastBolusAgent = agent if administered == "YES" else "NONE"
    if not str(frame.get("BodyPartExamined", "") or "").strip():
        for region in frame.get("AnatomicRegionSequence", None) or []:
            meaning = str(region.get("CodeMeaning", "") or "").strip()
            if meaning:
                frame.BodyPartExamined = _CS_INVALID.sub(" ", meaning.upper()).strip()[:16]  # CS: 16 characters
                break
