"""The pure trend computation (service/domain/trend.py) against values worked out by hand, and its settings."""

from __future__ import annotations

import datetime as dt

import pytest

from service.calibration.settings import BmdSettings
from service.config import load_config
from service.domain.trend import Trend, TrendPoint, compute_trend, dicom_date, least_significant_change_percent
from service.results.settings import ResultsSettings

PRIOR_DATE, CURRENT_DATE = dt.date(2025, 3, 1), dt.date(2026, 3, 1)  # 365 days


def point(uid: str, when: dt.date, summary: float | None, levels: dict[str, float],
          used: tuple[str, ...] = ("L1", "L2"), kind: str = "internal", kvp: float | None = 120.0,
          contrast: bool | None = False) -> TrendPoint:
    return TrendPoint(uid, when, summary, used, levels, kind, kvp, contrast)


def prior(summary: float = 100.0, **kwargs: object) -> TrendPoint:
    return point("1.2.3.1", PRIOR_DATE, summary, {"L1": summary - 5, "L2": summary + 5}, **kwargs)  # type: ignore[arg-type]


def current(summary: float, **kwargs: object) -> TrendPoint:
    return point("1.2.3.2", CURRENT_DATE, summary, {"L1": summary - 5, "L2": summary + 5}, **kwargs)  # type: ignore[arg-type]


def test_lsc_is_2_77_times_the_precision() -> None:
    assert least_significant_change_percent(3.0) == pytest.approx(8.31)
    assert least_significant_change_percent(1.0) == pytest.approx(2.77)
    with pytest.raises(ValueError, match="precision_percent"):
        least_significant_change_percent(0.0)


def test_twelve_percent_loss_in_a_year_is_beyond_the_lsc() -> None:
    trend = compute_trend(current(88.0), prior(100.0))
    assert trend.comparison == "summary" and trend.levels_compared == ("L1", "L2")
    assert trend.interval_days == 365
    assert trend.change_mg_cm3 == pytest.approx(-12.0)
    assert trend.change_percent == pytest.approx(-12.0)
    assert trend.percent_per_year == pytest.approx(-12.0 * 365.25 / 365)
    assert trend.beyond_lsc and trend.warnings == ()


def test_five_percent_is_within_the_default_lsc_but_not_a_tight_one() -> None:
    assert not compute_trend(current(95.0), prior(100.0)).beyond_lsc
    assert compute_trend(current(95.0), prior(100.0), precision_percent=1.5).beyond_lsc  # LSC 4.155 %
    assert compute_trend(current(109.0), prior(100.0)).beyond_lsc  # a gain beyond the LSC is flagged too


def test_half_a_year_doubles_the_annual_rate() -> None:
    half = point("1.2.3.2", dt.date(2025, 8, 30), 95.0, {"L1": 90.0, "L2": 100.0})  # 182 days
    trend = compute_trend(half, prior(100.0))
    assert trend.interval_days == 182
    assert trend.percent_per_year == pytest.approx(-5.0 * 365.25 / 182)


def test_different_summary_levels_compare_the_common_levels() -> None:
    before = point("1.2.3.1", PRIOR_DATE, 105.0, {"L1": 100.0, "L2": 110.0})
    after = point("1.2.3.2", CURRENT_DATE, 103.3, {"L1": 90.0, "L2": 100.0, "L3": 120.0}, used=("L1", "L2", "L3"))
    trend = compute_trend(after, before)
    assert trend.comparison == "common levels" and trend.levels_compared == ("L1", "L2")
    assert trend.prior_bmd_mg_cm3 == pytest.approx(105.0) and trend.current_bmd_mg_cm3 == pytest.approx(95.0)
    assert trend.change_percent == pytest.approx(-10.0 / 105.0 * 100)
    assert trend.beyond_lsc
    assert any("summary levels differ" in w for w in trend.warnings)


def test_no_level_in_common_is_not_comparable() -> None:
    before = point("1.2.3.1", PRIOR_DATE, 100.0, {"L1": 95.0, "L2": 105.0})
    after = point("1.2.3.2", CURRENT_DATE, 70.0, {"T7": 70.0}, used=("T7",))
    trend = compute_trend(after, before)
    assert trend.comparison == "not comparable" and not trend.comparable
    assert trend.change_mg_cm3 is None and trend.percent_per_year is None and not trend.beyond_lsc
    assert any("not comparable" in w for w in trend.warnings)


def test_calibration_kvp_and_contrast_differences_are_warned() -> None:
    trend = compute_trend(current(88.0, kind="phantom", kvp=100.0, contrast=True), prior(100.0))
    text = " | ".join(trend.warnings)
    assert "calibration differs: internal before, phantom now" in text
    assert "kVp differs: 120 before, 100 now" in text
    assert "contrast differs: unenhanced before, contrast-enhanced now" in text
    assert trend.beyond_lsc  # still computed and flagged, with the warnings
    assert compute_trend(current(88.0, kvp=None, contrast=None), prior(100.0)).warnings == ()  # unknown: no claim


def test_prior_must_be_an_earlier_other_study() -> None:
    with pytest.raises(ValueError, match=r"after current\.study_date"):
        compute_trend(prior(100.0), current(88.0))
    with pytest.raises(ValueError, match="same study"):
        compute_trend(point("1.2.3.1", CURRENT_DATE, 88.0, {}), prior(100.0))


def test_json_round_trip() -> None:
    trend = compute_trend(current(88.0, kvp=100.0), prior(100.0))
    again = Trend.from_json_dict(trend.to_json_dict())
    assert again.prior_study_date == PRIOR_DATE and again.beyond_lsc and again.warnings == trend.warnings
    assert again.change_mg_cm3 == pytest.approx(-12.0) and again.lsc_percent == pytest.approx(8.31)


def test_dicom_dates() -> None:
    assert dicom_date("20250301") == dt.date(2025, 3, 1)
    assert dicom_date("2025.03.01") == dt.date(2025, 3, 1)  # ACR-NEMA form
    assert dicom_date("") is None and dicom_date("20251301") is None and dicom_date("2025") is None


def test_settings_validate_and_load() -> None:
    with pytest.raises(ValueError, match=r"bmd.precision_percent"):
        BmdSettings(precision_percent=0.0)
    with pytest.raises(ValueError, match=r"results.patient_identity_retention_days"):
        ResultsSettings(patient_identity_retention_days=-1.0)
    config = load_config(env={"BMD_NODE_BMD__PRECISION_PERCENT": "1.5",
                              "BMD_NODE_RESULTS__PATIENT_IDENTITY_RETENTION_DAYS": "30"})
    assert config.bmd.precision_percent == 1.5 and config.results.patient_identity_retention_days == 30.0
    assert load_config(env={}).bmd.precision_percent == 3.0
