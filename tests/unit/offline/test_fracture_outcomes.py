"""Smoke test of the fracture-outcome diagnostic: one small BMD-set case, segmented once, then read from the cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.measurement import endplates
from service.offline.evaluation.bmd_set import write_set
from service.offline.evaluation.fracture_outcomes import outcomes, override
from service.offline.evaluation.height_bias import errors, truth_losses


def test_outcomes_of_one_case_with_a_cached_segmentation(tmp_path: Path) -> None:
    cases = write_set(tmp_path / "set", 1, rows=160)  # case_00 carries a fracture (every other case does)
    cache = tmp_path / "cache"
    lines, counts, grades = outcomes(cases, cache)
    assert (cache / "case_00.pkl").is_file()
    assert sum(counts.values()) >= 3 and {t for t, _ in counts} <= {"fractured", "intact"}
    assert any("truth" in line and "->" in line for line in lines)  # the fractured level is listed, found or not
    assert sum(grades.values()) == sum(counts.values())
    assert sum(v for (g, _), v in grades.items() if g > 0) == 1  # the one fracture, with its grade
    again, counts_again, _ = outcomes(cases, cache)  # from the cache: the same answer
    assert again == lines and counts_again == counts
    # the image heights of the unfractured levels against the phantom's truth (height_bias), from the same cache
    by_group = errors(cases, cache)
    assert len(by_group) == 1 and sum(len(e) for e in by_group.values()) >= 6
    assert all(abs(float(x)) < 10.0 for e in by_group.values() for x in e)  # heights of bodies, not of discs
    by_column = errors(cases, cache, by_column=True)
    assert {key.split()[-1] for _, key in by_column} <= {"anterior", "middle", "posterior"}
    assert sum(len(e) for e in by_column.values()) == sum(len(e) for e in by_group.values())
    # the Genant rule on the truth heights finds the drawn fracture (no segmentation involved)
    (level, kind, drawn, loss, _), = truth_losses(cases[0])
    assert level[0] in "TL" and kind in {"wedge", "biconcave", "crush"} and loss >= 0.8 * drawn > 0.1


def test_set_overrides_a_fracture_check_constant() -> None:
    before = endplates.IMAGE_RESOLUTION_FACTOR
    try:
        override("endplates.IMAGE_RESOLUTION_FACTOR=0.125")
        assert endplates.IMAGE_RESOLUTION_FACTOR == 0.125
    finally:
        endplates.IMAGE_RESOLUTION_FACTOR = before
    with pytest.raises(SystemExit):
        override("endplates.NO_SUCH_NAME=1")
