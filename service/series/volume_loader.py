"""Load one CT series from files into a ``CTVolume`` (HU, LPS affine), after ``check_series``.

Each file is parsed once: ``read_series`` reads every header with the pixel data deferred, checks the series,
decodes the pixels from the same datasets and releases them, and hands the headers on (``LoadedSeries``) so that
the result objects (SEG, SR, key image) need not read the files again. Decoding goes through pydicom's pixel
handlers (pylibjpeg / GDCM for compressed transfer syntaxes). A multi-frame CT instance (Enhanced CT, Legacy
Converted Enhanced CT) becomes one ``FrameHeader`` per frame (``service.series.multiframe``); its frames are decoded
from its file one at a time (``pydicom.pixels.iter_pixels``), never the whole pixel data at once.

Pixel quirks handled here: signed or unsigned stored values with any BitsStored (pydicom masks and sign-extends to
BitsStored), RescaleSlope other than 1 (per slice), non-square pixels (PixelSpacing per axis in the affine), and
PixelPaddingValue (with PixelPaddingRangeLimit): stored padding that would read as tissue (e.g. 63536 = -2000 as
unsigned, masked to 12 bits, or a padding value in the tissue or air range) is set to ``PADDING_HU``; padding that
already reads ``PADDING_KEEP_MAX_HU`` (-1024, the floor of the common 12-bit scale) or lower (-2000, -3024 HU) is left
as it is. Header quirks: a missing PatientAge is computed
from PatientBirthDate and the acquisition or study date; with neither, the age is None and
``extra["patient_age_note"]`` says why.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pydicom
import pydicom.pixels
from pydicom.errors import InvalidDicomError

from service.domain.volume import CTVolume
from service.series.checks import SeriesCheck, check_series, slice_normal
from service.series.multiframe import FrameHeader, MultiFrameError, expand_frames, frame_number, is_multiframe_ct

logger = logging.getLogger(__name__)

DEFER_PIXEL_BYTES = 4096
"""Elements larger than this (the pixel data) are read from the file only when accessed."""
PADDING_HU = -3024.0
"""HU given to PixelPaddingValue pixels that would otherwise read as tissue (the value GE's -2000 padding with
RescaleIntercept -1024 reads): far below air, so the tissue survey and the segmentation's HU clip see no tissue."""
PADDING_KEEP_MAX_HU = -1024.0
"""Padding that already reads this or lower is left as it is: no tissue reads that low, and the tissue survey's air
sample starts above it."""
MAX_AGE_YEARS = 130.0


class SeriesRejectedError(Exception):
    """The series cannot be loaded as a CT volume; ``reason`` says why (no patient data)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def read_headers(paths: Sequence[Path], *, defer_pixels: bool = False) -> list[pydicom.Dataset]:
    """Headers only (no pixel data), or with ``defer_pixels`` the whole datasets with the pixel data read on first
    access. A multi-frame CT instance (Enhanced CT, Legacy Converted Enhanced CT) gives one ``FrameHeader`` per
    frame, in frame order (``service.series.multiframe``). Raises SeriesRejectedError naming the unreadable file."""
    return read_slice_headers(paths, defer_pixels=defer_pixels)[0]


def read_slice_headers(paths: Sequence[Path], *,
                       defer_pixels: bool = False) -> tuple[list[pydicom.Dataset], list[Path]]:
    """``read_headers`` with the file of each header (a multi-frame file once per frame)."""
    headers: list[pydicom.Dataset] = []
    header_paths: list[Path] = []
    for path in paths:
        try:
            if defer_pixels:
                ds = pydicom.dcmread(path, defer_size=DEFER_PIXEL_BYTES)
            else:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
            raise SeriesRejectedError(f"cannot read {Path(path).name}: {type(exc).__name__}: {exc}") from exc
        _fill_uids_from_file_meta(ds)
        if is_multiframe_ct(ds):
            try:
                frames: list[pydicom.Dataset] = list(expand_frames(ds, Path(path)))
            except (MultiFrameError, AttributeError, KeyError, TypeError, ValueError) as exc:
                raise SeriesRejectedError(f"multi-frame CT {Path(path).name}: {type(exc).__name__}: {exc}") from exc
        else:
            frames = [ds]
        headers += frames
        header_paths += [Path(path)] * len(frames)
    return headers, header_paths


def _fill_uids_from_file_meta(ds: pydicom.Dataset) -> None:
    """Some de-identified files carry empty SOP Class/Instance UIDs in the dataset but keep them in the file meta.

    Take them from the meta header (explicitly, with a log line) rather than rejecting the file.
    """
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        return
    for attribute, meta_attribute in (
        ("SOPClassUID", "MediaStorageSOPClassUID"),
        ("SOPInstanceUID", "MediaStorageSOPInstanceUID"),
    ):
        if not str(getattr(ds, attribute, "") or "") and str(getattr(meta, meta_attribute, "") or ""):
            setattr(ds, attribute, getattr(meta, meta_attribute))
            logger.debug("%s empty in dataset; taken from the file meta %s", attribute, meta_attribute)


def dicom_files(folder: Path) -> list[Path]:
    """Every file under ``folder`` that looks like DICOM (by preamble), sorted by name."""
    found = []
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        try:
            with path.open("rb") as handle:
                handle.seek(128)
                if handle.read(4) == b"DICM":
                    found.append(path)
        except OSError:
            continue
    return found


def _age_years(value: str) -> float | None:
    """PatientAge (AS: ``nnnD|W|M|Y``; one to three digits accepted) in years, or None when malformed."""
    match = re.fullmatch(r"(\d{1,3})([DWMY])", value.strip().upper())
    if not match:
        return None
    number = float(match.group(1))
    return number / {"D": 365.25, "W": 52.18, "M": 12.0, "Y": 1.0}[match.group(2)]


def _positive_float(value: object) -> float | None:
    """A positive finite number from a DS/IS header value, None when missing or malformed (logged, not raised)."""
    if value in (None, ""):
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        logger.warning("unreadable numeric header value ignored")
        return None
    return number if math.isfinite(number) and number > 0 else None


def _da(value: object) -> date | None:
    text = str(value or "").strip()
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


def patient_age(ds: pydicom.Dataset) -> tuple[float | None, str]:
    """The patient's age in years and, when it is not PatientAge, a note saying where it came from or why it is
    unknown (no patient data in the note: attribute names only)."""
    age = _age_years(str(getattr(ds, "PatientAge", "") or ""))
    if age is not None:
        return age, ""
    birth = _da(getattr(ds, "PatientBirthDate", ""))
    for keyword in ("AcquisitionDate", "StudyDate", "SeriesDate"):
        scan = _da(getattr(ds, keyword, ""))
        if birth is not None and scan is not None:
            years = (scan - birth).days / 365.25
            if 0.0 <= years <= MAX_AGE_YEARS:
                return years, f"patient age from PatientBirthDate and {keyword} (PatientAge missing or malformed)"
            return None, f"patient age unknown: PatientBirthDate and {keyword} give an impossible age"
    return None, "patient age unknown: no PatientAge, and no PatientBirthDate with an acquisition or study date"


@dataclass(frozen=True, eq=False)
class LoadedSeries:
    volume: CTVolume
    headers: tuple[pydicom.Dataset, ...]
    """The header of each slice k, in the volume's slice order, pixel data released. For a multi-frame CT instance
    slice k's header is a ``FrameHeader``: SOPClassUID and SOPInstanceUID of the instance, ``frame_number``."""

    def __post_init__(self) -> None:
        if len(self.headers) != self.volume.shape[2]:
            raise ValueError(f"headers must have one entry per slice ({self.volume.shape[2]}), got "
                             f"{len(self.headers)}")

    @property
    def frame_numbers(self) -> tuple[int | None, ...]:
        """The frame (1-based) of each slice k in its instance (``volume.sop_instance_uids[k]``); None for a
        single-frame slice."""
        return tuple(frame_number(h) for h in self.headers)

    @property
    def multiframe_headers(self) -> tuple[pydicom.Dataset, ...]:
        """The multi-frame instances' own headers (functional groups kept, pixel data released), in the order of
        their first slice; empty for a single-frame series."""
        found: dict[str, pydicom.Dataset] = {}
        for header in self.headers:
            if isinstance(header, FrameHeader):
                found.setdefault(str(header.multiframe.SOPInstanceUID), header.multiframe)
        return tuple(found.values())


def load_series(
    paths: Sequence[Path],
    *,
    min_slices: int | None = None,
    max_slice_thickness_mm: float | None = None,
) -> CTVolume:
    """Read, check and decode the series; raise SeriesRejectedError with the reasons when it fails a check."""
    return read_series(paths, min_slices=min_slices, max_slice_thickness_mm=max_slice_thickness_mm).volume


def read_series(
    paths: Sequence[Path],
    *,
    min_slices: int | None = None,
    max_slice_thickness_mm: float | None = None,
) -> LoadedSeries:
    """``load_series`` that also returns the slice headers; every file is parsed once."""
    if not paths:
        raise SeriesRejectedError("no files")
    headers, header_paths = read_slice_headers(paths, defer_pixels=True)
    kwargs: dict[str, float | int] = {}
    if min_slices is not None:
        kwargs["min_slices"] = min_slices
    if max_slice_thickness_mm is not None:
        kwargs["max_slice_thickness_mm"] = max_slice_thickness_mm
    check: SeriesCheck = check_series(headers, **kwargs)  # type: ignore[arg-type]
    if not check.ok:
        raise SeriesRejectedError(check.reason)
    ordered_paths = [header_paths[i] for i in check.order]
    ordered_headers = [headers[i] for i in check.order]
    hu = _decode_hu(ordered_headers)
    volume = _volume(hu, ordered_headers, ordered_paths, check)
    return LoadedSeries(volume=volume, headers=tuple(ordered_headers))


def _decode_hu(ordered_headers: Sequence[pydicom.Dataset]) -> np.ndarray:
    """HU of every slice, shape (columns, rows, slices); each dataset's pixel data is released once decoded, and a
    multi-frame instance is decoded one frame at a time from its file."""
    first = ordered_headers[0]
    rows, columns = int(first.Rows), int(first.Columns)
    hu = np.empty((columns, rows, len(ordered_headers)), dtype=np.float32)
    padded_slices = 0
    for k, pixels in _slice_pixels(ordered_headers):
        ds = ordered_headers[k]
        if pixels.shape != (rows, columns):
            raise SeriesRejectedError(f"slice {k} has shape {pixels.shape}, expected {(rows, columns)}")
        slope, intercept = _rescale(ds, k)
        values = pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)
        padding = _padding_mask(pixels, ds)
        if padding is not None:
            as_tissue = padding & (values > PADDING_KEEP_MAX_HU)
            if np.any(as_tissue):
                values[as_tissue] = PADDING_HU
                padded_slices += 1
        hu[:, :, k] = values.T
    if padded_slices:
        logger.warning("PixelPaddingValue pixels would read as tissue or air on %d slices; set to %.0f HU",
                       padded_slices, PADDING_HU)
    return hu


def _slice_pixels(ordered_headers: Sequence[pydicom.Dataset]) -> Iterator[tuple[int, np.ndarray]]:
    """(k, stored pixels of slice k) for every slice: single-frame slices in slice order, then the frames of each
    multi-frame instance in frame order (one frame decoded at a time; the instance's pixel data released)."""
    frames: dict[int, list[tuple[int, int]]] = {}  # id(instance header) -> (frame index, k)
    instances: dict[int, FrameHeader] = {}
    for k, ds in enumerate(ordered_headers):
        if isinstance(ds, FrameHeader):
            frames.setdefault(id(ds.multiframe), []).append((ds.frame_number - 1, k))
            instances.setdefault(id(ds.multiframe), ds)
            continue
        try:
            pixels = ds.pixel_array
        except Exception as exc:  # decoder errors come in many types; the reason is recorded, not raised raw
            raise SeriesRejectedError(f"cannot decode pixel data of slice {k}: {type(exc).__name__}: {exc}") from exc
        finally:
            if "PixelData" in ds:
                del ds.PixelData  # also drops pydicom's cached array: only the HU copy stays in memory
        yield k, pixels
    for key, wanted in frames.items():
        frame = instances[key]
        wanted.sort()
        source = frame.path if frame.path is not None else frame.multiframe
        name = frame.path.name if frame.path is not None else "multi-frame instance"
        try:
            decoded = pydicom.pixels.iter_pixels(source, indices=[index for index, _ in wanted])
            for (_, k), pixels in zip(wanted, decoded, strict=True):
                yield k, pixels
        except SeriesRejectedError:
            raise
        except Exception as exc:  # as above
            raise SeriesRejectedError(f"cannot decode the frames of {name}: {type(exc).__name__}: {exc}") from exc
        finally:
            if "PixelData" in frame.multiframe:
                del frame.multiframe.PixelData  # the header the result objects get holds no pixel data


def _rescale(ds: pydicom.Dataset, k: int) -> tuple[float, float]:
    """RescaleSlope and RescaleIntercept of one slice; SeriesRejectedError when not finite or the slope <= 0."""
    try:
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    except (AttributeError, TypeError, ValueError) as exc:
        raise SeriesRejectedError(f"slice {k}: RescaleSlope/RescaleIntercept unreadable: {exc}") from exc
    if not (math.isfinite(slope) and math.isfinite(intercept)) or slope <= 0:
        raise SeriesRejectedError(f"slice {k}: RescaleSlope {slope} / RescaleIntercept {intercept} cannot give HU")
    return slope, intercept


def _stored(value: object, ds: pydicom.Dataset) -> int | None:
    """A PixelPaddingValue as pydicom decodes stored pixels: masked to BitsStored, sign-extended when signed."""
    try:
        raw = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None
    bits = int(getattr(ds, "BitsStored", 16) or 16)
    raw &= (1 << bits) - 1
    if int(getattr(ds, "PixelRepresentation", 0) or 0) == 1 and raw >= 1 << (bits - 1):
        raw -= 1 << bits
    return raw


def _padding_mask(pixels: np.ndarray, ds: pydicom.Dataset) -> np.ndarray | None:
    """Stored pixels equal to PixelPaddingValue (or between it and PixelPaddingRangeLimit); None without one."""
    value = _stored(getattr(ds, "PixelPaddingValue", None), ds)
    if value is None:
        return None
    limit = _stored(getattr(ds, "PixelPaddingRangeLimit", None), ds)
    if limit is None:
        return pixels == value
    lo, hi = min(value, limit), max(value, limit)
    return (pixels >= lo) & (pixels <= hi)


def _volume(hu: np.ndarray, ordered_headers: Sequence[pydicom.Dataset], ordered_paths: Sequence[Path],
            check: SeriesCheck) -> CTVolume:
    first = ordered_headers[0]
    iop = [float(v) for v in first.ImageOrientationPatient]
    row_dir = np.asarray(iop[:3])
    col_dir = np.asarray(iop[3:])
    normal = slice_normal(iop)
    pixel_spacing = [float(v) for v in first.PixelSpacing]  # [between rows, between columns]
    spacing_k = check.slice_spacing_mm if check.slice_spacing_mm else float(check.slice_thickness_mm or 1.0)
    affine = np.eye(4)
    affine[:3, 0] = row_dir * pixel_spacing[1]
    affine[:3, 1] = col_dir * pixel_spacing[0]
    affine[:3, 2] = normal * spacing_k
    affine[:3, 3] = [float(v) for v in first.ImagePositionPatient]

    kvp = getattr(first, "KVP", None)
    age_years, age_note = patient_age(first)
    kernel = getattr(first, "ConvolutionKernel", "")
    if isinstance(kernel, pydicom.multival.MultiValue):
        kernel = "\\".join(str(v) for v in kernel)
    volume = CTVolume(
        hu=hu,
        affine_lps=affine,
        study_instance_uid=str(first.StudyInstanceUID),
        series_instance_uid=str(first.SeriesInstanceUID),
        frame_of_reference_uid=str(getattr(first, "FrameOfReferenceUID", "")),
        sop_instance_uids=tuple(str(h.SOPInstanceUID) for h in ordered_headers),
        source_paths=tuple(ordered_paths),
        kvp=_positive_float(kvp),
        manufacturer=str(getattr(first, "Manufacturer", "")),
        manufacturer_model_name=str(getattr(first, "ManufacturerModelName", "")),
        station_name=str(getattr(first, "StationName", "")),
        convolution_kernel=str(kernel),
        contrast_bolus_agent=str(getattr(first, "ContrastBolusAgent", "")),
        patient_sex=str(getattr(first, "PatientSex", "")),
        patient_age_years=age_years,
        extra={**{key: str(getattr(first, keyword, "") or "")
                  for key, keyword in (("acquisition_date", "AcquisitionDate"), ("study_date", "StudyDate"))},
               **({"patient_age_note": age_note} if age_note else {}),
               **({"series_warnings": "; ".join(check.warnings)} if check.warnings else {})},
    )
    logger.info(
        "loaded series: %d slices, spacing %s mm, %s",
        volume.shape[2],
        tuple(round(s, 3) for s in volume.spacing_mm),
        "; ".join(check.warnings) or "no warnings",
    )
    return volume


def load_series_folder(folder: Path, **kwargs: float | int) -> CTVolume:
    """All DICOM files under ``folder`` as one series."""
    files = dicom_files(folder)
    if not files:
        raise SeriesRejectedError(f"no DICOM files under {Path(folder).name}")
    return load_series(files, **kwargs)  # type: ignore[arg-type]
