"""Minimal header parse of received bytes, and the CT / non-CT decision."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    CTImageStorage,
    EnhancedCTImageStorage,
    EnhancedMRImageStorage,
    EnhancedSRStorage,
    EnhancedXRayRadiationDoseSRStorage,
    LegacyConvertedEnhancedCTImageStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
    XRayRadiationDoseSRStorage,
    generate_uid,
)

from service.receive.handlers import NODE_MANUFACTURER, ignore_reason, is_node_object, non_ct_reason
from service.receive.header import HeaderSummary, UndecodableDatasetError, parse_header
from tests.integration.dicom_net_support import make_image_dataset


def _encoded(**kwargs: object) -> bytes:
    ds = make_image_dataset(study_instance_uid=generate_uid(), series_instance_uid=generate_uid(), **kwargs)
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_parse_header_reads_uids_and_modality() -> None:
    sop = generate_uid()
    header = parse_header(_encoded(sop_instance_uid=sop))
    assert header.sop_instance_uid == sop
    assert header.sop_class_uid == CTImageStorage
    assert header.modality == "CT"
    assert header.study_instance_uid and header.series_instance_uid


@pytest.mark.parametrize(
    "garbage",
    [b"", b"not dicom at all", b"\x00" * 128 + b"DICM" + b"\xff" * 64],
)
def test_garbage_is_undecodable(garbage: bytes) -> None:
    with pytest.raises(UndecodableDatasetError):
        parse_header(garbage)


def test_missing_series_uid_is_undecodable() -> None:
    ds = make_image_dataset(study_instance_uid=generate_uid(), series_instance_uid=generate_uid())
    del ds.SeriesInstanceUID
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    with pytest.raises(UndecodableDatasetError, match="SeriesInstanceUID"):
        parse_header(buffer.getvalue())


@pytest.mark.parametrize(
    ("sop_class", "modality", "is_ct"),
    [
        (CTImageStorage, "CT", True),
        (CTImageStorage, "", True),
        (CTImageStorage, "MR", False),
        (SecondaryCaptureImageStorage, "CT", False),
        (EnhancedCTImageStorage, "CT", True),
        (LegacyConvertedEnhancedCTImageStorage, "CT", True),
        (EnhancedCTImageStorage, "MR", False),
    ],
)
def test_non_ct_reason(sop_class: str, modality: str, is_ct: bool) -> None:
    header = HeaderSummary(sop_class, "1.2.3", "1.2", "1.2.4", modality)
    reason = non_ct_reason(header)
    assert (reason is None) is is_ct
    if reason is not None:
        assert reason


def test_uid_with_leading_zero_component_is_tolerated_but_letters_are_not() -> None:
    ds = make_image_dataset(study_instance_uid="1.2.826.0.1.3680043.8.498.012", series_instance_uid=generate_uid())
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    assert parse_header(buffer.getvalue()).study_instance_uid == "1.2.826.0.1.3680043.8.498.012"
    ds.StudyInstanceUID = "1.2.abc"
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    with pytest.raises(UndecodableDatasetError, match="invalid UID in StudyInstanceUID"):
        parse_header(buffer.getvalue())


@pytest.mark.parametrize(
    ("sop_class", "modality", "manufacturer", "expected"),
    [
        (CTImageStorage, "CT", "SIEMENS", None),
        (CTImageStorage, "CT", NODE_MANUFACTURER, "the node's own result object"),  # whatever class: never re-read
        (SegmentationStorage, "SEG", NODE_MANUFACTURER, "the node's own result object (Segmentation Storage)"),
        (XRayRadiationDoseSRStorage, "SR", "GE", "radiation dose report (X-Ray Radiation Dose SR Storage): not CT"),
        (EnhancedXRayRadiationDoseSRStorage, "SR", "", "radiation dose report"),
        (SecondaryCaptureImageStorage, "CT", "PHILIPS", "secondary capture (Secondary Capture Image Storage, e.g."),
        (EnhancedSRStorage, "SR", "", "structured report (Enhanced SR Storage): not CT"),
        (EnhancedCTImageStorage, "CT", "", None),
        (LegacyConvertedEnhancedCTImageStorage, "CT", "", None),
        (EnhancedMRImageStorage, "MR", "", "not CT Image Storage (SOP class Enhanced MR Image Storage)"),
    ],
)
def test_ignore_reason_names_the_kind_of_object(sop_class: str, modality: str, manufacturer: str,
                                                expected: str | None) -> None:
    reason = ignore_reason(HeaderSummary(sop_class, "1.2.3", "1.2", "1.2.4", modality, manufacturer=manufacturer))
    assert reason is None if expected is None else (reason or "").startswith(expected)


def test_parse_header_reads_the_equipment_that_made_the_object() -> None:
    ds = make_image_dataset(study_instance_uid=generate_uid(), series_instance_uid=generate_uid())
    ds.Manufacturer = "archive"
    item = Dataset()
    item.Manufacturer = NODE_MANUFACTURER
    ds.ContributingEquipmentSequence = [item]
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    header = parse_header(buffer.getvalue())
    assert (header.manufacturer, header.contributing_manufacturers) == ("archive", (NODE_MANUFACTURER,))
    assert is_node_object(header)
    assert not is_node_object(parse_header(_encoded()))
