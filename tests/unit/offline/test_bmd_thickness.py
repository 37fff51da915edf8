"""bmd_thickness splits an evaluated set's per-level rows by each case's slice thickness."""

from __future__ import annotations

import json
from pathlib import Path

from service.offline.evaluation.bmd_thickness import limited_cases, main, table, thickness_by_case


def _row(case: str, grade: int, called: bool, outcome: str, reason: str | None = None) -> dict[str, object]:
    return {"case": case, "fracture_grade_truth": grade, "called_fracture": called, "fracture_outcome": outcome,
            "exclusion_reason": reason}


def test_rows_are_counted_under_their_case_thickness(tmp_path: Path) -> None:
    for case, mm in (("case_00", 1.0), ("case_01", 5.0)):
        (tmp_path / "set" / case).mkdir(parents=True)
        (tmp_path / "set" / case / "truth.json").write_text(json.dumps({"acquisition": {"slice_thickness_mm": mm}}))
    rows = [_row("case_00", 2, True, "fractured", "fracture"), _row("case_00", 0, False, "not fractured"),
            _row("case_01", 1, False, "not measurable"), _row("case_01", 0, True, "fractured", "fracture"),
            _row("case_01", 0, False, "not measurable", "roi_too_small"), _row("case_01", 0, False, "not checked")]
    assert thickness_by_case(tmp_path / "set") == {"case_00": 1.0, "case_01": 5.0}
    lines = table(rows, thickness_by_case(tmp_path / "set"))
    assert lines[0].startswith("1 mm: fractures called 1 of 1 (G1 0/0 G2 1/1 G3 0/0); unfractured checked 1: "
                               "called fractured 0, not measurable 0; unfractured excluded: none")
    assert lines[1] == ("5 mm: fractures called 0 of 1 (G1 0/1 G2 0/0 G3 0/0); unfractured checked 2: called "
                        "fractured 1, not measurable 1; unfractured excluded: fracture 1, roi_too_small 1")
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "metrics.json").write_text(json.dumps({"dataset": str(tmp_path / "set"),
                                                                  "per_level": rows}))
    for case, notes in (("case_00", []), ("case_01", ["fracture check limited by 5.0 mm slices: ..."])):
        (tmp_path / "report" / "cases" / case).mkdir(parents=True)
        (tmp_path / "report" / "cases" / case / "result.json").write_text(json.dumps({"summary": {"notes": notes}}))
    assert limited_cases(tmp_path / "report") == {"case_01"}
    limited = table(rows, thickness_by_case(tmp_path / "set"), limited_cases(tmp_path / "report"))
    assert limited[1].endswith("; summaries saying the check is limited: 1 of 1 cases")
    assert limited[0].endswith("limited: 0 of 1 cases")
    assert main([str(tmp_path / "report")]) == 0
