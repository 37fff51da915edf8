"""The labelling diagnostic prints what the labelling step saw on a real abdomen (ts_abdomen_t11_l2)."""

from __future__ import annotations

import pytest
import torch

from service.offline.evaluation.label_features import main
from tests.shared_data import SHARED_DATA


def test_label_features_shows_the_last_rib_and_the_names_of_a_real_abdomen(capsys: pytest.CaptureFixture[str]
                                                                            ) -> None:
    torch.set_num_threads(1)
    assert main([str(SHARED_DATA / "ts_abdomen_t11_l2")]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.rstrip().endswith(("T12", "L1", "L2", "T12?", "L1?", "L2?"))]
    assert len(rows) == 3, out
    top, middle, _ = rows
    assert "(True)" in top and top.rstrip().endswith("T12"), top  # the last rib, on both sides
    assert "(True)" not in middle and middle.rstrip().endswith("L1"), middle  # rib-free, named with confidence
    assert "note: anchors: T12 (last rib-bearing body)" in out
