"""The training recipe runs end to end on CPU (tiny: one phantom, two iterations) and writes a loadable bundle."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from service.offline.training.fine_segmentation import FineTrainConfig, train_fine
from service.offline.training.segmentation import TrainConfig, train
from service.segmentation.bundle import load_bundle


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


@pytest.mark.slow
def test_fine_recipe_writes_a_loadable_fine_bundle(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    out = tmp_path / "fine"
    log = train_fine(FineTrainConfig(out=out, seed=3, cases=1, iterations=2, threads=1, cache=tmp_path / "cache"))
    assert log["iterations_done"] == 2
    bundle = load_bundle(out, torch.device("cpu"))
    assert bundle.fine_spacing_mm == 1.25
    assert bundle.class_names == ("background", "vertebral_body", "disc", "posterior_elements", "rib")
