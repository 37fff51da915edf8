"""Scout images inside a series and sagittal/coronal series at the check level (issue 17).

A scanner may put the localizer (topogram) into the series of the axial stack: the localizer images are left out of
the stack with a warning, the axial slices are used. A sagittal or coronal stack passes the checks like an axial one
(its plane named, a note for the result); an oblique stack is rejected.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from service.series.checks import check_series
from service.series.planes import (
    SlicePlane,
    non_axial_note,
    non_axial_queued_reason,
    oblique_reason,
    reformat_reason,
    slice_plane,
)
from service.series.volume_loader import load_series, read_headers
from tests.support.ct_series import CTSeriesHeader, write_ct_series

LOCALIZER = ("ORIGINAL", "PRIMARY", "LOCALIZER")
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
"""Rows towards posterior, columns towards the feet: normal -L."""
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
"""Rows towards the left, columns towards the feet: normal +P."""


def _frames(n: int, size: int = 8) -> list[np.ndarray]:
    return [np.full((size, size), 1024 + k, dtype=np.int16) for k in range(n)]


def _series(folder: Path, header: CTSeriesHeader, n: int, *, size: int = 8,
            image_type: Sequence[str] | None = None) -> list[Path]:
    extra = {**header.extra, **({"ImageType": list(image_type)} if image_type else {})}
    return write_ct_series(folder, _frames(n, size), CTSeriesHeader(
        study_instance_uid=header.study_instance_uid, series_instance_uid=header.series_instance_uid,
        frame_of_reference_uid=header.frame_of_reference_uid, orientation=header.orientation, extra=extra))


@pytest.mark.parametrize(("normal", "plane"), [
    ((0.0, 0.0, 1.0), SlicePlane.AXIAL),
    ((0.0, 0.0, -1.0), SlicePlane.AXIAL),  # feet first
    ((0.0, 0.5, 0.866), SlicePlane.AXIAL),  # 30 degrees off: still axial (as the check always had it)
    ((-1.0, 0.0, 0.0), SlicePlane.SAGITTAL),
    ((0.9, 0.0, 0.436), SlicePlane.SAGITTAL),
    ((0.0, 1.0, 0.0), SlicePlane.CORONAL),
    ((0.707, 0.0, 0.707), SlicePlane.OBLIQUE),
])
def test_slice_plane_follows_the_dominant_component_of_the_normal(normal: tuple[float, float, float],
                                                                 plane: SlicePlane) -> None:
    assert slice_plane(normal) == plane


@pytest.mark.parametrize("normal", [(0.0, 0.0, 0.0), (np.nan, 0.0, 1.0), (1.0, 0.0)])
def test_slice_plane_refuses_what_is_no_normal(normal: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="normal"):
        slice_plane(normal)


def test_reasons_name_the_plane() -> None:
    assert oblique_reason().startswith("oblique series: the slice normal is not along a patient axis")
    assert reformat_reason(SlicePlane.CORONAL, "3") == "coronal reformat; the axial series 3 of the study is screened"
    assert non_axial_queued_reason(SlicePlane.SAGITTAL) == (
        "sagittal series analysed: no usable axial series in the study")
    assert non_axial_note(SlicePlane.CORONAL).startswith(
        "coronal series: measured on its coronal slices (slice normal anterior-posterior)")
    for refuses in (lambda: non_axial_note(SlicePlane.AXIAL), lambda: reformat_reason(SlicePlane.OBLIQUE, "3"),
                    lambda: non_axial_queued_reason(SlicePlane.AXIAL)):
        with pytest.raises(ValueError, match="only sagittal or coronal"):
            refuses()


def test_localizer_images_in_an_axial_series_are_left_out_of_the_stack(tmp_path: Path) -> None:
    header = CTSeriesHeader()
    # two scouts (coronal projection images of another size) first in the list, then the axial stack
    scouts = _series(tmp_path / "scout", CTSeriesHeader(
        study_instance_uid=header.study_instance_uid, series_instance_uid=header.series_instance_uid,
        frame_of_reference_uid=header.frame_of_reference_uid, orientation=CORONAL), 2, size=16, image_type=LOCALIZER)
    axial = _series(tmp_path / "axial", header, 12)
    paths = scouts + axial

    check = check_series(read_headers(paths))

    assert check.ok, check.reason
    assert check.slice_count == 12 and check.order == tuple(range(2, 14))
    assert check.plane == SlicePlane.AXIAL
    assert check.warnings[0].startswith("2 localizer image(s) left out")
    volume = load_series(paths)
    assert volume.shape == (8, 8, 12)
    assert set(volume.sop_instance_uids) == {str(h.SOPInstanceUID) for h in read_headers(axial)}


def test_a_series_of_localizers_only_is_rejected_as_localizer(tmp_path: Path) -> None:
    paths = _series(tmp_path / "scout", CTSeriesHeader(orientation=CORONAL), 2, image_type=LOCALIZER)
    check = check_series(read_headers(paths))
    assert not check.ok and check.reasons == ("localizer (scout) images",) and check.slice_count == 2


def test_left_out_localizers_do_not_hide_the_reasons_of_the_axial_part(tmp_path: Path) -> None:
    header = CTSeriesHeader()
    scouts = _series(tmp_path / "scout", header, 1, image_type=LOCALIZER)
    axial = _series(tmp_path / "axial", header, 4)
    check = check_series(read_headers(scouts + axial))
    assert not check.ok and "only 4 slices" in check.reason
    assert check.slice_count == 5  # the instances given
    assert check.warnings[0].startswith("1 localizer image(s) left out")


@pytest.mark.parametrize(("orientation", "plane"), [(SAGITTAL, SlicePlane.SAGITTAL), (CORONAL, SlicePlane.CORONAL)])
def test_sagittal_and_coronal_stacks_pass_the_checks_and_name_their_plane(
        tmp_path: Path, orientation: tuple[float, ...], plane: SlicePlane) -> None:
    paths = _series(tmp_path / "s", CTSeriesHeader(orientation=orientation), 12)
    check = check_series(read_headers(paths))
    assert check.ok, check.reason
    assert check.plane == plane and check.slice_count == 12 and check.slice_spacing_mm == pytest.approx(2.0)
    assert check.warnings == (non_axial_note(plane),)
    # the stack is ordered along the slice normal, as for an axial stack: the writer put slice k at k x 2 mm
    # along it, and wrote the files in that order
    assert check.order == tuple(range(12))


@pytest.mark.parametrize(("orientation", "reason"), [
    (SAGITTAL, "only 4 slices"),
    (CORONAL, "only 4 slices"),
])
def test_the_stack_limits_apply_to_sagittal_and_coronal_stacks(tmp_path: Path, orientation: tuple[float, ...],
                                                              reason: str) -> None:
    paths = _series(tmp_path / "s", CTSeriesHeader(orientation=orientation), 4)
    check = check_series(read_headers(paths))
    assert not check.ok and reason in check.reason
    assert all("measured on" not in w for w in check.warnings)


def test_a_sagittal_series_loads_with_its_slice_normal_along_left_right(tmp_path: Path) -> None:
    """Known geometry: rows towards posterior at 0.5 mm per column, columns towards the feet at 0.8 mm per row,
    slices 2 mm apart towards patient right (normal -L): voxel (i, j, k) lies at origin + (-2k, 0.5 i, -0.8 j)."""
    frames = [np.arange(6 * 8, dtype=np.int16).reshape(6, 8) + 100 * k for k in range(12)]  # (rows, columns)
    header = CTSeriesHeader(orientation=SAGITTAL, pixel_spacing_mm=(0.8, 0.5), slice_thickness_mm=2.0)
    volume = load_series(write_ct_series(tmp_path / "s", frames, header))
    assert volume.shape == (8, 6, 12)
    origin = volume.index_to_lps([0.0, 0.0, 0.0])
    np.testing.assert_allclose(volume.index_to_lps([7.0, 5.0, 11.0]) - origin, [-22.0, 3.5, -4.0], atol=1e-6)
    assert volume.superior_axis() == (1, -1)
    # HU = stored - 1024: frame k, row j, column i holds 8 j + i + 100 k
    assert volume.hu[3, 2, 5] == pytest.approx(8 * 2 + 3 + 500 - 1024)


def test_an_oblique_series_is_rejected_naming_the_plane(tmp_path: Path) -> None:
    c = float(np.sqrt(0.5))
    paths = _series(tmp_path / "s", CTSeriesHeader(orientation=(c, 0.0, -c, 0.0, 1.0, 0.0)), 12)
    check = check_series(read_headers(paths))
    assert not check.ok and check.plane == SlicePlane.OBLIQUE
    assert check.reason == oblique_reason()
