"""The held-out labelling set's mix of anatomical variants, and its figures split by variant."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from service.offline.evaluation.labelling_set import case_overrides
from service.offline.evaluation.narrow_fov import summarise, summarise_by_variant


def test_labelling_set_draws_every_variant_in_both_halves() -> None:
    """Whole fields and targeted reconstructions each get 11 and 13 rib pairs and both lumbosacral variants (until
    session 8 the whole half drew only 11 rib pairs and lumbarised S1s, the targeted half only the others)."""
    drawn: dict[bool, set[tuple[str, object]]] = {True: set(), False: set()}
    for i in range(60):
        o = case_overrides(i, np.random.default_rng([0, i, 1]))
        drawn[i % 2 == 1] |= {("rib_pairs", o["rib_pairs"]), ("lumbar_variant", o["lumbar_variant"])}
    for narrow in (True, False):
        assert {("rib_pairs", 11), ("rib_pairs", 13), ("lumbar_variant", "lumbarised_s1"),
                ("lumbar_variant", "sacralised_l5")} <= drawn[narrow], narrow


def test_summary_by_variant_splits_the_levels_by_the_cases_truth(tmp_path: Path) -> None:
    for name, ribs, lumbar in (("case_01", 12, "normal"), ("case_05", 13, "normal"), ("case_07", 12, "sacralised_l5")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "truth.json").write_text(json.dumps({"variants": {"rib_pairs": ribs,
                                                                             "lumbar_variant": lumbar}}))
    right = {"fully_visible": True, "predicted": True, "identified": True, "uncertain": False}
    off = {"fully_visible": True, "predicted": True, "identified": False, "uncertain": True}
    report = {"per_case": {"case_01": {"per_level": {"L1": right, "L2": right}},
                           "case_05": {"per_level": {"L1": off, "L2": off, "L3": {"fully_visible": False}}},
                           "case_07": {"per_level": {"L4": right}}}}
    split = summarise_by_variant(report, tmp_path)
    assert {k: (v["complete"], v["identified"], v["confident"]) for k, v in split.items()} == {
        "normal": (2, 2, 2), "rib pairs 13": (2, 0, 0), "sacralised_l5": (1, 1, 1)}
    assert summarise(report)["identified"] == 3
