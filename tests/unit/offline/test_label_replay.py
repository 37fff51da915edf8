"""Smoke test of the labelling replay: one small BMD-set case recorded with the node's segmenter, then named again
from the record and scored against its reference, as evaluate segmentation would score the node's own names."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from service.offline.evaluation import spacing_check
from service.offline.evaluation.bmd_set import write_set
from service.offline.evaluation.label_replay import RecordedCase, main, record, score
from service.segmentation.inference import load_segmenter
from service.segmentation.labelling import label_bodies
from service.segmentation.settings import SegmentationSettings


def test_record_then_replay_one_case(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = write_set(tmp_path / "set", 1, rows=160)
    recorded = record(cases[0], load_segmenter(SegmentationSettings(device="cpu")))
    assert isinstance(recorded, RecordedCase) and recorded.bodies
    assert len(recorded.centroids_lps) == len(recorded.bodies)
    assert all(b.field_above_mm is not None and b.field_below_mm is not None for b in recorded.bodies)
    scored = score(recorded, label_bodies(recorded.bodies, recorded.sacrum_below).decisions)
    assert scored.complete >= 3 and 0 <= scored.identified <= scored.complete
    # every reference body fully in view named right, confident or not, or named wrong and confident, or neither
    assert scored.confident <= scored.complete
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "set__set__case_00.pkl").write_bytes(pickle.dumps(recorded))
    assert main(["replay", "--cache", str(cache), "--cases"]) == 0
    out = capsys.readouterr().out
    assert f"set/set | 1 | {scored.complete} | " in out
    # the centroid spacing on the same record: the reference count is costed and not rejected
    assert spacing_check.main(["--cache", str(cache)]) == 0
    spacing_out = capsys.readouterr().out
    row = next(line for line in spacing_out.splitlines() if line.startswith("set/set | 1 | "))
    assert row.split(" | ")[3] == "0"
    assert "T12/L1 | 1 | " in spacing_out
