"""Padding outside the reconstruction circle (-3024, -2000 HU, or PixelPaddingValue) must not bias the internal
calibration: padding never enters the air, fat or muscle samples of the tissue survey (issue 17)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from service.calibration.internal import internal_calibration
from service.calibration.tissues import PADDING_BELOW_HU, TissueSurvey, survey_tissues
from service.domain.levels import VertebraLevel as V
from service.domain.results import LinearCalibration
from service.domain.segmentation import SpineSegmentation
from service.domain.volume import CTVolume
from service.offline.phantom.api import Phantom, PhantomSpec, generate
from service.series.volume_loader import load_series
from tests.support.ct_series import CTSeriesHeader, write_ct_series
from tests.unit.calibration.phantom_cases import truth_segmentation

SLOPE_TOLERANCE = 5e-4
INTERCEPT_TOLERANCE_MG_CM3 = 0.1
"""'The same calibration': far below the noise of the method (about 1 mg/cm3 between seeds)."""
CUT_INTERCEPT_TOLERANCE_MG_CM3 = 0.2
"""With the circle cutting the body less subcutaneous fat is left to sample; the estimate may move a little. (Taking
the cut edge for skin moved it by 0.33 mg/cm3 on seed 11: fat sampled at the cut read -94.6 instead of -99.3 HU.)"""
CUT_RADIUS_FRACTION = 0.8


@pytest.fixture(scope="module", params=[(77, 1.8), (11, 1.5)], ids=["seed77", "seed11"])
def case(request: pytest.FixtureRequest) -> tuple[Phantom, SpineSegmentation]:
    seed, pixel_mm = request.param
    phantom = generate(PhantomSpec(seed=seed, region="abdomen", rows=224, columns=224, pixel_spacing_mm=pixel_mm,
                                   slice_thickness_mm=4.0, fov_top_level=V.T12, fov_bottom_level=V.L3))
    return phantom, truth_segmentation(phantom)


def _outside(volume: CTVolume, radius_fraction: float) -> npt.NDArray[np.bool_]:
    nx, ny = volume.shape[:2]
    cx, cy = (nx - 1) / 2, (ny - 1) / 2
    r = radius_fraction * min(nx, ny) / 2
    return ((np.arange(nx)[:, None] - cx) ** 2 + (np.arange(ny)[None, :] - cy) ** 2) > r**2


def _padded(volume: CTVolume, value: float, radius_fraction: float = 1.0) -> CTVolume:
    hu = volume.hu.copy()
    hu[_outside(volume, radius_fraction), :] = value
    return dataclasses.replace(volume, hu=hu)


def _calibrate(volume: CTVolume, seg: SpineSegmentation) -> tuple[TissueSurvey, LinearCalibration]:
    survey = survey_tissues(volume, seg)
    calibration = internal_calibration(survey, volume.kvp, contrast=False)
    assert calibration is not None
    return survey, calibration


def _assert_same(a: LinearCalibration, b: LinearCalibration, intercept_tolerance: float) -> None:
    assert a.slope == pytest.approx(b.slope, abs=SLOPE_TOLERANCE)
    assert a.intercept == pytest.approx(b.intercept, abs=intercept_tolerance)


@pytest.mark.parametrize("padding_hu", [-3024.0, -2000.0])
def test_padding_outside_the_circle_gives_the_same_calibration(case: tuple[Phantom, SpineSegmentation],
                                                               padding_hu: float) -> None:
    phantom, seg = case
    survey0, reference = _calibrate(phantom.volume, seg)
    survey, padded = _calibrate(_padded(phantom.volume, padding_hu), seg)
    _assert_same(padded, reference, INTERCEPT_TOLERANCE_MG_CM3)
    assert survey.air_hu is not None and survey.air_hu > -1010.0  # padding never sampled as air
    assert survey0.air_hu == pytest.approx(survey.air_hu, abs=1.0)


@pytest.mark.parametrize("padding_hu", [-3024.0, -2000.0])
def test_circle_cutting_the_body(case: tuple[Phantom, SpineSegmentation], padding_hu: float) -> None:
    """A smaller circle that cuts the body (a large patient, a tight field of view): the cut is no skin, and the
    padding value does not matter."""
    phantom, seg = case
    volume = phantom.volume
    outside = _outside(volume, CUT_RADIUS_FRACTION)
    assert np.any(outside[:, :, None] & (volume.hu > -500.0))  # the circle really cuts the body
    _, reference = _calibrate(volume, seg)
    _, cut = _calibrate(_padded(volume, padding_hu, CUT_RADIUS_FRACTION), seg)
    other = -3024.0 if padding_hu != -3024.0 else -2000.0
    _, cut_other = _calibrate(_padded(volume, other, CUT_RADIUS_FRACTION), seg)
    _assert_same(cut, reference, CUT_INTERCEPT_TOLERANCE_MG_CM3)
    _assert_same(cut, cut_other, INTERCEPT_TOLERANCE_MG_CM3)


def test_padding_value_reading_as_bone_is_masked_by_the_loader(case: tuple[Phantom, SpineSegmentation],
                                                               tmp_path: Path) -> None:
    """Unsigned 12-bit storage with PixelPaddingValue 63536 (-2000 written as unsigned): masked to 12 bits the
    padding would read +1072 HU, a bright ring the survey would take for body; the loader sets it to padding."""
    phantom, seg = case
    volume = phantom.volume
    stored = np.rint(volume.hu + 1024.0).astype(np.uint16)
    stored[_outside(volume, 1.0), :] = 63536
    axes = volume.affine_lps[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    header = CTSeriesHeader(
        orientation=(*(axes[:, 0] / spacing[0]), *(axes[:, 1] / spacing[1])),
        pixel_spacing_mm=(float(spacing[1]), float(spacing[0])), slice_thickness_mm=float(spacing[2]),
        bits_stored=12, extra={"PixelPaddingValue": 63536, "KVP": volume.kvp})
    paths = write_ct_series(tmp_path / "s", stored.T, header, origin_lps_mm=volume.affine_lps[:3, 3])
    loaded = load_series(paths)
    assert np.allclose(loaded.affine_lps, volume.affine_lps)
    outside = _outside(volume, 1.0)
    assert np.all(loaded.hu[outside, :] < PADDING_BELOW_HU)
    assert np.array_equal(loaded.hu[~outside, :], volume.hu[~outside, :])
    _, reference = _calibrate(volume, seg)
    _, from_files = _calibrate(loaded, seg)
    _assert_same(from_files, reference, INTERCEPT_TOLERANCE_MG_CM3)
