"""Smoke test of the phantom-line diagnostic on one small BMD-set case (its rods under the patient)."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.offline.evaluation.bmd_set import write_set
from service.offline.evaluation.phantom_lines import line_error, main


def test_the_synchronous_line_of_one_case_against_its_physics(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    cases = write_set(tmp_path / "set", 1, rows=160)
    err = line_error(cases[0], 150.0)
    assert err is not None and abs(err) < 10.0
    assert main([str(tmp_path / "set")]) == 0
    assert "with a line: 1" in capsys.readouterr().out
    assert main([str(tmp_path / "set"), "--rods"]) == 0
    assert "mg/cm3 rod" in capsys.readouterr().out  # candidates matched to the phantom's rods are listed
