"""Smoke test of the fracture-outcome diagnostic: one small BMD-set case, segmented once, then read from the cache."""

from __future__ import annotations

from pathlib import Path

from service.offline.evaluation.bmd_set import write_set
from service.offline.evaluation.fracture_outcomes import outcomes


def test_outcomes_of_one_case_with_a_cached_segmentation(tmp_path: Path) -> None:
    cases = write_set(tmp_path / "set", 1, rows=160)  # case_00 carries a fracture (every other case does)
    cache = tmp_path / "cache"
    lines, counts = outcomes(cases, cache)
    assert (cache / "case_00.pkl").is_file()
    assert sum(counts.values()) >= 3 and {t for t, _ in counts} <= {"fractured", "intact"}
    assert any("truth" in line and "->" in line for line in lines)  # the fractured level is listed, found or not
    again, counts_again = outcomes(cases, cache)  # from the cache: the same answer
    assert again == lines and counts_again == counts
