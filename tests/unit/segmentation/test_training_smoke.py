"""The training recipe runs end to end on CPU (tiny: one phantom, two iterations) and writes a loadable bundle."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from service.segmentation.bundle import load_bundle
from service.training.segmentation import TrainConfig, train


@pytest.mark.slow
def test_recipe_writes_a_loadable_bundle(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    out = tmp_path / "bundle"
    log = train(TrainConfig(out=out, seed=3, cases=1, iterations=2, cache=tmp_path / "cache"))
    assert log["iterations_done"] == 2
    assert (out / "configs" / "metadata.json").is_file()
    bundle = load_bundle(out, torch.device("cpu"))
    assert bundle.roi_size == (96, 96, 96)
    assert bundle.coarse_spacing_mm == 3.0
