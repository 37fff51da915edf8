"""The worker's memory admission estimate (service/pipeline/memory.py) and the memory-saving helpers of the stages.

The expected figures come from the benchmark's measurements (docs/PERFORMANCE.md, section Memory), not from the
estimator: whole-worker peaks of 1275 MiB (300 x 512 x 512), 2256 MiB (600 x 512 x 512) and 3484 MiB (1500 x 512 x
512, with the slab-wise label check of SpineSegmentation that the lead is asked to apply).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.measurement.geometry import crop_labels
from service.pipeline import memory
from service.pipeline.types import PipelineRejectedError
from service.segmentation.inference import clear_where_labelled
from tests.node_support import write_ct_series

MEASURED_PEAK_MIB = {300: 1275.0, 600: 2256.0, 1500: 3483.6}
"""Worker peak RSS measured by the benchmark (bench/memory.py) on 512 x 512 phantoms."""


@pytest.mark.parametrize("slices", sorted(MEASURED_PEAK_MIB))
def test_estimate_covers_the_measured_peaks_with_a_modest_margin(slices: int) -> None:
    estimate = memory.estimate_job_peak(512, 512, slices)
    assert MEASURED_PEAK_MIB[slices] <= estimate.peak_mib <= 1.6 * MEASURED_PEAK_MIB[slices]


def test_the_thin_1500_slice_series_is_admitted_under_the_default_limit() -> None:
    assert memory.estimate_job_peak(512, 512, 1500).fits(4096)


def test_estimate_grows_with_the_voxel_count_not_the_shape() -> None:
    small = memory.estimate_job_peak(512, 512, 300)
    big = memory.estimate_job_peak(512, 512, 3000)
    assert big.peak_mib > small.peak_mib
    assert memory.estimate_job_peak(1024, 256, 300).peak_mib == pytest.approx(small.peak_mib)


def test_a_series_too_big_for_the_limit_is_rejected_with_size_estimate_and_limit() -> None:
    estimate = memory.estimate_job_peak(512, 512, 3000)
    assert not estimate.fits(4096)
    reason = estimate.rejection_reason(4096)
    assert reason.startswith("series of 3000 x 512 x 512 needs about ")
    assert f"{estimate.peak_gb:.1f} GB" in reason
    assert "[worker] memory_limit_mb is 4096" in reason
    assert estimate.fits(8192)  # a site with more memory raises the limit


@pytest.mark.parametrize(("rows", "columns", "slices"), [(0, 512, 10), (512, -1, 10), (512, 512, 0), (512, 512, 2.5),
                                                           (True, 512, 10)])
def test_estimate_rejects_impossible_sizes_naming_the_argument(rows: int, columns: int, slices: int) -> None:
    name = next(n for n, v in (("rows", rows), ("columns", columns), ("slices", slices))
                if not isinstance(v, int) or isinstance(v, bool) or v < 1)
    with pytest.raises(ValueError, match=name):
        memory.estimate_job_peak(rows, columns, slices)


def test_dimensions_come_from_the_stored_headers(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path / "ct", n_slices=7, size=24, thickness_mm=2.0)
    assert memory.series_dimensions(paths) == (24, 24, 7)


def test_check_job_fits_reads_the_series_and_applies_the_limit(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path / "ct", n_slices=5, size=16, thickness_mm=2.0)
    assert memory.check_job_fits(paths, 4096).slices == 5
    tiny_limit = memory.estimate_job_peak(16, 16, 5).peak_mib - 1  # below even the fixed part of a worker
    with pytest.raises(PipelineRejectedError, match=r"series of 5 x 16 x 16 needs about .* memory_limit_mb is"):
        memory.check_job_fits(paths, tiny_limit)


def test_unreadable_first_file_is_a_permanent_rejection(tmp_path: Path) -> None:
    bad = tmp_path / "x.dcm"
    bad.write_bytes(b"not dicom at all")
    with pytest.raises(PipelineRejectedError, match=r"cannot read the image size of x\.dcm"):
        memory.series_dimensions([bad])
    with pytest.raises(PipelineRejectedError, match="no stored instances"):
        memory.series_dimensions([])


# --- the memory-saving rewrites give what the whole-volume expressions gave ------------------------------------


def test_slab_wise_clear_equals_the_whole_volume_expression() -> None:
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 4, size=(9, 7, 150)).astype(np.int16)
    mask = rng.random((9, 7, 150)) > 0.3
    expected = mask & (labels == 0)
    clear_where_labelled(mask, labels, slab_slices=64)
    assert np.array_equal(mask, expected)


def test_crop_labels_on_int16_finds_every_body_box() -> None:
    labels = np.zeros((10, 12, 14), dtype=np.int16)
    labels[2:5, 3:6, 4:9] = 20
    labels[6:8, 1:3, 10:13] = 22
    crops = crop_labels(labels)
    assert sorted(crops) == [20, 22]
    assert crops[20].offset == (2, 3, 4) and crops[20].mask.shape == (3, 3, 5) and crops[20].mask.all()
    assert crops[22].offset == (6, 1, 10) and int(crops[22].mask.sum()) == 2 * 2 * 3
