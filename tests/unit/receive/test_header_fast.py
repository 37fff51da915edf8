"""The C-STORE hot path's header reader (``parse_received_header``) against the whole-file reader
(``parse_header``): the same summary, or the same error, on regular and odd objects in every encoding the node
accepts; and the fast reader really answers the regular ones itself."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from io import BytesIO

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from service.receive import header as header_module
from service.receive.handlers import NODE_MANUFACTURER
from service.receive.header import HeaderSummary, parse_header, parse_received_header
from service.receive.part10 import received_part10
from tests.integration.dicom_net_support import make_image_dataset
from tests.support.store_event import store_event


def _dataset() -> Dataset:
    return make_image_dataset(study_instance_uid=generate_uid(), series_instance_uid=generate_uid())


def _encode(ds: Dataset, syntax: str = ExplicitVRLittleEndian) -> bytes:
    ds.file_meta.TransferSyntaxUID = syntax
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _both(encoded: bytes, request_sop_class: str = "", request_sop_instance: str = "") -> tuple[object, object]:
    """(fast, whole-file) outcome: the summary, or the error's type and message."""
    event = store_event(encoded)
    part10, offset = received_part10(event)

    def outcome(read: Callable[[], HeaderSummary]) -> object:
        try:
            return read()
        except ValueError as exc:
            return type(exc).__name__, str(exc)

    fast = outcome(lambda: parse_received_header(
        part10, offset, str(event.context.transfer_syntax), request_sop_class_uid=request_sop_class,
        request_sop_instance_uid=request_sop_instance))
    whole = outcome(lambda: parse_header(part10, request_sop_class_uid=request_sop_class,
                                         request_sop_instance_uid=request_sop_instance))
    return fast, whole


def _with_contributing_equipment(ds: Dataset) -> Dataset:
    item = Dataset()
    item.Manufacturer = NODE_MANUFACTURER
    ds.ContributingEquipmentSequence = [item]
    ds.Manufacturer = "ARCHIVE"
    return ds


def _without(keyword: str) -> Callable[[Dataset], Dataset]:
    def edit(ds: Dataset) -> Dataset:
        delattr(ds, keyword)
        return ds
    return edit


def _setting(keyword: str, value: str) -> Callable[[Dataset], Dataset]:
    def edit(ds: Dataset) -> Dataset:
        setattr(ds, keyword, value)
        return ds
    return edit


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian])
@pytest.mark.parametrize("edit", [
    lambda ds: ds,
    _with_contributing_equipment,
    _setting("Manufacturer", "SIEMENS"),
    _setting("Modality", "MR"),
    _setting("StudyInstanceUID", "1.2.826.0.1.3680043.8.498.012"),  # a leading zero: tolerated
    _setting("StudyInstanceUID", "1.2.abc"),
    _setting("SeriesInstanceUID", "1.2.3\\1.2.4"),
    _without("SeriesInstanceUID"),
    _without("Modality"),
    _setting("SOPInstanceUID", ""),
], ids=["regular", "contributing", "manufacturer", "mr", "leading-zero", "letters", "two-values",
        "no-series", "no-modality", "empty-sop-instance"])
def test_the_fast_reader_answers_as_the_whole_file_reader(syntax: str, edit: Callable[[Dataset], Dataset]) -> None:
    ds = edit(_dataset())
    request_instance = ds.file_meta.MediaStorageSOPInstanceUID
    fast, whole = _both(_encode(ds, syntax), str(ds.SOPClassUID), str(request_instance))
    assert fast == whole


def test_a_dataset_that_contradicts_the_request_is_a_mismatch_in_both_readers() -> None:
    ds = _dataset()
    fast, whole = _both(_encode(ds), str(ds.SOPClassUID), generate_uid())
    assert fast == whole == ("DatasetMismatchError", "SOPInstanceUID in the dataset differs from the C-STORE request")


def test_a_deflated_dataset_is_read_by_the_whole_file_reader() -> None:
    ds = _dataset()
    fast, whole = _both(_encode(ds, DeflatedExplicitVRLittleEndian), str(ds.SOPClassUID), str(ds.SOPInstanceUID))
    assert isinstance(fast, HeaderSummary) and fast == whole


@pytest.mark.parametrize("garbage", [b"", b"\xff" * 64, zlib.compress(b"not dicom" * 20)])
def test_a_data_set_that_does_not_decode_gets_the_whole_file_readers_error(garbage: bytes) -> None:
    ds = _dataset()
    event = store_event(_encode(ds))
    event.request.DataSet = BytesIO(garbage)
    part10, offset = received_part10(event)
    with pytest.raises(ValueError) as fast:
        parse_received_header(part10, offset, ExplicitVRLittleEndian)
    with pytest.raises(ValueError) as whole:
        parse_header(part10)
    assert (type(fast.value), str(fast.value)) == (type(whole.value), str(whole.value))


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian])
def test_the_fast_reader_settles_a_regular_object_without_the_whole_file_reader(
        syntax: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = _with_contributing_equipment(_dataset())
    event = store_event(_encode(ds, syntax))
    part10, offset = received_part10(event)

    def not_called(*_args: object, **_kwargs: object) -> HeaderSummary:
        raise AssertionError("the whole-file reader was used")

    monkeypatch.setattr(header_module, "parse_header", not_called)
    summary = parse_received_header(part10, offset, syntax)
    assert (summary.sop_instance_uid, summary.series_instance_uid, summary.modality) == (
        ds.SOPInstanceUID, ds.SeriesInstanceUID, "CT")
    assert (summary.manufacturer, summary.contributing_manufacturers) == ("ARCHIVE", (NODE_MANUFACTURER,))
