"""Minimal header parse of received bytes, and the CT / non-CT decision."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom.uid import CTImageStorage, EnhancedCTImageStorage, SecondaryCaptureImageStorage, generate_uid

from service.receive.handlers import HeaderSummary, UndecodableDatasetError, non_ct_reason, parse_header
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
        (EnhancedCTImageStorage, "CT", False),
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
