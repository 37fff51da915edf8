"""A C-STORE event as pynetdicom hands it to the node's handler (the parts the handler reads), made from a Part 10
file: the request's UIDs, its data set as received (the bytes after the File Meta Information, in a BytesIO), the
presentation context's transfer syntax and the calling AE title."""

from __future__ import annotations

from io import BytesIO
from types import SimpleNamespace

from pydicom import dcmread


def store_event(encoded: bytes, calling_ae_title: str = "SCANNER") -> SimpleNamespace:
    meta = dcmread(BytesIO(encoded), stop_before_pixels=True).file_meta
    dataset_offset = 132 + 12 + int(meta.FileMetaInformationGroupLength)
    return SimpleNamespace(
        request=SimpleNamespace(AffectedSOPInstanceUID=meta.MediaStorageSOPInstanceUID,
                                AffectedSOPClassUID=meta.MediaStorageSOPClassUID,
                                DataSet=BytesIO(encoded[dataset_offset:])),
        assoc=SimpleNamespace(requestor=SimpleNamespace(ae_title=calling_ae_title)),
        context=SimpleNamespace(transfer_syntax=meta.TransferSyntaxUID))
