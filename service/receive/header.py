"""The identifying header of a received instance: its UIDs, modality and the equipment that made it.

Two readers give the same ``HeaderSummary`` or the same error:

* ``parse_header``: a whole Part 10 stream (preamble, File Meta Information, data set) through pydicom's ``dcmread``
  (the start-up reconciliation, a file in the spool);
* ``parse_received_header``: the C-STORE hot path. The data set's encoding is known from the presentation context,
  so the File Meta Information is not read again; the data set is read only up to (0020,000E) Series Instance UID
  (every attribute needed lies before it), and the values are taken from the raw elements, without pydicom's value
  conversion and validation (a regular expression per UID). Anything it cannot settle (a deflated data set, a UID
  missing before (0020,000E), elements out of order, a data set that does not decode) goes to ``parse_header``,
  which then decides, so an odd object gets exactly the answer it got before. Tests:
  tests/unit/receive/test_header_fast.py compares both readers on regular and odd objects.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from io import BytesIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset
from pydicom.uid import UID

_HEADER_KEYWORDS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "Manufacturer",
    "ContributingEquipmentSequence",
)
_RAW_TAGS = {
    "SOPClassUID": 0x00080016,
    "SOPInstanceUID": 0x00080018,
    "StudyInstanceUID": 0x0020000D,
    "SeriesInstanceUID": 0x0020000E,
    "Modality": 0x00080060,
    "Manufacturer": 0x00080070,
}
_CONTRIBUTING_EQUIPMENT_TAG = 0x0018A001
_LAST_HEADER_TAG = 0x0020000E
"""(0020,000E) Series Instance UID: the highest tag the header needs; the fast reader stops after it."""


class UndecodableDatasetError(ValueError):
    """The received bytes are not a DICOM dataset we can identify."""


class DatasetMismatchError(ValueError):
    """The dataset's SOP Class/Instance UID contradicts the C-STORE request."""


@dataclass(frozen=True)
class HeaderSummary:
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    modality: str
    manufacturer: str = ""
    contributing_manufacturers: tuple[str, ...] = ()
    """Manufacturer of each Contributing Equipment Sequence item (the processing that made the object)."""


# Tolerant UID check: digits and dots, at most 64 characters. Real archives contain UIDs with leading zeros in a
# component (not conformant to PS3.5 9.1, which pydicom's UID.is_valid enforces); they identify an object just as
# well, so they are accepted.
_LOOSE_UID = re.compile(r"^[0-9][0-9.]{0,63}$")


def _valid_uid(value: str) -> bool:
    return bool(_LOOSE_UID.match(value))


def _contributing(ds: Dataset) -> tuple[str, ...]:
    return tuple(str(item.get("Manufacturer", "") or "").strip()
                 for item in ds.get("ContributingEquipmentSequence", None) or [])


def parse_header(
    encoded: bytes, *, request_sop_class_uid: str = "", request_sop_instance_uid: str = ""
) -> HeaderSummary:
    """Read the identifying attributes from a DICOM file stream (preamble + meta + dataset), pixels untouched.

    Tolerant where it is safe: an empty SOP Class / Instance UID in the dataset (seen in real exports) is taken from
    the C-STORE request (``request_*``); a non-empty one that differs from the request raises ``DatasetMismatchError``.
    """
    try:
        ds = dcmread(BytesIO(encoded), stop_before_pixels=True, specific_tags=list(_HEADER_KEYWORDS))
        values = {kw: str(ds.get(kw, "") or "").strip() for kw in _HEADER_KEYWORDS[:-1]}
        contributing = _contributing(ds)
    except (InvalidDicomError, ValueError, KeyError, TypeError, EOFError, OSError, NotImplementedError) as exc:
        raise UndecodableDatasetError(f"dataset does not decode ({type(exc).__name__})") from exc
    except Exception as exc:  # pydicom raises many things on garbage; none may escape to the association
        raise UndecodableDatasetError(f"dataset does not decode ({type(exc).__name__})") from exc
    return _summary(values, contributing, request_sop_class_uid, request_sop_instance_uid)


def parse_received_header(
    encoded: bytes, dataset_offset: int, transfer_syntax_uid: str, *, request_sop_class_uid: str = "",
    request_sop_instance_uid: str = "",
) -> HeaderSummary:
    """``parse_header`` of ``encoded`` (a Part 10 stream whose data set starts at ``dataset_offset`` and is encoded
    in ``transfer_syntax_uid``), read the fast way where it can be settled so (module doc)."""
    read = _read_fast(encoded, dataset_offset, transfer_syntax_uid)
    if read is not None:
        values, contributing = read
        if all(_valid_uid(values[kw]) for kw in _HEADER_KEYWORDS[:4]):
            return _summary(values, contributing, request_sop_class_uid, request_sop_instance_uid)
    return parse_header(encoded, request_sop_class_uid=request_sop_class_uid,
                        request_sop_instance_uid=request_sop_instance_uid)


def _read_fast(encoded: bytes, offset: int, transfer_syntax_uid: str) -> tuple[dict[str, str], tuple[str, ...]] | None:
    """The header's raw values, or None where the fast reader leaves the decision to ``parse_header``."""
    encoding = _encoding(transfer_syntax_uid)
    if encoding is None:
        return None
    try:
        stream = BytesIO(encoded)
        stream.seek(offset)
        ds = read_dataset(stream, *encoding, stop_when=lambda tag, _vr, _length: tag > _LAST_HEADER_TAG)
        tags = list(ds.keys())
        if tags != sorted(tags):
            return None
        values = {kw: _raw_text(ds, tag) for kw, tag in _RAW_TAGS.items()}
        contributing = _contributing(ds) if _CONTRIBUTING_EQUIPMENT_TAG in ds else ()
    except Exception:  # whatever pydicom raised: parse_header reads it again and decides
        return None
    return values, contributing


@functools.lru_cache(maxsize=64)
def _encoding(transfer_syntax_uid: str) -> tuple[bool, bool] | None:
    """(implicit VR, little endian) of a transfer syntax whose data set the fast reader can read, once per syntax
    (not per image); None: deflated or not a transfer syntax pydicom knows."""
    try:
        syntax = UID(transfer_syntax_uid)
        if not syntax.is_transfer_syntax or syntax.is_deflated:
            return None
        return syntax.is_implicit_VR, syntax.is_little_endian
    except ValueError:
        return None


def _raw_text(ds: Dataset, tag: int) -> str:
    element = ds.get_item(tag)
    if element is None:
        return ""
    value = element.value
    if isinstance(value, bytes):
        return value.decode("latin-1").strip("\0 ").strip()
    return str(value or "").strip()


def _summary(values: dict[str, str], contributing: tuple[str, ...], request_sop_class_uid: str,
             request_sop_instance_uid: str) -> HeaderSummary:
    for kw, from_request in (("SOPClassUID", request_sop_class_uid), ("SOPInstanceUID", request_sop_instance_uid)):
        if not values[kw]:
            values[kw] = from_request
        elif from_request and values[kw] != from_request:
            raise DatasetMismatchError(f"{kw} in the dataset differs from the C-STORE request")
    missing = [kw for kw in _HEADER_KEYWORDS[:4] if not values[kw]]
    if missing:
        raise UndecodableDatasetError(f"dataset lacks {', '.join(missing)}")
    invalid = [kw for kw in _HEADER_KEYWORDS[:4] if not _valid_uid(values[kw])]
    if invalid:
        raise UndecodableDatasetError(f"dataset has invalid UID in {', '.join(invalid)}")
    return HeaderSummary(
        sop_class_uid=values["SOPClassUID"],
        sop_instance_uid=values["SOPInstanceUID"],
        study_instance_uid=values["StudyInstanceUID"],
        series_instance_uid=values["SeriesInstanceUID"],
        modality=values["Modality"],
        manufacturer=values["Manufacturer"],
        contributing_manufacturers=contributing,
    )
