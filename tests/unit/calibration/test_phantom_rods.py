"""Rod finding under what real scans add: metal streaks across the rods' slices, noise of sharp low-dose scans, and
fat under the skin as homogeneous as a rod. The rods' truth is the phantom's physics HU (``truth
["calibration_phantom"]["rods"]``), not the calibration's line."""

from __future__ import annotations

import os

import numpy as np
import pytest

from service.calibration.phantom import (
    SYNC_MIN_POSTERIOR_MM,
    calibrate_from_volume,
    load_definition,
    match_rods,
    reference_line,
)
from service.calibration.phantom_rods import FoundRod, metal_free_slices
from service.domain.levels import VertebraLevel as V
from service.offline.phantom.api import PhantomSpec, generate

os.environ.setdefault("OMP_NUM_THREADS", "1")


def _rod_errors_hu(spec: PhantomSpec, spacing: tuple[float, float, float]) -> tuple[list[float], int]:
    """(measured minus physics HU of every matched rod, rods matched); ([], 0) when no line is found."""
    phantom = generate(spec, spacing_mm=spacing)
    # searched behind the vertebral bodies, as the pipeline searches (placed here from the truth centroids)
    behind = max(v["centroid_lps_mm"][1] for v in phantom.truth["vertebrae"]) + SYNC_MIN_POSTERIOR_MM
    cal = calibrate_from_volume(phantom.volume, load_definition(), behind, require_all=True)
    if cal is None:
        return [], 0
    truth = {r["density_mg_cm3"]: r["hu"] for r in phantom.truth["calibration_phantom"]["rods"]}
    return [hu - truth[d] for d, hu in cal.rods], len(cal.rods)


def test_metal_streaks_do_not_bias_the_rods() -> None:
    """Pedicle screws over the rods' stretch: the phantom's streaks cross whole slices, rods included. Read on every
    slice, the 0-100 mg/cm3 rods came out 10-25 HU off (the median cannot help when half the slices hold metal)."""
    spec = PhantomSpec(seed=91, region="abdomen", kvp=100, calibration_phantom="k2hpo4",
                       pedicle_screw_levels=(V.L1, V.L2), fov_top_level=V.T11, fov_bottom_level=V.L4)
    phantom = generate(spec, spacing_mm=(1.0, 1.0, 2.0))
    assert not metal_free_slices(phantom.volume).all()  # the case holds what it tests
    errors, n = _rod_errors_hu(spec, (1.0, 1.0, 2.0))
    assert n >= 3
    assert max(abs(e) for e in errors) <= 4.0, errors


def test_rods_are_found_on_a_sharp_low_dose_scan() -> None:
    """Noise SD of ~150 HU per voxel: single slices do not show the 50 mg/cm3 rod; slabs of slices do."""
    spec = PhantomSpec(seed=92, region="abdomen", kvp=100, low_dose=True, noise_scale=2.0,
                       calibration_phantom="k2hpo4", fov_top_level=V.T12, fov_bottom_level=V.L2)
    errors, n = _rod_errors_hu(spec, (0.8, 0.8, 1.0))
    assert n >= 3, "no line"
    assert max(abs(e) for e in errors) <= 6.0, errors


def _rod(x_mm: float, hu: float, n: int, spread: float = 3.0) -> FoundRod:
    return FoundRod((x_mm, 150.0), hu, n, spread, (10, 60))


def test_fat_seen_on_more_slices_does_not_push_out_the_rods() -> None:
    """A phantom shorter than the scan: its rods are seen on 5-6 sampled slabs, subcutaneous fat at -117 HU on all
    15. The fat is no rod of any density (below the 0 mg/cm3 rod's range), so the row is matched."""
    definition = load_definition()
    fat = [_rod(-140.0 - 20 * i, -117.0 + 0.1 * i, 15) for i in range(10)]
    rods = [_rod(-22.5, 87.5, 5), _rod(22.5, 176.2, 6), _rod(67.5, 357.0, 6)]
    cal = match_rods(fat + rods, definition, expected_slope=reference_line(80)[0])
    assert cal is not None
    assert [d for d, _ in cal.rods] == [50.0, 100.0, 200.0]
    assert cal.fit.slope == pytest.approx(150.0 / (357.0 - 87.5), rel=0.01)


def test_metal_free_slices_marks_the_slices_with_metal() -> None:
    phantom = generate(PhantomSpec(seed=7, region="abdomen", pedicle_screw_levels=(V.L1,), fov_top_level=V.T12,
                                   fov_bottom_level=V.L2), spacing_mm=(1.5, 1.5, 3.0))
    free = metal_free_slices(phantom.volume)
    has_metal = np.asarray(phantom.volume.hu.max(axis=(0, 1)) >= 2000.0)
    assert np.array_equal(free, ~has_metal)
    assert 0 < np.count_nonzero(~free) < free.shape[0]
