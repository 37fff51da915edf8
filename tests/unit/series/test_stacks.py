"""Series geometry quirks (issue 17): which instances form the stack the node loads, and why (service.series.stacks).

Each test writes a small series with the one CT writer (tests/support/ct_series.py) and asserts the decision, the
instances chosen (``SeriesCheck.order``) and the warning or reason text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.uid import generate_uid

from service.series.checks import SeriesCheck, check_series
from service.series.volume_loader import SeriesRejectedError, read_headers, read_series
from tests.support.ct_series import CTSeriesHeader, write_ct_series

ROWS, COLUMNS = 8, 6


def _frame(value: int) -> np.ndarray:
    return np.full((ROWS, COLUMNS), 1024 + value, dtype=np.uint16)


def _write(folder: Path, z_mm: Sequence[float], *, header: CTSeriesHeader | None = None,
           slice_extra: Sequence[Mapping[str, Any]] | None = None, values: Sequence[int] | None = None,
           y_mm: Sequence[float] | None = None) -> list[Path]:
    """One file per position (z along +S for an axial header); pixel value k + ... (or ``values``)."""
    header = header or CTSeriesHeader(slice_thickness_mm=2.0)
    values = values if values is not None else list(range(len(z_mm)))
    ys = y_mm if y_mm is not None else [0.0] * len(z_mm)
    return write_ct_series(folder, (_frame(v) for v in values), header,
                           positions_lps_mm=[[0.0, y, z] for y, z in zip(ys, z_mm, strict=True)],
                           slice_extra=slice_extra, file_name=lambda k: f"{k:04d}.dcm")


def _check(paths: Sequence[Path], **kwargs: int) -> SeriesCheck:
    return check_series(read_headers(paths, defer_pixels=True), **kwargs)


def test_per_instance_frames_of_reference_with_consistent_geometry_are_accepted(tmp_path: Path) -> None:
    z = [2.0 * k for k in range(12)]
    paths = _write(tmp_path / "s", z, slice_extra=[{"FrameOfReferenceUID": generate_uid()} for _ in z])
    check = _check(paths)
    assert check.ok, check.reason
    assert check.order == tuple(range(12))
    assert len(check.warnings) == 1
    assert check.warnings[0].startswith("12 Frame of Reference UIDs in the 12 slices used")
    assert "the result objects reference the first slice's in slice order" in check.warnings[0]


def test_several_frames_of_reference_with_inconsistent_geometry_are_rejected(tmp_path: Path) -> None:
    z = [2.0 * k for k in range(12)]
    extra = [{"FrameOfReferenceUID": generate_uid(),
              "ImageOrientationPatient": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0] if k < 6 else [0.0, 1.0, 0.0, -1.0, 0.0, 0.0]}
             for k in range(12)]
    check = _check(_write(tmp_path / "s", z, slice_extra=extra))
    assert not check.ok
    assert "slices have more than one orientation" in check.reasons
    assert "expected one Frame of Reference, found 12 (with inconsistent geometry)" in check.reasons


def test_missing_slices_use_the_longest_contiguous_part(tmp_path: Path) -> None:
    z = [2.0 * k for k in range(30) if k != 5]  # slice 5 missing: parts of 5 and 24 slices
    check = _check(_write(tmp_path / "s", z))
    assert check.ok, check.reason
    assert check.order == tuple(range(5, 29))
    assert check.slice_count == 24
    assert check.slice_spacing_mm == pytest.approx(2.0)
    assert check.warnings == ("gap of 4.00 mm at 8.0 to 12.0 mm along the slice normal (missing slices); used the "
                              "longest contiguous part (24 of 29 slices)",)


def test_missing_slices_without_a_long_enough_part_are_rejected(tmp_path: Path) -> None:
    z = [2.0 * k for k in range(16) if k != 8]  # parts of 8 and 7 slices, 10 needed
    check = _check(_write(tmp_path / "s", z))
    assert not check.ok
    assert check.reason == ("irregular slice spacing (missing slices): gap of 4.00 mm at 14.0 to 18.0 mm along the "
                            "slice normal; the longest contiguous part has 8 slices (at least 10 needed)")


def test_small_spacing_irregularity_is_still_rejected(tmp_path: Path) -> None:
    z = [2.0 * k for k in range(12)]
    z[6] += 0.6  # gaps of 2.6 and 1.4 mm: under 1.5x the median, over the tolerance
    check = _check(_write(tmp_path / "s", z))
    assert not check.ok
    assert check.reason == "irregular slice spacing: gaps from 1.40 to 2.60 mm (missing slices?)"


def test_two_acquisitions_by_acquisition_number_choose_by_the_selection_rules(tmp_path: Path) -> None:
    # acquisition 1: 12 native slices; acquisition 2: 15 slices with contrast over the same range and beyond
    z = [2.0 * k for k in range(12)] + [2.0 * k for k in range(15)]
    extra = [{"AcquisitionNumber": 1}] * 12 + [{"AcquisitionNumber": 2, "ContrastBolusAgent": "IOPAMIDOL"}] * 15
    check = _check(_write(tmp_path / "s", z, slice_extra=extra))
    assert check.ok, check.reason
    assert check.order == tuple(range(12))  # non-contrast preferred over more slices
    assert check.warnings == ("2 acquisitions in one series, split by AcquisitionNumber (12, 15 instances; 2 usable); "
                              "used AcquisitionNumber 1: 2 mm, kernel ? (unknown), non-contrast, 12 slices",)


def test_overlapping_acquisitions_without_duplicate_positions_are_split(tmp_path: Path) -> None:
    # two acquisitions offset by 1 mm over the same range: sorted together they would look like one 1 mm stack
    z = [2.0 * k for k in range(12)] + [2.0 * k + 1.0 for k in range(12)]
    extra = [{"AcquisitionNumber": 1}] * 12 + [{"AcquisitionNumber": 2}] * 12
    check = _check(_write(tmp_path / "s", z, slice_extra=extra))
    assert check.ok, check.reason
    assert check.order == tuple(range(12))
    assert check.slice_spacing_mm == pytest.approx(2.0)
    assert check.warnings[0].startswith("2 acquisitions in one series, split by AcquisitionNumber (12, 12 instances; "
                                        "2 usable); used AcquisitionNumber 1")


def test_two_acquisitions_by_time_cluster_prefer_the_earlier_on_a_tie(tmp_path: Path) -> None:
    # no AcquisitionNumber: arterial at 12:00:00, venous 40 s later, same 12 positions
    z = [2.0 * k for k in range(12)] * 2
    extra = [{"AcquisitionTime": f"1200{k // 2:02d}.{5 * (k % 2)}"} for k in range(12)]
    extra += [{"AcquisitionTime": f"1200{40 + k // 2:02d}.{5 * (k % 2)}"} for k in range(12)]
    check = _check(_write(tmp_path / "s", z, slice_extra=extra))
    assert check.ok, check.reason
    assert check.order == tuple(range(12))
    assert check.warnings == ("2 acquisitions in one series, split by AcquisitionTime (12, 12 instances; 2 usable); "
                              "used AcquisitionTime 120000.0: 2 mm, kernel ? (unknown), non-contrast, 12 slices",)


def test_repeated_range_split_by_repeated_position(tmp_path: Path) -> None:
    # 12 slices, then slices 3..7 again (a repeated range) with other pixels; no AcquisitionNumber, no times
    z = [2.0 * k for k in range(12)] + [2.0 * k for k in range(3, 8)]
    check = _check(_write(tmp_path / "s", z, values=list(range(12)) + [100 + k for k in range(5)]))
    assert check.ok, check.reason
    assert check.order == tuple(range(12))
    assert check.warnings == ("2 acquisitions in one series, split by repeated position (12, 5 instances; 1 usable); "
                              "used group 1 (instance order): 2 mm, kernel ? (unknown), non-contrast, 12 slices",)


def test_repeated_range_too_short_everywhere_is_rejected(tmp_path: Path) -> None:
    z = [2.0 * k for k in range(8)] * 2
    check = _check(_write(tmp_path / "s", z, values=list(range(16))))
    assert not check.ok
    assert check.reason == ("duplicate slice positions (16 instances at 8 positions): split by repeated position "
                            "into 2 groups (8, 8 instances), none usable (largest: only 8 slices (at least 10 "
                            "needed))")


def test_resent_copies_keep_one_instance_per_position(tmp_path: Path) -> None:
    header = CTSeriesHeader(slice_thickness_mm=2.0)
    z = [2.0 * k for k in range(12)]
    first = _write(tmp_path / "s" / "a", z, header=header)
    again = _write(tmp_path / "s" / "b", z, header=header)  # the same slices, new SOP Instance UIDs
    check = _check(first + again)
    assert check.ok, check.reason
    assert check.order == tuple(range(12))
    assert check.warnings == ("12 re-sent copies dropped (same position, identical pixel data, other SOP Instance "
                              "UIDs): one instance kept per position",)
    header_only = check_series(read_headers(first + again))  # the scheduler's check: no pixel data
    assert header_only.ok and "identical headers; pixel data not read" in header_only.warnings[0]
    loaded = read_series(first + again)
    assert loaded.volume.shape == (COLUMNS, ROWS, 12)


def test_gantry_tilt_reason_names_the_angle_and_no_resampling(tmp_path: Path) -> None:
    z = [2.0 * k for k in range(12)]
    check = _check(_write(tmp_path / "s", z, y_mm=[0.35 * k for k in range(12)]))
    assert not check.ok
    assert check.reason == "gantry tilt of 9.9 degrees (more than 0.5 degrees): tilted series are not resampled"
    with pytest.raises(SeriesRejectedError, match="tilted series are not resampled"):
        read_series(_write(tmp_path / "t", z, y_mm=[0.35 * k for k in range(12)]))


def test_loader_takes_the_first_ordered_slices_frame_of_reference(tmp_path: Path) -> None:
    # feet-first: file 0 is the most superior slice, so the first slice in slice order is the last file
    frames = [generate_uid() for _ in range(12)]
    z = [100.0 - 2.0 * k for k in range(12)]
    paths = _write(tmp_path / "s", z, slice_extra=[{"FrameOfReferenceUID": uid} for uid in frames])
    loaded = read_series(paths)
    assert loaded.volume.frame_of_reference_uid == frames[-1]
    assert loaded.volume.hu[0, 0, :].tolist() == pytest.approx(list(range(11, -1, -1)))


def test_loader_hands_the_check_warnings_on_with_the_volume(tmp_path: Path) -> None:
    z = [2.0 * k for k in range(30) if k != 5]
    volume = read_series(_write(tmp_path / "s", z)).volume
    assert volume.shape[2] == 24
    assert "used the longest contiguous part (24 of 29 slices)" in volume.extra["series_warnings"]
