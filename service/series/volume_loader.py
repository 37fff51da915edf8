"""Load one CT series from files into a ``CTVolume`` (HU, LPS affine), after ``check_series``.

Each file is parsed once: ``read_series`` reads every header with the pixel data deferred, checks the series,
decodes the pixels from the same datasets and releases them, and hands the headers on (``LoadedSeries``) so that
the result objects (SEG, SR, key image) need not read the files again. Decoding goes through pydicom's pixel
handlers (pylibjpeg / GDCM for compressed transfer syntaxes).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from service.domain.volume import CTVolume
from service.series.checks import SeriesCheck, check_series, slice_normal

logger = logging.getLogger(__name__)

DEFER_PIXEL_BYTES = 4096
"""Elements larger than this (the pixel data) are read from the file only when accessed."""


class SeriesRejectedError(Exception):
    """The series cannot be loaded as a CT volume; ``reason`` says why (no patient data)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def read_headers(paths: Sequence[Path], *, defer_pixels: bool = False) -> list[pydicom.Dataset]:
    """Headers only (no pixel data), or with ``defer_pixels`` the whole datasets with the pixel data read on first
    access. Raises SeriesRejectedError naming the unreadable file."""
    headers = []
    for path in paths:
        try:
            if defer_pixels:
                ds = pydicom.dcmread(path, defer_size=DEFER_PIXEL_BYTES)
            else:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
            raise SeriesRejectedError(f"cannot read {Path(path).name}: {type(exc).__name__}: {exc}") from exc
        _fill_uids_from_file_meta(ds)
        headers.append(ds)
    return headers


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
    match = re.fullmatch(r"(\d{3})([DWMY])", value.strip())
    if not match:
        return None
    number = float(match.group(1))
    return number / {"D": 365.25, "W": 52.18, "M": 12.0, "Y": 1.0}[match.group(2)]


@dataclass(frozen=True, eq=False)
class LoadedSeries:
    volume: CTVolume
    headers: tuple[pydicom.Dataset, ...]
    """The header of each slice k, in the volume's slice order, pixel data released."""

    def __post_init__(self) -> None:
        if len(self.headers) != self.volume.shape[2]:
            raise ValueError(f"headers must have one entry per slice ({self.volume.shape[2]}), got "
                             f"{len(self.headers)}")


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
    headers = read_headers(paths, defer_pixels=True)
    kwargs: dict[str, float | int] = {}
    if min_slices is not None:
        kwargs["min_slices"] = min_slices
    if max_slice_thickness_mm is not None:
        kwargs["max_slice_thickness_mm"] = max_slice_thickness_mm
    check: SeriesCheck = check_series(headers, **kwargs)  # type: ignore[arg-type]
    if not check.ok:
        raise SeriesRejectedError(check.reason)
    ordered_paths = [Path(paths[i]) for i in check.order]
    ordered_headers = [headers[i] for i in check.order]
    hu = _decode_hu(ordered_headers)
    volume = _volume(hu, ordered_headers, ordered_paths, check)
    return LoadedSeries(volume=volume, headers=tuple(ordered_headers))


def _decode_hu(ordered_headers: Sequence[pydicom.Dataset]) -> np.ndarray:
    """HU of every slice, shape (columns, rows, slices); each dataset's pixel data is released once decoded."""
    first = ordered_headers[0]
    rows, columns = int(first.Rows), int(first.Columns)
    hu = np.empty((columns, rows, len(ordered_headers)), dtype=np.float32)
    for k, ds in enumerate(ordered_headers):
        try:
            pixels = ds.pixel_array
        except Exception as exc:  # decoder errors come in many types; the reason is recorded, not raised raw
            raise SeriesRejectedError(f"cannot decode pixel data of slice {k}: {type(exc).__name__}: {exc}") from exc
        finally:
            if "PixelData" in ds:
                del ds.PixelData  # also drops pydicom's cached array: only the HU copy stays in memory
        if pixels.shape != (rows, columns):
            raise SeriesRejectedError(f"slice {k} has shape {pixels.shape}, expected {(rows, columns)}")
        slope = float(ds.RescaleSlope)
        intercept = float(ds.RescaleIntercept)
        hu[:, :, k] = (pixels.astype(np.float32) * slope + intercept).T
    return hu


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
        kvp=float(kvp) if kvp not in (None, "") else None,
        manufacturer=str(getattr(first, "Manufacturer", "")),
        manufacturer_model_name=str(getattr(first, "ManufacturerModelName", "")),
        station_name=str(getattr(first, "StationName", "")),
        convolution_kernel=str(kernel),
        contrast_bolus_agent=str(getattr(first, "ContrastBolusAgent", "")),
        patient_sex=str(getattr(first, "PatientSex", "")),
        patient_age_years=_age_years(str(getattr(first, "PatientAge", ""))),
        extra={key: str(getattr(first, keyword, "") or "")
               for key, keyword in (("acquisition_date", "AcquisitionDate"), ("study_date", "StudyDate"))},
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
