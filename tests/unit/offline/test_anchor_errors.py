"""The anchor diagnostic on hand-made records: an anchor that reads its own body wrong (11 rib pairs: the last rib
on T11) is told apart from anchors that each read their body right but disagree because the bodies between them
were miscounted (labelling set 9 case_44: L2 split between a 48 mm and a 45 mm body)."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import pytest

from service.domain.levels import VertebraLevel as V
from service.offline.evaluation import anchor_errors
from service.offline.evaluation.label_replay import RecordedCase
from service.segmentation.labelling import BodyFeatures

PAIR_MM3 = 2800.0
LEVELS = [V(v) for v in range(V.C7, V.L5 + 1)]


def _body(z_mm: float, height_mm: float, ribs: bool) -> BodyFeatures:
    mm3 = PAIR_MM3 if ribs else 0.0
    return BodyFeatures(centroid_mm=(0.0, 0.0, z_mm), height_mm=height_mm, rib_left=ribs, rib_right=ribs,
                        thoracic_vote=0.5, rib_left_mm3=mm3, rib_right_mm3=mm3, field_left_mm=170.0,
                        field_right_mm=185.0, field_posterior_mm=150.0)


def _record(bodies: list[tuple[float, float, bool]], reference: dict[V, float]) -> RecordedCase:
    """Bodies (canonical z mm, height mm, rib pair) cranial to caudal, sitting on the sacrum; the reference
    centroids (z mm) of the levels, all fully in view."""
    return RecordedCase("case", "whole", [_body(*b) for b in bodies], True, [(0.0, 0.0, z) for z, _, _ in bodies],
                        None, {int(lv): (0.0, 0.0, z) for lv, z in reference.items()},
                        {int(lv): True for lv in reference})


def _column(last_rib: V) -> RecordedCase:
    """C7..L5, thoracic bodies 24 mm apart, lumbar ones 32 mm; ribs T1..``last_rib``: every body found."""
    z, reference = 0.0, {}
    for lv in LEVELS:
        reference[lv] = z
        z -= 24.0 if lv < V.T12 else 32.0
    return _record([(reference[lv], 22.0, V.T1 <= lv <= last_rib) for lv in LEVELS], reference)


def _set9_case44() -> RecordedCase:
    """Labelling set 9 case_44 from T12 down, as recorded (canonical z, heights along the scanner axis): the
    segmentation split L2 between a 48 mm body on L1 and a 45 mm one on L3, with no gap in the centroids' spacing."""
    upper = {V(v): 253.9 + 24.0 * (V.T12 - v) for v in range(V.C7, V.T12 + 1)}
    lumbar = {V.L1: 225.3, V.L2: 201.1, V.L3: 176.8, V.L4: 143.3, V.L5: 112.3}
    found = [(z, 22.0, True) for lv, z in upper.items() if lv >= V.T1]
    bodies = [(upper[V.C7], 12.0, False), *found, (222.3, 48.0, False), (180.5, 45.0, False), (143.3, 30.0, False),
              (111.6, 39.0, False)]
    return _record(bodies, {**upper, **lumbar})




def test_eleven_rib_pairs_are_the_last_rib_reading_its_own_body_one_level_off() -> None:
    counts, own = anchor_errors.anchor_readings(_column(V.T11))
    assert own == {"T12": 1, "T1": 0, "L5": 0}
    assert anchor_errors.explanation(counts, own) == "T12 +1"


def test_two_bodies_segmented_as_one_are_a_miscount_not_a_misread_anchor() -> None:
    counts, own = anchor_errors.anchor_readings(_set9_case44())
    assert own == {"T12": 0, "T1": 0, "L5": 0}
    assert counts["T1"] == counts["T12"] != counts["L5"]  # the count the two rib anchors share is wrong below L1
    assert anchor_errors.explanation(counts, own) == anchor_errors.MISCOUNTED


def test_agreeing_anchors_need_no_explanation_and_the_command_prints_the_tables(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    record = _column(V.T12)
    counts, own = anchor_errors.anchor_readings(record)
    assert anchor_errors.explanation(counts, own) is None
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "set__whole__case_00.pkl").write_bytes(pickle.dumps(record))
    (cache / "set__whole__case_01.pkl").write_bytes(pickle.dumps(_column(V.T11)))
    assert anchor_errors.main(["--cache", str(cache), "--cases"]) == 0
    out = capsys.readouterr().out
    assert "T12 | 2 | +0: 1, +1: 1" in out
    assert "3 anchors: 2 cases, counts disagree in 1" in out
    assert "  T12 +1: 1" in out


def test_the_sacrum_field_listing_says_where_the_field_is_too_short_to_count_the_sacrum(tmp_path: Path) -> None:
    """Two columns sitting on the sacrum, one field ending 40 mm below the centre of L5 (22 mm tall: 11 + 45 mm
    needed), one 90 mm: the first drops the sacrum, the second counts it; listed in order of that reach."""
    cache = tmp_path / "cache"
    cache.mkdir()
    for i, below in enumerate((90.0, 40.0)):
        record = _column(V.T12)
        record.bodies[-1] = dataclasses.replace(record.bodies[-1], field_below_mm=below)
        (cache / f"set__whole__case_{i:02d}.pkl").write_bytes(pickle.dumps(record))
    lines = anchor_errors.sacrum_field_lines(cache)
    assert lines == ["cache/set__whole__case_01: lowest body L5 (22 mm), field 40 mm below its centre: sacrum dropped",
                     "cache/set__whole__case_00: lowest body L5 (22 mm), field 90 mm below its centre: sacrum counts"]
