"""The BMD trend since the patient's prior study on this node (issue 20 point 3): a pure computation.

Inputs: the current and the prior study as ``TrendPoint`` (summary value and levels, per-level BMD, study date,
calibration kind, kVp, contrast). Output: a frozen ``Trend`` with the change in mg/cm3, in % and in %/year, and
whether it exceeds the least significant change.

Least significant change (95 % confidence, two measurements): LSC = 2.77 x precision (the precision error as a
coefficient of variation). Default precision 3 %: Engelke K et al., "Clinical use of quantitative computed
tomography and peripheral quantitative computed tomography in the management of osteoporosis in adults: the 2007
ISCD Official Positions", J Clin Densitom 2008;11(1):123-162, report short-term precision of spine QCT of about
1-3 % (CV); 3 % is the upper, conservative end, appropriate for opportunistic CT without a dedicated protocol
(asynchronous QCT of the spine: overall precision error under 3 %, Wang L et al., Sci Rep 2017;7:6284).
The 2.77 factor is the ISCD LSC definition for 95 % confidence (ISCD precision calculator glossary; 2.77 = 1.96 x
sqrt(2)). A site that measured its own precision sets ``[bmd] precision_percent``.

Like with like: when both studies used the same summary levels, the summary values are compared; otherwise the
mean of the levels measured (evaluable, with a BMD) in both studies among either study's summary levels; when there
is no such level the studies are "not comparable" (no change, no flag). Different calibration kind, kVp or contrast
phase give warnings; the change is still computed and flagged, the warnings travel with it.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from service.domain.results import ScreeningResult

LSC_FACTOR = 2.77
"""ISCD: LSC = 2.77 x precision error (95 % confidence that two measurements differ)."""
DEFAULT_PRECISION_PERCENT = 3.0
"""Spine QCT short-term precision, upper end of the 1-3 % of Engelke 2008 (ISCD 2007 official positions)."""
DAYS_PER_YEAR = 365.25
MIN_INTERVAL_DAYS = 1
"""Below one day apart no rate per year is given."""
TREND_KEY = "trend"
"""Key of the trend in ScreeningResult.extra (and so in result.json's "extra")."""


def _check_date(name: str, value: dt.date) -> None:
    if not isinstance(value, dt.date) or isinstance(value, dt.datetime):
        raise ValueError(f"{name} must be a datetime.date, got {value!r}")


@dataclass(frozen=True)
class TrendPoint:
    """One study's values as the trend needs them."""

    study_instance_uid: str
    study_date: dt.date
    summary_bmd_mg_cm3: float | None
    summary_levels: tuple[str, ...]
    """Level names used for the summary value, e.g. ("L1", "L2")."""
    bmd_by_level_mg_cm3: Mapping[str, float] = field(default_factory=dict)
    """Evaluable levels with a BMD (level name -> mg/cm3)."""
    calibration_kind: str = ""
    kvp: float | None = None
    contrast_enhanced: bool | None = None
    """None: not known."""

    def __post_init__(self) -> None:
        if not self.study_instance_uid:
            raise ValueError("study_instance_uid must not be empty")
        _check_date("study_date", self.study_date)
        if self.summary_bmd_mg_cm3 is not None and not math.isfinite(self.summary_bmd_mg_cm3):
            raise ValueError(f"summary_bmd_mg_cm3 must be finite or None, got {self.summary_bmd_mg_cm3}")
        for level, value in self.bmd_by_level_mg_cm3.items():
            if not math.isfinite(value):
                raise ValueError(f"bmd_by_level_mg_cm3[{level!r}] must be finite, got {value}")
        if self.kvp is not None and not self.kvp > 0:
            raise ValueError(f"kvp must be positive or None, got {self.kvp}")


@dataclass(frozen=True)
class Trend:
    """The change from the prior study to the current one (values of the current minus the prior)."""

    prior_study_instance_uid: str
    prior_study_date: dt.date
    current_study_date: dt.date
    interval_days: int
    prior_levels: tuple[str, ...]
    """The prior's summary levels."""
    levels_compared: tuple[str, ...]
    """The levels whose values were compared (empty: not comparable)."""
    comparison: str
    """"summary" (same summary levels), "common levels" (mean of the levels measured in both) or "not comparable"."""
    prior_bmd_mg_cm3: float | None
    current_bmd_mg_cm3: float | None
    change_mg_cm3: float | None
    change_percent: float | None
    percent_per_year: float | None
    precision_percent: float
    lsc_percent: float
    beyond_lsc: bool
    prior_calibration_kind: str = ""
    prior_kvp: float | None = None
    prior_contrast_enhanced: bool | None = None
    warnings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_date("prior_study_date", self.prior_study_date)
        _check_date("current_study_date", self.current_study_date)
        if self.comparison not in ("summary", "common levels", "not comparable"):
            raise ValueError(f"comparison must be 'summary', 'common levels' or 'not comparable', "
                             f"got {self.comparison!r}")
        if not self.precision_percent > 0:
            raise ValueError(f"precision_percent must be positive, got {self.precision_percent}")
        if self.comparison == "not comparable" and (self.beyond_lsc or self.change_mg_cm3 is not None):
            raise ValueError("a not comparable trend has no change and no flag")

    @property
    def comparable(self) -> bool:
        return self.comparison != "not comparable"

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "prior_study_instance_uid": self.prior_study_instance_uid,
            "prior_study_date": self.prior_study_date.isoformat(),
            "current_study_date": self.current_study_date.isoformat(),
            "interval_days": self.interval_days,
            "prior_levels": list(self.prior_levels),
            "levels_compared": list(self.levels_compared),
            "comparison": self.comparison,
            "prior_bmd_mg_cm3": _round(self.prior_bmd_mg_cm3),
            "current_bmd_mg_cm3": _round(self.current_bmd_mg_cm3),
            "change_mg_cm3": _round(self.change_mg_cm3),
            "change_percent": _round(self.change_percent),
            "percent_per_year": _round(self.percent_per_year),
            "precision_percent": self.precision_percent,
            "lsc_percent": _round(self.lsc_percent),
            "beyond_lsc": self.beyond_lsc,
            "prior_calibration_kind": self.prior_calibration_kind,
            "prior_kvp": self.prior_kvp,
            "prior_contrast_enhanced": self.prior_contrast_enhanced,
            "warnings": list(self.warnings),
        }

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> Trend:
        def number(key: str) -> float | None:
            value = data.get(key)
            return None if value is None else float(value)

        return cls(
            prior_study_instance_uid=str(data["prior_study_instance_uid"]),
            prior_study_date=dt.date.fromisoformat(str(data["prior_study_date"])),
            current_study_date=dt.date.fromisoformat(str(data["current_study_date"])),
            interval_days=int(data["interval_days"]),
            prior_levels=tuple(str(v) for v in data.get("prior_levels", ())),
            levels_compared=tuple(str(v) for v in data.get("levels_compared", ())),
            comparison=str(data["comparison"]),
            prior_bmd_mg_cm3=number("prior_bmd_mg_cm3"), current_bmd_mg_cm3=number("current_bmd_mg_cm3"),
            change_mg_cm3=number("change_mg_cm3"), change_percent=number("change_percent"),
            percent_per_year=number("percent_per_year"),
            precision_percent=float(data["precision_percent"]), lsc_percent=float(data["lsc_percent"]),
            beyond_lsc=bool(data["beyond_lsc"]),
            prior_calibration_kind=str(data.get("prior_calibration_kind") or ""),
            prior_kvp=number("prior_kvp"),
            prior_contrast_enhanced=data.get("prior_contrast_enhanced"),
            warnings=tuple(str(w) for w in data.get("warnings", ())),
        )


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(float(value), digits)


def least_significant_change_percent(precision_percent: float) -> float:
    """LSC (%) = 2.77 x precision (%): 3 % -> 8.31 %."""
    if not precision_percent > 0:
        raise ValueError(f"precision_percent must be positive, got {precision_percent}")
    return LSC_FACTOR * precision_percent


def _compared_values(current: TrendPoint, prior: TrendPoint) -> tuple[str, tuple[str, ...], float | None,
                                                                       float | None]:
    """(comparison, levels, prior value, current value) comparing like with like."""
    if (current.summary_levels and tuple(current.summary_levels) == tuple(prior.summary_levels)
            and current.summary_bmd_mg_cm3 is not None and prior.summary_bmd_mg_cm3 is not None):
        return "summary", tuple(prior.summary_levels), prior.summary_bmd_mg_cm3, current.summary_bmd_mg_cm3
    candidates = list(dict.fromkeys([*prior.summary_levels, *current.summary_levels]))
    common = tuple(level for level in candidates
                   if level in prior.bmd_by_level_mg_cm3 and level in current.bmd_by_level_mg_cm3)
    if not common:
        return "not comparable", (), prior.summary_bmd_mg_cm3, current.summary_bmd_mg_cm3
    before = sum(prior.bmd_by_level_mg_cm3[level] for level in common) / len(common)
    after = sum(current.bmd_by_level_mg_cm3[level] for level in common) / len(common)
    return "common levels", common, before, after


def _warnings(current: TrendPoint, prior: TrendPoint, comparison: str) -> list[str]:
    out: list[str] = []
    if comparison == "common levels":
        out.append(f"summary levels differ ({'-'.join(prior.summary_levels) or 'none'} before, "
                   f"{'-'.join(current.summary_levels) or 'none'} now): compared the levels measured in both")
    elif comparison == "not comparable":
        out.append("not comparable: no level measured in both studies")
    if prior.calibration_kind and current.calibration_kind and prior.calibration_kind != current.calibration_kind:
        out.append(f"calibration differs: {prior.calibration_kind} before, {current.calibration_kind} now")
    if prior.kvp is not None and current.kvp is not None and abs(prior.kvp - current.kvp) > 0.5:
        out.append(f"kVp differs: {prior.kvp:g} before, {current.kvp:g} now")
    if (prior.contrast_enhanced is not None and current.contrast_enhanced is not None
            and prior.contrast_enhanced != current.contrast_enhanced):
        phase = {True: "contrast-enhanced", False: "unenhanced"}
        out.append(f"contrast differs: {phase[prior.contrast_enhanced]} before, {phase[current.contrast_enhanced]} "
                   "now")
    return out


def compute_trend(current: TrendPoint, prior: TrendPoint,
                  precision_percent: float = DEFAULT_PRECISION_PERCENT) -> Trend:
    """The change from ``prior`` to ``current`` (the prior must be the earlier study)."""
    if prior.study_date > current.study_date:
        raise ValueError(f"prior.study_date ({prior.study_date}) is after current.study_date ({current.study_date})")
    if prior.study_instance_uid == current.study_instance_uid:
        raise ValueError("prior and current are the same study")
    lsc = least_significant_change_percent(precision_percent)
    interval = (current.study_date - prior.study_date).days
    comparison, levels, before, after = _compared_values(current, prior)
    change = percent = per_year = None
    beyond = False
    if comparison != "not comparable" and before is not None and after is not None:
        change = after - before
        if before > 0:
            percent = 100.0 * change / before
            beyond = abs(percent) > lsc
            if interval >= MIN_INTERVAL_DAYS:
                per_year = percent * DAYS_PER_YEAR / interval
    elif comparison != "not comparable":
        comparison, levels = "not comparable", ()
    return Trend(
        prior_study_instance_uid=prior.study_instance_uid, prior_study_date=prior.study_date,
        current_study_date=current.study_date, interval_days=interval, prior_levels=tuple(prior.summary_levels),
        levels_compared=levels, comparison=comparison, prior_bmd_mg_cm3=before, current_bmd_mg_cm3=after,
        change_mg_cm3=change, change_percent=percent, percent_per_year=per_year,
        precision_percent=precision_percent, lsc_percent=lsc, beyond_lsc=beyond,
        prior_calibration_kind=prior.calibration_kind, prior_kvp=prior.kvp,
        prior_contrast_enhanced=prior.contrast_enhanced, warnings=tuple(_warnings(current, prior, comparison)))


def trend_of(extra: Mapping[str, Any]) -> Trend | None:
    """The trend a result carries in its ``extra`` (None: no prior study)."""
    data = extra.get(TREND_KEY)
    return None if not data else Trend.from_json_dict(data)


def dicom_date(value: str) -> dt.date | None:
    """A DICOM DA value (YYYYMMDD, also the old YYYY.MM.DD) as a date; None when empty or malformed."""
    text = (value or "").strip().replace(".", "")
    try:
        return dt.datetime.strptime(text, "%Y%m%d").date() if len(text) == 8 else None
    except ValueError:
        return None


def trend_point_of(result: ScreeningResult, study_date: dt.date, kvp: float | None) -> TrendPoint:
    """The current result as a TrendPoint (contrast from the assessment's finding, else the calibration flag)."""
    contrast = (result.extra.get("contrast") or {}).get("enhanced")
    if contrast is None:
        contrast = "contrast_enhanced" in result.calibration.flags
    return TrendPoint(
        study_instance_uid=result.study_instance_uid, study_date=study_date,
        summary_bmd_mg_cm3=result.summary.bmd_mg_cm3,
        summary_levels=tuple(level.name for level in result.summary.levels_used),
        bmd_by_level_mg_cm3={m.level.name: float(m.bmd_mg_cm3) for m in result.vertebrae
                             if m.evaluable and m.bmd_mg_cm3 is not None and math.isfinite(m.bmd_mg_cm3)},
        calibration_kind=result.calibration.kind.value, kvp=kvp if kvp else None, contrast_enhanced=bool(contrast))
