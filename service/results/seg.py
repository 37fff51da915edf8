"""DICOM SEG (highdicom): one segment per vertebral body and one per trabecular ROI, on the source CT frames.

Masks use the project's array convention ``mask[i=column, j=row, k=slice]`` on the CT grid; a SEG frame is
(row, column) of one source image, so frame k is ``mask[:, :, k].T``. Every frame references the source image of
its slice and carries that image's position, which makes the SEG correct in any patient orientation.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.coding import Code
from pydicom.uid import CTImageStorage, generate_uid

from service.domain.levels import VertebraLevel
from service.results import codes
from service.results.common import (
    SEG_SERIES_NUMBER,
    AlgorithmInfo,
    add_private_scheme,
    contributing_equipment,
    copy_patient_study,
)
from service.series.multiframe import frame_number

logger = logging.getLogger(__name__)

# 12 bright, distinct hues, readable on a dark background; consecutive levels never share a colour.
_PALETTE_RGB: tuple[tuple[int, int, int], ...] = (
    (255, 90, 90), (255, 165, 40), (250, 230, 60), (150, 230, 60), (60, 210, 120), (60, 220, 235),
    (90, 160, 255), (175, 125, 255), (245, 95, 225), (255, 150, 190), (0, 200, 170), (225, 190, 110),
)
TRABECULAR_ROI_RGB: tuple[int, int, int] = (255, 255, 255)


def level_color_rgb(level: VertebraLevel) -> tuple[int, int, int]:
    """Display colour of a level, shared by the SEG and the key image (neighbouring levels differ)."""
    return _PALETTE_RGB[(int(level) - 1) % len(_PALETTE_RGB)]


@dataclass(frozen=True)
class SegmentNumbers:
    """Where each level's masks are in the SEG."""

    body: dict[VertebraLevel, int]
    trabecular_roi: dict[VertebraLevel, int]
    summary: int | None = None
    """The union of the trabecular ROIs behind the patient-level BMD (all ROIs when none is used; all bodies when
    there is no ROI at all); None only for an empty SEG."""


MaskSource = tuple[Callable[[int], npt.NDArray[np.bool_]], npt.NDArray[np.intp]]
"""Per segment: slice k -> its (columns, rows) mask, and the slices where it is not empty."""


@dataclass
class _Segments:
    """The segments of a SEG in the making: descriptions and mask sources, numbered from 1 in order."""

    descriptions: list[hd.seg.SegmentDescription] = field(default_factory=list)
    masks: list[MaskSource] = field(default_factory=list)

    def add(self, *, label: str, property_type: Code, algorithm: hd.AlgorithmIdentificationSequence,
            tracking_id: str, region: Code, rgb: tuple[int, int, int], mask: MaskSource) -> int:
        """Append one AUTOMATIC anatomical-structure segment; returns its number."""
        number = len(self.descriptions) + 1
        self.descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=label,
                segmented_property_category=codes.ANATOMICAL_STRUCTURE,
                segmented_property_type=property_type,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                tracking_uid=generate_uid(),
                tracking_id=tracking_id,
                anatomic_regions=[region],
                display_color=hd.color.CIELabColor.from_rgb(*rgb),
            )
        )
        self.masks.append(mask)
        return number


def build_seg(
    source_headers: Sequence[Dataset],
    body_labels: npt.NDArray[np.integer],
    roi_labels: npt.NDArray[np.integer],
    algorithm: AlgorithmInfo,
    when: dt.datetime,
    summary_levels: Sequence[VertebraLevel] = (),
) -> tuple[Dataset, SegmentNumbers]:
    """A BINARY SEG over the source CT images (given in slice order k); only non-empty frames are stored.

    After the per-level segments comes one "summary" segment: the union of the trabecular ROIs of
    ``summary_levels`` (all ROIs when none of those has one). The SR's patient-level group references it, so every
    measurement group of the SR is a TID 1411 volumetric group (PixelMed's validator rejects a report that mixes
    TID 1411 and TID 1501 groups).
    """
    rows, cols = _check_shapes(source_headers, body_labels, roi_labels)
    body_present = _presence(body_labels)  # (slice, label value) -> any voxel
    roi_present = _presence(roi_labels)
    if not body_present[:, 1:].any() and not roi_present[:, 1:].any():
        raise ValueError("body_labels and roi_labels are both empty: nothing to write into a SEG")
    # Only the slab of slices that holds any label is referenced.
    any_label = body_present[:, 1:].any(axis=1) | roi_present[:, 1:].any(axis=1)
    k_indices = np.flatnonzero(any_label)
    k0, k1 = int(k_indices[0]), int(k_indices[-1]) + 1

    body_algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm.model_name, family=codes.ALGORITHM_FAMILY_AI, version=algorithm.model_version,
        source=algorithm.manufacturer,
    )
    roi_algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm.name, family=codes.ALGORITHM_FAMILY_AI, version=algorithm.version,
        source=algorithm.manufacturer,
    )
    segments = _Segments()
    body_numbers, roi_numbers = _add_level_segments(segments, (body_labels, body_present, body_algorithm),
                                                    (roi_labels, roi_present, roi_algorithm))
    summary_number = _add_summary_segment(segments, summary_levels, roi_numbers, (body_labels, body_present),
                                          (roi_labels, roi_present), roi_algorithm)

    # highdicom writes every module from a template over (at most) two source slices with all-ones segments (a few
    # MB, where the stacked (frames x rows x columns x segments) array of the whole slab would take GB on a thin-slice
    # CT); the frames are then written here, one (segment, slice) frame at a time, with highdicom's frame layout.
    template_ks = [k0, k0 + 1] if k1 - k0 >= 2 else [k0]
    template = hd.seg.Segmentation(
        source_images=[_template_source(source_headers[k]) for k in template_ks],
        pixel_array=np.ones((len(template_ks), rows, cols, len(segments.descriptions)), dtype=bool),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments.descriptions,
        series_instance_uid=generate_uid(),
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=algorithm.manufacturer,
        manufacturer_model_name=algorithm.name,
        software_versions=algorithm.software_versions,
        device_serial_number=algorithm.device_serial_number,
        content_description="Vertebral bodies and trabecular ROIs",
        content_label="VERTEBRAE",
        content_creator_name=None,
        omit_empty_frames=True,
        series_description="AI vertebral segmentation (to be reviewed)",
        contributing_equipment=[contributing_equipment(algorithm, when)],
    )
    masks = _even_length(segments.masks, rows * cols, len(source_headers))
    seg = _fill_frames(template, source_headers, template_ks, masks)
    copy_patient_study(seg, source_headers[0])
    add_private_scheme(seg)
    seg.ContentDate = when.strftime("%Y%m%d")
    seg.ContentTime = when.strftime("%H%M%S")
    logger.info("SEG built: %d segments over slices %d..%d, %d frames", len(segments.descriptions), k0, k1 - 1,
                int(seg.NumberOfFrames))
    return seg, SegmentNumbers(body=body_numbers, trabecular_roi=roi_numbers, summary=summary_number)


def _template_source(header: Dataset) -> Dataset:
    """The source slice as highdicom's template sees it. A frame of a multi-frame CT instance (``FrameHeader``) looks
    like a classic slice header (position, orientation, pixel measures at the top level) but names the multi-frame
    SOP class, for which highdicom wants the instance's functional groups and a pixel array of all its frames; the
    template gets it as a classic CT image instead. Every reference to the source is rewritten by ``_fill_frames``
    (instance, class and frame number), so the template's own references to it are never written out."""
    if frame_number(header) is None:
        return header
    classic = Dataset()
    classic.update(header)  # the same element objects: replace SOPClassUID, never assign into the shared one
    del classic.SOPClassUID
    classic.SOPClassUID = CTImageStorage
    return classic


def _check_shapes(source_headers: Sequence[Dataset], body_labels: npt.NDArray[np.integer],
                  roi_labels: npt.NDArray[np.integer]) -> tuple[int, int]:
    """(Rows, Columns) of the source images, after checking that both label maps lie on their grid."""
    n_slices = len(source_headers)
    if body_labels.shape != roi_labels.shape:
        raise ValueError(f"roi_labels shape {roi_labels.shape} differs from body_labels shape {body_labels.shape}")
    if body_labels.ndim != 3 or body_labels.shape[2] != n_slices:
        raise ValueError(f"body_labels must be (columns, rows, {n_slices}) for {n_slices} source images, "
                         f"got {body_labels.shape}")
    rows, cols = int(source_headers[0].Rows), int(source_headers[0].Columns)
    if body_labels.shape[:2] != (cols, rows):
        raise ValueError(f"mask in-plane shape {body_labels.shape[:2]} must be (Columns, Rows) = {(cols, rows)}")
    return rows, cols


def _levels(present: npt.NDArray[np.bool_]) -> list[VertebraLevel]:
    return sorted(VertebraLevel(int(v)) for v in np.flatnonzero(present.any(axis=0)) if v != 0)


def _add_level_segments(
    segments: _Segments,
    body: tuple[npt.NDArray[np.integer], npt.NDArray[np.bool_], hd.AlgorithmIdentificationSequence],
    roi: tuple[npt.NDArray[np.integer], npt.NDArray[np.bool_], hd.AlgorithmIdentificationSequence],
) -> tuple[dict[VertebraLevel, int], dict[VertebraLevel, int]]:
    """Per level (cranial first): its vertebral-body segment, then its trabecular-ROI segment, where present.
    ``body`` and ``roi`` are (labels, presence table, algorithm); returns the segment numbers by level."""
    body_levels = _levels(body[1])
    roi_levels = _levels(roi[1])
    numbers: dict[str, dict[VertebraLevel, int]] = {"body": {}, "roi": {}}
    for level in sorted(set(body_levels) | set(roi_levels)):
        parts = []
        if level in body_levels:
            parts.append(("body", body))
        if level in roi_levels:
            parts.append(("roi", roi))
        for kind, (labels, present, algorithm) in parts:
            is_body = kind == "body"
            what = "vertebral body" if is_body else "trabecular ROI"
            numbers[kind][level] = segments.add(
                label=f"{level.name} {what}",
                property_type=codes.VERTEBRAL_BODY if is_body else codes.TRABECULAR_ROI,
                algorithm=algorithm, tracking_id=f"{level.name} {what}", region=codes.vertebra_code(level),
                rgb=level_color_rgb(level) if is_body else TRABECULAR_ROI_RGB,
                mask=(functools.partial(_level_slice, labels, int(level)), np.flatnonzero(present[:, int(level)])))
    return numbers["body"], numbers["roi"]


def _add_summary_segment(
    segments: _Segments,
    summary_levels: Sequence[VertebraLevel],
    roi_numbers: dict[VertebraLevel, int],
    body: tuple[npt.NDArray[np.integer], npt.NDArray[np.bool_]],
    roi: tuple[npt.NDArray[np.integer], npt.NDArray[np.bool_]],
    algorithm: hd.AlgorithmIdentificationSequence,
) -> int | None:
    """The segment the patient-level group of the SR references: the ROIs behind the summary, else all ROIs, else
    (no ROI at all) all vertebral bodies, so that the patient group is a TID 1411 group like the others. ``body``
    and ``roi`` are (labels, presence table); returns its number (None when there is nothing to unite)."""
    used = [level for level in summary_levels if level in roi_numbers] or list(roi_numbers)
    from_bodies = not used
    labels, present = body if from_bodies else roi
    values = tuple(int(level) for level in (_levels(body[1]) if from_bodies else used))
    if not values:
        return None
    return segments.add(
        label="Vertebral bodies assessed" if from_bodies else "Trabecular ROIs for patient BMD",
        property_type=codes.VERTEBRAL_BODY if from_bodies else codes.TRABECULAR_ROI, algorithm=algorithm,
        tracking_id="Patient BMD vertebral bodies" if from_bodies else "Patient BMD trabecular ROIs",
        region=codes.SPINE, rgb=TRABECULAR_ROI_RGB,
        mask=(functools.partial(_union_slice, labels, values), np.flatnonzero(present[:, list(values)].any(axis=1))))


def _presence(labels: npt.NDArray[np.integer]) -> npt.NDArray[np.bool_]:
    """(slices, 26) table: does slice k hold label value v (0..25)? One bincount per slice, no full-volume sort."""
    n_values = int(max(VertebraLevel)) + 1
    if labels.size and (labels.min() < 0 or labels.max() >= n_values):
        raise ValueError(f"label values must be within 0..{n_values - 1}, got {labels.min()}..{labels.max()}")
    table = np.zeros((labels.shape[2], n_values), dtype=bool)
    for k in range(labels.shape[2]):
        table[k] = np.bincount(labels[:, :, k].ravel().astype(np.intp), minlength=n_values) > 0
    return table


def _level_slice(labels: npt.NDArray[np.integer], value: int, k: int) -> npt.NDArray[np.bool_]:
    return labels[:, :, k] == value


def _union_slice(labels: npt.NDArray[np.integer], values: tuple[int, ...], k: int) -> npt.NDArray[np.bool_]:
    return np.isin(labels[:, :, k], values)


def _packed_bytes(frame_count: int, pixels_per_frame: int) -> int:
    return -(-frame_count * pixels_per_frame // 8)


def _even_length(masks: Sequence[MaskSource], pixels_per_frame: int, n_slices: int) -> list[MaskSource]:
    """The masks with empty (segment, slice) frames added until the bit-packed frames fill an even number of bytes.

    DICOM pads odd-length Pixel Data with one byte, but OHIF's DICOMweb reader takes the value length as the frames'
    length: it refuses a BINARY SEG whose packed frames end one byte short of the padded length ("calculated length
    ... does not match the actual length"), and when a frame is a whole number of bytes it splits the value length by
    the frame count. Both happen only with matrices whose Rows x Columns is not a multiple of 16 (never with 512 x
    512); an empty frame of a segment on a slice where that segment has no pixel is valid and changes no mask.
    """
    out = [(mask_of, np.asarray(slices, dtype=np.intp)) for mask_of, slices in masks]
    frames = sum(len(slices) for _, slices in out)
    used = sorted({int(k) for _, slices in out for k in slices})
    candidates = used + [k for k in (used[0] - 1, used[-1] + 1) if 0 <= k < n_slices] if used else []
    while _packed_bytes(frames, pixels_per_frame) % 2:
        spare = next(((number, k) for k in candidates for number, (_, slices) in enumerate(out)
                      if k not in set(slices.tolist())), None)
        if spare is None:
            logger.warning("no empty (segment, slice) frame left to even out the SEG's pixel data length")
            break
        number, k = spare
        mask_of, slices = out[number]
        out[number] = (mask_of, np.sort(np.append(slices, k)))
        frames += 1
    return out


def _code_item(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _image_references(headers: Sequence[Dataset], *, frames: bool) -> list[Dataset]:
    """One reference item per instance in first-seen order (a multi-frame instance once); with ``frames`` the items
    of multi-frame instances name their frames (ReferencedFrameNumber, type 1C)."""
    items: dict[str, Dataset] = {}
    numbers: dict[str, list[int]] = {}
    for header in headers:
        uid = str(header.SOPInstanceUID)
        item = items.setdefault(uid, Dataset())
        item.ReferencedSOPClassUID = header.SOPClassUID
        item.ReferencedSOPInstanceUID = header.SOPInstanceUID
        if frames and (frame := frame_number(header)) is not None:
            numbers.setdefault(uid, []).append(frame)
            item.ReferencedFrameNumber = numbers[uid] if len(numbers[uid]) > 1 else frame
    return list(items.values())


def _fill_frames(
    template: hd.seg.Segmentation,
    source_headers: Sequence[Dataset],
    template_ks: Sequence[int],
    masks: Sequence[tuple[Callable[[int], npt.NDArray[np.bool_]], npt.NDArray[np.intp]]],
) -> Dataset:
    """A plain Dataset copy of ``template`` with one frame per non-empty (segment, slice), segment-major.

    Per-frame items follow highdicom's layout: Derivation Image (source slice, with its ReferencedFrameNumber when it
    is a frame of a multi-frame CT, "Source image for image processing operation", derivation "Segmentation"), Frame
    Content (Dimension Index Values = segment number, position index), Plane Position (the source slice's Image
    Position (Patient)), Segment Identification. ``template_ks``: the slices the template was built over.
    """
    frame_items: list[Dataset] = []
    packed: list[bytes] = []  # frames packed one by one when a frame is a whole number of bytes
    unpacked: list[npt.NDArray[np.bool_]] = []  # otherwise kept and packed as one bit stream at the end
    used_ks = sorted({int(k) for _, slices in masks for k in slices})
    position_index = {k: i + 1 for i, k in enumerate(used_ks)}  # ascending k = along the slice normal
    for number, (mask_of, slices) in enumerate(masks, start=1):
        for k in (int(k) for k in slices):
            frame = mask_of(k).T  # (columns, rows) -> frame (rows, columns)
            if frame.size % 8 == 0:
                packed.append(np.packbits(frame.ravel(), bitorder="little").tobytes())
            else:
                unpacked.append(frame)
            header = source_headers[k]
            source = Dataset()
            source.ReferencedSOPClassUID = header.SOPClassUID
            source.ReferencedSOPInstanceUID = header.SOPInstanceUID
            if (source_frame := frame_number(header)) is not None:
                source.ReferencedFrameNumber = source_frame  # the frame of a multi-frame CT instance
            source.SpatialLocationsPreserved = "YES"
            source.PurposeOfReferenceCodeSequence = [
                _code_item("121322", "DCM", "Source image for image processing operation")]
            derivation = Dataset()
            derivation.SourceImageSequence = [source]
            derivation.DerivationCodeSequence = [_code_item("113076", "DCM", "Segmentation")]
            content = Dataset()
            content.DimensionIndexValues = [number, position_index[k]]
            position = Dataset()
            position.ImagePositionPatient = header.ImagePositionPatient
            identification = Dataset()
            identification.ReferencedSegmentNumber = number
            item = Dataset()
            item.DerivationImageSequence = [derivation]
            item.FrameContentSequence = [content]
            item.PlanePositionSequence = [position]
            item.SegmentIdentificationSequence = [identification]
            frame_items.append(item)
    if not frame_items:
        raise ValueError("every segment is empty: nothing to write into a SEG")

    seg = Dataset()
    seg.update(template)
    seg.preamble = template.preamble
    seg.file_meta = FileMetaDataset(template.file_meta)
    seg.PerFrameFunctionalGroupsSequence = frame_items
    seg.NumberOfFrames = len(frame_items)
    # BINARY: 1 bit per pixel, frames packed back to back, least significant bit first (PS3.5 8.1.1)
    data = b"".join(packed) if packed else np.packbits(np.stack(unpacked).reshape(-1), bitorder="little").tobytes()
    seg.PixelData = data + (b"\0" if len(data) % 2 else b"")
    seg["PixelData"].VR = "OB"
    seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence = _image_references(
        [source_headers[k] for k in used_ks], frames=False)
    # General Reference: the template's source slices (as highdicom lists them), with their frames when multi-frame
    seg.SourceImageSequence = _image_references([source_headers[k] for k in template_ks], frames=True)
    return seg
