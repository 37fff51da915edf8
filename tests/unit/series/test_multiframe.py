"""Enhanced CT and Legacy Converted Enhanced CT (multi-frame) load through the per-frame functional groups (issue 17).

Truth: the same slices written as single-frame CT Image Storage and loaded by the single-frame path (which has its
own tests), and each frame as pydicom decodes it straight from the multi-frame file.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pydicom.pixels
import pytest
from pydicom.uid import EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage, RLELossless

from service.series.checks import check_series
from service.series.multiframe import FrameHeader, expand_frames
from service.series.volume_loader import LoadedSeries, SeriesRejectedError, read_headers, read_series
from tests.support.ct_series import CTSeriesHeader, write_ct_series, write_multiframe_ct_series

N_SLICES = 12


def _frames(n: int = N_SLICES, shape: tuple[int, int] = (6, 8), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2000, (n, *shape)).astype(np.uint16)


def _header(**kwargs: Any) -> CTSeriesHeader:
    return CTSeriesHeader(pixel_spacing_mm=(0.7, 0.9), extra={"ConvolutionKernel": "B30f"}, **kwargs)


def _single_frame(tmp_path: Path, frames: np.ndarray, header: CTSeriesHeader, **kwargs: Any) -> LoadedSeries:
    return read_series(write_ct_series(tmp_path / "single", frames, header, **kwargs))


def _assert_frames_match_the_file(loaded: LoadedSeries) -> None:
    """Slice k of the volume is frame frame_numbers[k] of instance sop_instance_uids[k], decoded independently."""
    by_uid = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p
              for p in set(loaded.volume.source_paths)}
    for k, (uid, number) in enumerate(zip(loaded.volume.sop_instance_uids, loaded.frame_numbers, strict=True)):
        assert number is not None
        stored = pydicom.pixels.pixel_array(by_uid[uid], index=number - 1)
        np.testing.assert_array_equal(loaded.volume.hu[:, :, k], stored.T.astype(np.float32) - 1024.0)


@pytest.mark.parametrize(("kind", "transfer_syntax", "sop_class"), [
    ("enhanced", None, EnhancedCTImageStorage),
    ("enhanced", RLELossless, EnhancedCTImageStorage),
    ("legacy", None, LegacyConvertedEnhancedCTImageStorage),
])
def test_multiframe_loads_to_the_same_volume_as_single_frame(tmp_path: Path, kind: str,
                                                             transfer_syntax: str | None, sop_class: str) -> None:
    frames = _frames()
    header = _header(**({"transfer_syntax_uid": transfer_syntax} if transfer_syntax else {}))
    single = _single_frame(tmp_path, frames, header, origin_lps_mm=(-100.0, -50.0, 20.0))
    paths = write_multiframe_ct_series(tmp_path / kind, frames, header, kind=kind, origin_lps_mm=(-100.0, -50.0, 20.0))
    assert len(paths) == 1 and str(pydicom.dcmread(paths[0], stop_before_pixels=True).SOPClassUID) == sop_class

    loaded = read_series(paths)

    np.testing.assert_array_equal(loaded.volume.hu, single.volume.hu)
    np.testing.assert_allclose(loaded.volume.affine_lps, single.volume.affine_lps, atol=1e-9)
    assert loaded.volume.frame_of_reference_uid == single.volume.frame_of_reference_uid
    assert loaded.volume.convolution_kernel == "B30f" and loaded.volume.kvp == 120.0
    assert sorted(loaded.frame_numbers) == list(range(1, N_SLICES + 1))  # type: ignore[type-var]
    (instance,) = loaded.multiframe_headers
    assert set(loaded.volume.sop_instance_uids) == {str(instance.SOPInstanceUID)}
    assert "PixelData" not in instance and len(instance.PerFrameFunctionalGroupsSequence) == N_SLICES
    assert all(isinstance(h, FrameHeader) and h.multiframe is instance for h in loaded.headers)
    _assert_frames_match_the_file(loaded)


def test_single_frame_series_has_no_frame_numbers(tmp_path: Path) -> None:
    loaded = _single_frame(tmp_path, _frames(), _header())
    assert loaded.frame_numbers == (None,) * N_SLICES and loaded.multiframe_headers == ()


def test_frames_out_of_order_and_split_over_instances(tmp_path: Path) -> None:
    frames = _frames()
    single = _single_frame(tmp_path, frames, _header())
    shuffled = [int(i) for i in np.random.default_rng(1).permutation(N_SLICES)]
    instances = [shuffled[:5], shuffled[5:]]

    loaded = read_series(write_multiframe_ct_series(tmp_path / "mf", frames, _header(), instances=instances))

    np.testing.assert_array_equal(loaded.volume.hu, single.volume.hu)
    np.testing.assert_allclose(loaded.volume.affine_lps, single.volume.affine_lps, atol=1e-9)
    assert len(loaded.multiframe_headers) == 2
    expected = [(0 if k in instances[0] else 1, instances[0 if k in instances[0] else 1].index(k) + 1)
                for k in range(N_SLICES)]
    uids = [str(h.SOPInstanceUID) for h in loaded.multiframe_headers]
    uid_of = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): i
              for i, p in enumerate(sorted(set(loaded.volume.source_paths)))}
    assert set(uids) == set(uid_of)
    assert [(uid_of[u], f) for u, f in zip(loaded.volume.sop_instance_uids, loaded.frame_numbers, strict=True)] \
        == expected
    _assert_frames_match_the_file(loaded)


def test_two_acquisitions_in_one_multiframe_are_split_and_chosen_by_the_selection_rules(tmp_path: Path) -> None:
    first, second = _frames(10, seed=2), _frames(12, seed=3)
    positions = [(0.0, 0.0, 2.0 * k) for k in range(10)] + [(0.0, 0.0, 2.0 * k) for k in range(12)]
    extra = [{"AcquisitionNumber": 1}] * 10 + [{"AcquisitionNumber": 2}] * 12
    paths = write_multiframe_ct_series(tmp_path / "mf", np.concatenate([first, second]), _header(),
                                       positions_lps_mm=positions, slice_extra=extra)
    truth = _single_frame(tmp_path, second, _header())

    loaded = read_series(paths)

    np.testing.assert_array_equal(loaded.volume.hu, truth.volume.hu)  # more slices: the selection rules' choice
    assert loaded.frame_numbers == tuple(range(11, 23))
    assert "2 acquisitions in one series, split by AcquisitionNumber (10, 12 instances" in \
        loaded.volume.extra["series_warnings"]


def test_resent_multiframe_copy_keeps_one_instance_per_position(tmp_path: Path) -> None:
    frames = _frames()
    paths = write_multiframe_ct_series(tmp_path / "mf", frames, _header(), instances=[range(N_SLICES)] * 2)
    assert len(paths) == 2
    copy = pydicom.dcmread(paths[1])
    copy.InstanceNumber = 1  # the archive re-sent the instance with new UIDs only
    copy.save_as(paths[1])

    loaded = read_series(paths)

    np.testing.assert_array_equal(loaded.volume.hu, _single_frame(tmp_path, frames, _header()).volume.hu)
    assert f"{N_SLICES} re-sent copies dropped" in loaded.volume.extra["series_warnings"]


def test_gantry_tilt_in_a_multiframe_is_rejected(tmp_path: Path) -> None:
    positions = [(0.0, 0.2 * k, 2.0 * k) for k in range(N_SLICES)]  # ~5.7 degrees
    paths = write_multiframe_ct_series(tmp_path / "mf", _frames(), _header(), positions_lps_mm=positions)
    check = check_series(read_headers(paths))
    assert not check.ok and "gantry tilt of 5.7 degrees" in check.reason
    with pytest.raises(SeriesRejectedError, match="gantry tilt"):
        read_series(paths)


def test_missing_frames_use_the_longest_contiguous_part(tmp_path: Path) -> None:
    keep = [k for k in range(N_SLICES) if k != 1]  # a gap after the first slice
    frames = _frames()
    positions = [(0.0, 0.0, 2.0 * k) for k in keep]
    loaded = read_series(write_multiframe_ct_series(tmp_path / "mf", frames[keep], _header(),
                                                    positions_lps_mm=positions))
    assert loaded.volume.shape[2] == N_SLICES - 2 and loaded.frame_numbers == tuple(range(2, N_SLICES))
    assert "missing slices" in loaded.volume.extra["series_warnings"]


def test_functional_groups_give_the_classic_attributes(tmp_path: Path) -> None:
    (path,) = write_multiframe_ct_series(tmp_path / "mf", _frames(), _header(), slice_extra=[
        {"AcquisitionNumber": 3, "AcquisitionTime": "101500.5"}] * N_SLICES)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence = \
        ds.PerFrameFunctionalGroupsSequence[0].PixelValueTransformationSequence
    item = pydicom.Dataset()
    item.ContrastBolusAgentNumber, item.ContrastBolusAgentAdministered = 1, "YES"
    ds.PerFrameFunctionalGroupsSequence[4].ContrastBolusUsageSequence = [item]
    agent = pydicom.Dataset()
    agent.CodeValue, agent.CodingSchemeDesignator, agent.CodeMeaning = "C-B0322", "SRT", "Iohexol"
    ds.ContrastBolusAgentSequence = [agent]
    ds.SeriesNumber = 7

    headers = expand_frames(ds, path)

    fifth = headers[4]
    assert [float(v) for v in fifth.ImagePositionPatient] == [0.0, 0.0, 8.0]
    assert [float(v) for v in fifth.ImageOrientationPatient] == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert [float(v) for v in fifth.PixelSpacing] == [0.7, 0.9] and float(fifth.SliceThickness) == 2.0
    assert (float(fifth.RescaleSlope), float(fifth.RescaleIntercept)) == (1.0, -1024.0)
    assert (int(fifth.AcquisitionNumber), fifth.AcquisitionDate, fifth.AcquisitionTime) == (3, "20260101", "101500.5")
    assert list(fifth.ImageType)[:3] == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert fifth.ContrastBolusAgent == "Iohexol" and "ContrastBolusAgent" not in headers[3]
    assert fifth.BodyPartExamined == "ABDOMEN" and fifth.ConvolutionKernel == "B30f" and float(fifth.KVP) == 120.0
    assert int(fifth.SeriesNumber) == 7 and fifth.SOPInstanceUID == ds.SOPInstanceUID and fifth.frame_number == 5
    assert "PerFrameFunctionalGroupsSequence" not in fifth and "NumberOfFrames" not in fifth


def test_a_localizer_frame_is_left_out_like_a_scout(tmp_path: Path) -> None:
    extra = [{"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]}] + [{}] * N_SLICES
    positions = [(0.0, 0.0, 300.0)] + [(0.0, 0.0, 2.0 * k) for k in range(N_SLICES)]
    paths = write_multiframe_ct_series(tmp_path / "mf", _frames(N_SLICES + 1), _header(),
                                       positions_lps_mm=positions, slice_extra=extra)
    check = check_series(read_headers(paths))
    assert check.ok and check.slice_count == N_SLICES and 0 not in check.order
    assert check.warnings[0].startswith("1 localizer image(s) left out")


def test_broken_functional_groups_are_a_reason_naming_the_file(tmp_path: Path) -> None:
    (path,) = write_multiframe_ct_series(tmp_path / "mf", _frames(), _header())
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = N_SLICES + 1
    ds.save_as(path)
    with pytest.raises(SeriesRejectedError, match=r"multi-frame CT 0001.dcm: .*12 items for NumberOfFrames 13"):
        read_headers([path])


def _peak_bytes(paths: list[Path]) -> tuple[int, LoadedSeries]:
    tracemalloc.start()
    try:
        loaded = read_series(paths)
        return tracemalloc.get_traced_memory()[1], loaded
    finally:
        tracemalloc.stop()


def test_frames_are_decoded_one_at_a_time(tmp_path: Path) -> None:
    """Loading a multi-frame instance peaks no higher than loading the same slices single-frame, but for the frame
    headers: the multi-frame pixel data is never held whole, and no decoded frame is held twice."""
    n, shape = 20, (512, 512)
    frames = _frames(n, shape)
    pixel_bytes = n * shape[0] * shape[1] * 2
    single_peak, single = _peak_bytes(write_ct_series(tmp_path / "single", frames, _header()))
    del single
    multi_peak, loaded = _peak_bytes(write_multiframe_ct_series(tmp_path / "mf", frames, _header()))
    assert loaded.volume.hu.nbytes == 2 * pixel_bytes and single_peak > loaded.volume.hu.nbytes
    assert multi_peak - single_peak < pixel_bytes // 2, (multi_peak, single_peak, pixel_bytes)
