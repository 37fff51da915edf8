"""The Part 10 stream the handler stores: its File Meta Information is byte for byte what pynetdicom's
``encoded_dataset(include_meta=True)`` writes, and the stream reads back as the data set that was received."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom import dcmread
from pydicom.uid import (
    CTImageStorage,
    EnhancedCTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    generate_uid,
)
from pynetdicom.dsutils import create_file_meta, encode_file_meta

from service.receive.part10 import PREAMBLE, file_meta_bytes, received_part10
from tests.integration.dicom_net_support import make_image_dataset
from tests.support.store_event import store_event


@pytest.mark.parametrize("sop_class", [CTImageStorage, EnhancedCTImageStorage])
@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian,
                                    JPEG2000Lossless])
@pytest.mark.parametrize("sop_instance", ["1.2.3", "1.2.34", "1.2.826.0.1.3680043.8.498." + "1" * 37])
def test_file_meta_is_what_pynetdicom_writes(sop_class: str, syntax: str, sop_instance: str) -> None:
    expected = encode_file_meta(create_file_meta(sop_class_uid=sop_class, sop_instance_uid=sop_instance,
                                                 transfer_syntax=syntax))
    assert file_meta_bytes(sop_class, sop_instance, syntax) == expected


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_the_received_stream_reads_back_as_the_data_set_received(syntax: str) -> None:
    ds = make_image_dataset(study_instance_uid=generate_uid(), series_instance_uid=generate_uid())
    ds.file_meta.TransferSyntaxUID = syntax
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    event = store_event(buffer.getvalue())
    part10, offset = received_part10(event)
    assert part10.startswith(PREAMBLE) and part10[offset:] == event.request.DataSet.getvalue()
    back = dcmread(BytesIO(part10))
    assert back.file_meta.TransferSyntaxUID == syntax
    assert back.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert back.SOPInstanceUID == ds.SOPInstanceUID and back.PixelData == ds.PixelData
