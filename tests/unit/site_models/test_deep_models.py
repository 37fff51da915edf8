"""Deep models (Peng 2023 DenseNet, Wang 2024 residual U-Net regressor): one tiny epoch on CPU, save / load."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from service.offline.cohort.deep_models import (
    DeepOptions,
    crop_from_volume,
    load_deep_model,
    synthetic_crop,
    train_deep_model,
)
from service.offline.cohort.synthetic import synthetic_rows
from service.site_models.cohort import CohortRow

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

TINY = DeepOptions(epochs=1, crop_voxels=16, batch_size=8, device="cpu")


@pytest.fixture(scope="module")
def rows() -> list[CohortRow]:
    return [r for r in synthetic_rows(40, seed=5) if r.split == "train"][:16]


def test_synthetic_crop_has_the_requested_roi_mean() -> None:
    crop = synthetic_crop(123.0, np.random.default_rng(0), 24)
    assert crop.shape == (24, 24, 24)
    c = (np.arange(24) - 11.5)
    x, y = np.meshgrid(c, c, indexing="ij")
    centre = (np.sqrt(x**2 + (y / 0.8) ** 2) <= 4.0)
    assert abs(float(crop[centre, :].mean()) - 123.0) < 15.0
    assert crop.max() > 400  # cortical shell


def test_crop_from_volume_samples_around_the_centre() -> None:
    class Volume:  # the two members crop_from_volume uses of CTVolume
        hu = np.zeros((40, 40, 40), dtype=np.float32)
        affine = np.diag([0.5, 0.5, 2.0, 1.0])

        def lps_to_index(self, lps: np.ndarray) -> np.ndarray:
            inv = np.linalg.inv(self.affine)
            return lps @ inv[:3, :3].T + inv[:3, 3]

    v = Volume()
    v.hu[16:25, 16:25, 19:22] = 1000.0  # a block centred at LPS (10, 10, 40) mm: +-2 mm in L/P, +-2 mm in S
    crop = crop_from_volume(v, (10.0, 10.0, 40.0), 8)
    assert crop.shape == (8, 8, 8)
    assert crop[3:5, 3:5, 3:5].min() == pytest.approx(1000.0)  # centre of the crop is the block
    assert crop[0, 0, 0] == pytest.approx(0.0)  # 3.5 mm away in every axis: outside the block
    outside = crop_from_volume(v, (500.0, 0.0, 0.0), 8)
    assert np.all(outside == -1000.0)


@pytest.mark.parametrize(("target", "architecture"), [("3class", "densenet"), ("bmd", "densenet"),
                                                      ("bmd", "resunet")])
def test_one_tiny_epoch_trains_saves_and_reloads(tmp_path: Path, rows: list[CohortRow], target: str,
                                                 architecture: str) -> None:
    model = train_deep_model(target, architecture, rows, options=TINY, seed=0, version="t")
    pred, kept = model.predict_rows(rows)
    assert len(kept) == len(rows)
    if target == "3class":
        assert pred.shape == (len(rows), 3)
        np.testing.assert_allclose(pred.sum(axis=1), 1.0, atol=1e-5)
        assert model.meta["loss"].startswith("focal")
    else:
        assert pred.shape == (len(rows),) and np.all(np.isfinite(pred))
        assert model.meta["loss"].startswith("MSE")
    assert len(model.meta["loss_history"]) == 1 and np.isfinite(model.meta["loss_history"][0])
    folder = model.save(tmp_path / "m")
    loaded = load_deep_model(folder, device="cpu")
    np.testing.assert_allclose(loaded.predict_rows(rows)[0], pred, rtol=1e-4, atol=1e-4)
    # same seed, same model
    again = train_deep_model(target, architecture, rows, options=TINY, seed=0, version="t")
    np.testing.assert_allclose(again.predict_rows(rows)[0], pred, rtol=1e-4, atol=1e-4)


def test_deep_options_are_validated() -> None:
    with pytest.raises(ValueError, match="crop_voxels"):
        DeepOptions(crop_voxels=10)
    with pytest.raises(ValueError, match="models"):
        DeepOptions(models=(("3class", "vit"),))
