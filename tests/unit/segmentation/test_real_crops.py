"""Targeted fields cut from the real CPTAC chest never name a body confidently other than the whole scan does.

Two confident names for one body of one scan cannot both be right, so a contradiction is a confidently wrong name
whichever scan is right (service/offline/evaluation/real_crops.py; the full grid of 40 cuts is its command). The
cuts here are the ones the rules before the small-rib rule named one level off with confidence: the lower half
(T7-L1) at 170 and 250 mm, where the T12's short one-sided rib reads under the rib threshold.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from service.offline.evaluation.real_crops import Cut, Named, compare, run
from service.segmentation.inference import load_segmenter
from service.segmentation.settings import SegmentationSettings

REPO = Path(__file__).resolve().parents[3]
CHEST = REPO / ".." / "shared" / "data" / "cptac_lscc_chest"
BUNDLE = REPO / "models" / "vertebra_seg"
CUTS = [Cut(170.0, 0.0, (0.0, 0.5)), Cut(170.0, 0.0, (0.0, 0.6)), Cut(250.0, 0.0, (0.0, 0.5))]


def test_cuts_of_the_real_chest_never_contradict_its_confident_names() -> None:
    if not CHEST.is_dir():
        pytest.fail(f"real test data missing: {CHEST} (expected the shared data folder next to the repository)")
    torch.set_num_threads(1)
    segmenter = load_segmenter(SegmentationSettings(bundle_dir=BUNDLE, device="cpu"))
    whole, outcomes = run(CHEST, CUTS, segmenter)
    assert sum(not b.uncertain for b in whole) >= 12  # the whole scan is named with confidence (T1 and T12 agree)
    for o in outcomes:
        assert len(o.rows) >= 6, o.cut
        assert o.contradictions == 0, (o.cut.label(), o.rows)


def test_compare_counts_contradictions_and_best_guesses() -> None:
    whole = [Named("T11", False, False, (0.0, 0.0, 0.0)), Named("T12", False, False, (0.0, 0.0, -25.0)),
             Named("L1", True, False, (0.0, 0.0, -50.0)), Named("L2", False, True, (0.0, 0.0, -75.0))]
    cut = [Named("T11", True, False, (1.0, 0.0, 0.0)),     # best guess equal to a confident whole name
           Named("L1", True, False, (0.0, 1.0, -25.0)),    # best guess differing from it
           Named("L2", False, False, (0.0, 0.0, -51.0)),   # confident, but the whole name is uncertain: no verdict
           Named("L3", True, False, (0.0, 0.0, -75.0)),    # the whole body is cut: no verdict
           Named("T9", False, False, (0.0, 0.0, 60.0))]    # no body in the whole scan within 12 mm
    o = compare(Cut(105.0, 0.0, (0.0, 1.0)), whole, cut)
    assert o.contradictions == 0
    assert (o.best_guesses(True), o.best_guesses(False)) == (1, 1)
    confident_wrong = compare(Cut(105.0, 0.0, (0.0, 1.0)), whole, [Named("L1", False, False, (0.0, 0.0, -24.0))])
    assert confident_wrong.contradictions == 1
