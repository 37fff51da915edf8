"""Series checks and the volume loader, on small series written here and on the real shared cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from service.series.checks import check_series
from service.series.volume_loader import SeriesRejectedError, load_series, load_series_folder, read_headers
from tests.shared_data import shared_case
from tests.support.ct_series import CTSeriesHeader, write_ct_series


def _slice_frame(rows: int, columns: int, k: int) -> np.ndarray:
    pixels = np.full((rows, columns), 1024 + k, dtype=np.uint16)  # slice k: k HU
    pixels[1, 2] = 3000  # a marker at row 1, column 2
    return pixels


def write_series(
    folder: Path,
    *,
    n: int = 12,
    spacing_mm: float = 2.0,
    orientation: tuple[float, ...] = (1, 0, 0, 0, 1, 0),
    z_start: float = 100.0,
    z_step: float | None = None,
    positions: list[list[float]] | None = None,
    rows: int = 8,
    columns: int = 6,
    rescale: bool = True,
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL"),
) -> list[Path]:
    header = CTSeriesHeader(orientation=orientation, pixel_spacing_mm=(0.5, 0.75), slice_thickness_mm=spacing_mm,
                            rescale_intercept=-1024.0 if rescale else None, extra={"ImageType": list(image_type)})
    # shuffle the file names against the positions: the loader must sort by geometry
    return write_ct_series(folder, (_slice_frame(rows, columns, k) for k in range(n)), header,
                           origin_lps_mm=np.array([10.0, 20.0, 0.0]) + header.normal * z_start,
                           slice_step_mm=spacing_mm if z_step is None else z_step, positions_lps_mm=positions,
                           file_name=lambda k: f"{(k * 7) % n:03d}_{k}.dcm")


def test_regular_series_loads_with_geometry(tmp_path: Path) -> None:
    paths = write_series(tmp_path / "s")
    volume = load_series(paths)
    assert volume.shape == (6, 8, 12)
    assert volume.spacing_mm == pytest.approx((0.75, 0.5, 2.0))
    # k increases along the slice normal; slice k has value k - 0 HU
    assert volume.hu[0, 0, :].tolist() == pytest.approx(list(range(12)))
    # marker at row 1, column 2 -> i=2, j=1
    assert volume.hu[2, 1, 0] == pytest.approx(3000 - 1024)
    lps = volume.index_to_lps([2, 1, 3])
    assert lps == pytest.approx([10.0 + 2 * 0.75, 20.0 + 1 * 0.5, 100.0 + 3 * 2.0])


def test_feet_first_descending_positions_are_sorted(tmp_path: Path) -> None:
    paths = write_series(tmp_path / "s", z_start=200.0, z_step=-2.0)
    volume = load_series(paths)
    assert volume.affine_lps[2, 3] == pytest.approx(200.0 - 11 * 2.0)
    assert volume.affine_lps[2, 2] == pytest.approx(2.0)
    assert volume.superior_axis() == (2, 1)


def test_rotated_in_plane_orientation(tmp_path: Path) -> None:
    # rows run towards patient right (-L), columns towards anterior (-P): normal = +S still
    paths = write_series(tmp_path / "s", orientation=(-1, 0, 0, 0, -1, 0))
    volume = load_series(paths)
    assert volume.index_to_lps([1, 0, 0])[0] == pytest.approx(10.0 - 0.75)
    assert volume.index_to_lps([0, 1, 0])[1] == pytest.approx(20.0 - 0.5)


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"rescale": False}, "Rescale"),
        ({"image_type": ("ORIGINAL", "PRIMARY", "LOCALIZER")}, "localizer"),
        ({"n": 4}, "only 4 slices"),
        ({"spacing_mm": 6.0}, "exceeds 5.0 mm"),
        ({"orientation": (0.7071068, 0, -0.7071068, 0, 1, 0)}, "oblique series"),  # sagittal/coronal pass: test_planes
    ],
)
def test_rejections_name_the_reason(tmp_path: Path, kwargs: dict, reason: str) -> None:
    paths = write_series(tmp_path / "s", **kwargs)
    check = check_series(read_headers(paths))
    assert not check.ok
    assert reason in check.reason
    with pytest.raises(SeriesRejectedError, match=reason):
        load_series(paths)


def test_missing_slice_is_irregular_spacing(tmp_path: Path) -> None:
    paths = write_series(tmp_path / "s", n=14)
    paths[5].unlink()
    check = check_series(read_headers([p for p in paths if p.exists()]))
    assert not check.ok and "irregular slice spacing" in check.reason


def test_duplicate_position_splits_off_the_repeated_slice(tmp_path: Path) -> None:
    # issue 17: a repeated position (other pixels) is a second acquisition; the first (10 slices) is used
    positions = [[0.0, 0.0, float(k)] for k in range(10)] + [[0.0, 0.0, 3.0]]
    paths = write_series(tmp_path / "s", n=11, positions=positions, spacing_mm=1.0)
    check = check_series(read_headers(paths))
    assert check.ok and check.order == tuple(range(10))
    assert "split by repeated position (10, 1 instances; 1 usable)" in check.warnings[0]


def test_gantry_tilt_rejected(tmp_path: Path) -> None:
    # positions drift posteriorly 0.35 mm per 2 mm slice (about 10 degrees) while orientation stays axial
    positions = [[0.0, 0.35 * k, 2.0 * k] for k in range(12)]
    paths = write_series(tmp_path / "s", positions=positions)
    check = check_series(read_headers(paths))
    assert not check.ok and "gantry tilt" in check.reason


def test_impossible_image_size_is_refused_from_the_headers(tmp_path: Path) -> None:
    """A header claiming 30000 x 30000 (corrupt or hostile) is refused by the series check, before any pixel is
    read, so no job is queued to run out of memory."""
    paths = write_series(tmp_path / "s")
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.Rows = ds.Columns = 30000
        ds.save_as(path)
    check = check_series(read_headers(paths))
    assert not check.ok and "image size 30000 x 30000 exceeds 4096 x 4096" in check.reason


def test_mixed_series_rejected(tmp_path: Path) -> None:
    a = write_series(tmp_path / "a")
    b = write_series(tmp_path / "b")
    check = check_series(read_headers(a + b))
    assert not check.ok and "series were given as one" in check.reason


def test_unreadable_file_is_a_reason(tmp_path: Path) -> None:
    paths = write_series(tmp_path / "s")
    paths[3].write_bytes(b"not dicom at all")
    with pytest.raises(SeriesRejectedError, match="cannot read"):
        load_series(paths)


def test_real_chest_series() -> None:
    volume = load_series_folder(shared_case("cptac_lscc_chest"))
    assert volume.shape == (512, 512, 99)
    assert volume.spacing_mm == pytest.approx((0.564, 0.564, 3.0), abs=1e-3)
    assert volume.kvp == 100.0
    assert volume.patient_age_years == pytest.approx(77.0)
    middle = volume.hu[:, :, 50]
    assert float(np.percentile(middle, 10)) < -900  # air around the patient (and lung)
    assert float(np.percentile(middle, 99.5)) > 300  # bone


def test_real_jpeg2000_slab_with_uids_only_in_file_meta() -> None:
    volume = load_series_folder(shared_case("ts_abdomen_slab_j2k/dicom"), min_slices=3)
    assert volume.shape == (512, 512, 20)
    assert all(volume.sop_instance_uids)
    assert volume.spacing_mm[2] == pytest.approx(2.0)
    assert float(volume.hu.max()) > 1000  # bone decoded, not garbage
