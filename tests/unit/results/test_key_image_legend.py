"""The key image legend shows the category cut-offs used for the result (the site's), never fixed text."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from PIL import ImageDraw

from service.domain.guidelines import THRESHOLD_SETS, Category, Thresholds, thresholds_from_record
from service.domain.levels import VertebraLevel
from service.domain.results import FRACTURE_CHECK_LIMITED_NOTE, PatientSummary
from service.measurement.fracture import VertebralHeights
from service.measurement.fracture_check import thick_slice_limitation
from service.results import keyimage
from service.results.common import AlgorithmInfo
from tests.unit.results.synthetic import hand_result, synthetic_case

SITE = Thresholds(name="SITE-2026", version="v2", osteoporosis_below_mg_cm3=70.0, normal_above_mg_cm3=110.0)
ALGORITHM = AlgorithmInfo(name="bmd-node", version="0.1.0", model_name="box-model", model_version="0.0.1",
                          manufacturer="bmd-node project")


def _summary(threshold_set: str, thresholds: Thresholds | None = None) -> PatientSummary:
    return PatientSummary(bmd_mg_cm3=100.0, levels_used=(VertebraLevel.L1,), category=Category.OSTEOPENIA,
                          method="test", threshold_set=threshold_set, thresholds=thresholds)


def _record_drawn_text(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every text the key image draws, in order (ImageDraw.text recorded, then drawn as before)."""
    drawn: list[str] = []
    original_text = ImageDraw.ImageDraw.text

    def recording_text(self: ImageDraw.ImageDraw, xy: Any, text: Any, *args: Any, **kwargs: Any) -> None:
        drawn.append(str(text))
        original_text(self, xy, text, *args, **kwargs)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", recording_text)
    return drawn


def test_key_image_draws_the_site_cut_offs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A result assessed with a site's cut-offs (here just above its BMD, so the category differs from the
    guideline's): the drawn legend and category follow those cut-offs, and 80/120 is drawn nowhere."""
    case = synthetic_case(tmp_path)
    bmd = case.result.summary.bmd_mg_cm3
    assert bmd is not None
    site = Thresholds(name="SITE-2026", version="v2", osteoporosis_below_mg_cm3=bmd + 5.0,
                      normal_above_mg_cm3=bmd + 45.0)
    result = hand_result(case.volume, case.segmentation, case.roi_labels, thresholds=site)
    # the summary category comes from the site's cut-offs (the guideline set would say normal)
    assert case.result.summary.category is Category.NORMAL and result.summary.category is Category.OSTEOPOROSIS
    drawn = _record_drawn_text(monkeypatch)
    keyimage.render_key_image(case.volume, case.segmentation, case.roi_labels, result, ALGORITHM)
    low, high = f"{site.osteoporosis_below_mg_cm3:g}", f"{site.normal_above_mg_cm3:g}"
    assert f"QCT (mg/cm³): <{low} osteoporosis · {low}–{high} osteopenia" in drawn, drawn
    assert f">{high} normal (SITE-2026-v2)" in drawn, drawn
    assert "OSTEOPOROSIS" in drawn
    assert not any("<80" in t or "80–120" in t or ">120" in t for t in drawn), drawn


def test_legend_lines_use_the_carried_thresholds() -> None:
    lines = keyimage.category_legend(_summary(SITE.identifier, SITE))
    assert lines == ("QCT (mg/cm³): <70 osteoporosis · 70–110 osteopenia", ">110 normal (SITE-2026-v2)")


def test_legend_lines_read_the_recorded_identifier_when_no_thresholds_are_carried() -> None:
    """Results that only record ``threshold_set`` (the assessment's identifier with its cut-offs) still get theirs."""
    assert keyimage.category_legend(_summary(SITE.identifier)) == keyimage.category_legend(_summary(SITE.identifier,
                                                                                                   SITE))
    default = keyimage.category_legend(_summary("ACR2018-ISCD-v1"))
    assert default == ("QCT (mg/cm³): <80 osteoporosis · 80–120 osteopenia", ">120 normal (ACR2018-ISCD-v1)")
    unknown = keyimage.category_legend(_summary("LOCAL-RULES"))
    assert unknown == ("QCT (mg/cm³): cut-offs not recorded", "threshold set LOCAL-RULES")


def test_summary_thresholds_must_match_the_recorded_set() -> None:
    with pytest.raises(ValueError, match="threshold_set"):
        _summary(Thresholds().identifier, SITE)
    with pytest.raises(ValueError, match="threshold_set"):
        _summary("", None)


@pytest.mark.parametrize("thresholds", [
    Thresholds(), SITE, Thresholds(name="X", version="2026-01", osteoporosis_below_mg_cm3=72.5,
                                   normal_above_mg_cm3=112.5)])
def test_recorded_identifier_gives_the_thresholds_back(thresholds: Thresholds) -> None:
    back = thresholds_from_record(thresholds.identifier)
    assert back is not None and back.identifier == thresholds.identifier
    assert (back.osteoporosis_below_mg_cm3, back.normal_above_mg_cm3) == (
        thresholds.osteoporosis_below_mg_cm3, thresholds.normal_above_mg_cm3)


def test_published_sets_by_name() -> None:
    assert thresholds_from_record(Thresholds().identifier) == Thresholds()
    assert thresholds_from_record("ACR2018-ISCD") == thresholds_from_record("ACR2018-ISCD-v1") == Thresholds()
    chinese = thresholds_from_record("CN2018-QCT-v1")
    assert chinese is not None and chinese in THRESHOLD_SETS.values()
    assert (chinese.osteoporosis_below_mg_cm3, chinese.normal_above_mg_cm3) == (
        Thresholds().osteoporosis_below_mg_cm3, Thresholds().normal_above_mg_cm3)
    assert thresholds_from_record("site rules 2026") is None
    assert thresholds_from_record("X-v1 (<130 / 130-120 / >120 mg/cm3)") is None  # not a valid pair


def test_a_category_without_a_value_says_the_names_are_uncertain(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    case = synthetic_case(tmp_path)
    summary = PatientSummary(bmd_mg_cm3=None, levels_used=(), category=Category.OSTEOPENIA,
                             method="category only", threshold_set=SITE.identifier, thresholds=SITE)
    result = dataclasses.replace(case.result, summary=summary)
    drawn = _record_drawn_text(monkeypatch)
    keyimage.render_key_image(case.volume, case.segmentation, case.roi_labels, result, ALGORITHM)
    assert "OSTEOPENIA" in drawn and "BMD: no value" in drawn, drawn
    assert "level names uncertain:" in drawn and "category of every level around L1–L2" in drawn, drawn


def test_a_thick_slice_study_shows_the_fracture_check_limitation_under_the_table(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The summary note of a 5 mm study (fracture_check.thick_slice_limitation, whose wording the key image keys on:
    results do not import measurement) is drawn as its own line, not among the notes a long table pushes off."""
    note = thick_slice_limitation({lv: VertebralHeights(20.0, 19.0, 20.0, resolution_mm=5.0)
                                   for lv in (VertebraLevel.L1, VertebraLevel.L2)})
    assert note is not None and note.startswith(FRACTURE_CHECK_LIMITED_NOTE)
    case = synthetic_case(tmp_path)
    result = dataclasses.replace(case.result, summary=dataclasses.replace(case.result.summary, notes=(note,)))
    drawn = _record_drawn_text(monkeypatch)
    keyimage.render_key_image(case.volume, case.segmentation, case.roi_labels, result, ALGORITHM)
    assert "Fracture check limited by 5.0 mm slices (see SR)" in drawn, drawn
    assert not any(t.startswith("Note: fracture check limited") for t in drawn), drawn
