"""The BMD trend since a prior study in the result objects: the SR carries the change (mg/cm3, %/year, UCUM), the
prior's Study Date as DATE and the coded "beyond least significant change" flag, valid for dciodvfy and PixelMed;
the key image draws the trend plot."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.sr.coding import Code

from service.domain.results import ScreeningResult
from service.domain.trend import TREND_KEY, TrendPoint, compute_trend, trend_point_of
from service.offline.demo.result_examples import save_objects
from service.results import codes
from service.results.build import AlgorithmInfo, build_result_objects
from service.results.keyimage import render_key_image
from service.results.trend_plot import TREND_BEYOND_COLOR
from tests.unit.results.synthetic import HEAD_FIRST_SUPINE, SyntheticCase, synthetic_case

os.environ.setdefault("OMP_NUM_THREADS", "1")

ALGORITHM = AlgorithmInfo(version="0.1.0", model_name="box-model", model_version="0.0.1")
PRIOR_DATE = dt.date(2025, 3, 1)
CURRENT_DATE = dt.date(2026, 3, 1)  # 365 days later


def _with_trend(result: ScreeningResult, prior_factor: float) -> ScreeningResult:
    """``result`` with a trend since a prior whose values were ``prior_factor`` times the current ones."""
    current = trend_point_of(result, CURRENT_DATE, 120.0)
    prior = TrendPoint("1.2.826.0.1.3680043.8.498.77", PRIOR_DATE,
                       None if current.summary_bmd_mg_cm3 is None else current.summary_bmd_mg_cm3 * prior_factor,
                       current.summary_levels,
                       {k: v * prior_factor for k, v in current.bmd_by_level_mg_cm3.items()}, "internal", 120.0, False)
    trend = compute_trend(current, prior, 3.0)
    return dataclasses.replace(result, extra={**result.extra, TREND_KEY: trend.to_json_dict()})


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[SyntheticCase, ScreeningResult, dict[str, Path]]:
    tmp = tmp_path_factory.mktemp("trend")
    case = synthetic_case(tmp / "ct", HEAD_FIRST_SUPINE)
    assert case.result.summary.bmd_mg_cm3 is not None
    result = _with_trend(case.result, 1 / 0.88)  # 12 % loss in a year
    objects = build_result_objects(case.volume, case.segmentation, case.roi_labels, result, ALGORITHM)
    return case, result, save_objects(objects, tmp / "out")


def _patient_items(path: Path) -> list[pydicom.Dataset]:
    ds = pydicom.dcmread(path)
    derived = next(i for i in ds.ContentSequence
                   if i.ConceptNameCodeSequence[0].CodeValue == codes.DERIVED_IMAGING_MEASUREMENTS.value)
    return list(derived.ContentSequence[0].ContentSequence)


def _named(items: list[pydicom.Dataset], code: Code) -> list[pydicom.Dataset]:
    return [i for i in items if i.ConceptNameCodeSequence[0].CodeValue == code.value]


def test_sr_carries_the_change_since_the_prior(built: tuple[SyntheticCase, ScreeningResult, dict[str, Path]]) -> None:
    case, _, files = built
    items = _patient_items(files["sr"])
    summary = case.result.summary.bmd_mg_cm3
    assert summary is not None
    change = _named(items, codes.BMD_CHANGE)
    assert len(change) == 1
    value = float(change[0].MeasuredValueSequence[0].NumericValue)
    assert value == pytest.approx(summary - summary / 0.88, abs=0.05)  # current minus prior
    assert change[0].MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue == "mg/cm3"
    dates = [c for c in change[0].ContentSequence if c.ValueType == "DATE"]
    assert [(d.ConceptNameCodeSequence[0].CodeValue, d.Date) for d in dates] == [("111060", "20250301")]
    rate = _named(items, codes.BMD_CHANGE_PERCENT_PER_YEAR)
    assert len(rate) == 1
    assert float(rate[0].MeasuredValueSequence[0].NumericValue) == pytest.approx(-12.0 * 365.25 / 365, abs=0.05)
    assert rate[0].MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue == "%/a"
    assert rate[0].MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodingSchemeDesignator == "UCUM"
    flag = _named(items, codes.BEYOND_LSC)
    assert [f.ConceptCodeSequence[0].CodeValue for f in flag] == ["373066001"]  # SNOMED CT yes


@pytest.mark.slow  # PixelMed's JVM
def test_sr_with_a_trend_is_valid(built: tuple[SyntheticCase, ScreeningResult, dict[str, Path]]) -> None:
    from service.results.validators import dciodvfy, pixelmed_sr  # noqa: PLC0415 - only the slow test needs them

    _, _, files = built
    for kind, path in files.items():
        report = dciodvfy(path)
        assert report.ok, (kind, report.errors)
    for path, report in pixelmed_sr([files["sr"]]).items():
        assert "Found Root Template TID_1500" in report.output, report.output[-2000:]
        assert report.ok, (path, report.errors)


def test_no_change_is_not_flagged_in_the_sr(tmp_path: Path) -> None:
    case = synthetic_case(tmp_path / "ct", HEAD_FIRST_SUPINE)
    result = _with_trend(case.result, 1.02)  # 2 % within the 8.3 % LSC
    objects = build_result_objects(case.volume, case.segmentation, case.roi_labels, result, ALGORITHM)
    files = save_objects(objects, tmp_path / "out")
    flag = _named(_patient_items(files["sr"]), codes.BEYOND_LSC)
    assert [f.ConceptCodeSequence[0].CodeValue for f in flag] == ["373067005"]  # SNOMED CT no


def test_key_image_draws_the_trend(built: tuple[SyntheticCase, ScreeningResult, dict[str, Path]]) -> None:
    case, result, _ = built

    def flagged_pixels(r: ScreeningResult) -> int:
        image = render_key_image(case.volume, case.segmentation, case.roi_labels, r, ALGORITHM)
        return int(np.count_nonzero(np.all(image == np.array(TREND_BEYOND_COLOR, dtype=np.uint8), axis=-1)))

    assert flagged_pixels(result) > 200  # the current point, the line and the "beyond LSC" text
    assert flagged_pixels(case.result) == 0  # no prior: no trend plot


def test_not_comparable_studies_give_an_indeterminate_flag_and_no_change(tmp_path: Path) -> None:
    case = synthetic_case(tmp_path / "ct", HEAD_FIRST_SUPINE)
    current = trend_point_of(case.result, CURRENT_DATE, 120.0)
    prior = TrendPoint("1.2.826.0.1.3680043.8.498.78", PRIOR_DATE, 150.0, ("T7",), {"T7": 150.0}, "internal", 120.0,
                       False)
    trend = compute_trend(current, prior, 3.0)
    assert trend.comparison == "not comparable"
    result = dataclasses.replace(case.result, extra={**case.result.extra, TREND_KEY: trend.to_json_dict()})
    objects = build_result_objects(case.volume, case.segmentation, case.roi_labels, result, ALGORITHM)
    items = _patient_items(save_objects(objects, tmp_path / "out")["sr"])
    assert _named(items, codes.BMD_CHANGE) == [] and _named(items, codes.BMD_CHANGE_PERCENT_PER_YEAR) == []
    assert [f.ConceptCodeSequence[0].CodeValue for f in _named(items, codes.BEYOND_LSC)] == ["82334004"]
