"""A received C-STORE data set as a DICOM Part 10 stream, with its File Meta Information encoded directly.

pynetdicom's ``Event.encoded_dataset(include_meta=True)`` builds a pydicom ``FileMetaDataset`` (validating each UID)
and encodes it with pydicom's writer for every instance: about 0.2 ms (``python -m bench.receive_costs``), a tenth
of the node's CPU per received image. The File Meta Information of a received instance has seven elements (PS3.10
7.1), all known but the SOP Instance UID; here they are encoded as PS3.5 says (Explicit VR Little Endian, UIDs
padded with NUL, text with a space to an even length): byte for byte what pynetdicom writes
(tests/unit/receive/test_part10.py compares them).
"""

from __future__ import annotations

import struct
from typing import Any

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

PREAMBLE = b"\0" * 128 + b"DICM"
IMPLEMENTATION_CLASS_UID = str(PYNETDICOM_IMPLEMENTATION_UID)
IMPLEMENTATION_VERSION_NAME = PYNETDICOM_IMPLEMENTATION_VERSION
"""The implementation that received the object (PS3.10 7.1: the one that wrote the file), as pynetdicom writes it."""

_META_VERSION = b"\x02\x00\x01\x00OB\x00\x00" + struct.pack("<I", 2) + b"\x00\x01"
"""(0002,0001) File Meta Information Version: OB, 4-byte length, 00 01."""


def _short(element: int, vr: bytes, value: bytes) -> bytes:
    """One group-2 element with a 2-byte length (UI, SH, UL)."""
    return struct.pack("<HH", 0x0002, element) + vr + struct.pack("<H", len(value)) + value


def _uid(value: str) -> bytes:
    encoded = value.encode("ascii")
    return encoded + b"\0" if len(encoded) % 2 else encoded


def _text(value: str) -> bytes:
    encoded = value.encode("ascii")
    return encoded + b" " if len(encoded) % 2 else encoded


def file_meta_bytes(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str) -> bytes:
    """The File Meta Information group (0002,0000)-(0002,0013) of a received instance, encoded."""
    body = b"".join((
        _META_VERSION,
        _short(0x0002, b"UI", _uid(sop_class_uid)),
        _short(0x0003, b"UI", _uid(sop_instance_uid)),
        _short(0x0010, b"UI", _uid(transfer_syntax_uid)),
        _short(0x0012, b"UI", _uid(IMPLEMENTATION_CLASS_UID)),
        _short(0x0013, b"SH", _text(IMPLEMENTATION_VERSION_NAME)),
    ))
    return _short(0x0000, b"UL", struct.pack("<I", len(body))) + body


def received_part10(event: Any) -> tuple[bytes, int]:
    """The C-STORE request's data set as a Part 10 stream, and where its data set starts in it.

    The File Meta Information is taken from the request and its presentation context, as pynetdicom's
    ``encoded_dataset`` does; the data set bytes are copied once, as received."""
    request = event.request
    prefix = PREAMBLE + file_meta_bytes(str(request.AffectedSOPClassUID), str(request.AffectedSOPInstanceUID),
                                        str(event.context.transfer_syntax))
    with request.DataSet.getbuffer() as dataset:
        return b"".join((prefix, dataset)), len(prefix)
