"""Evaluation metrics on hand-made masks and label resampling through affines."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from service.domain.levels import VertebraLevel as V
from service.domain.segmentation import LabelledVertebra, SpineSegmentation
from service.domain.volume import CTVolume
from service.offline.evaluation.segmentation import (
    Reference,
    _reference_centroids,
    dice,
    evaluate_case,
    identification,
    labels_on_ct_grid,
)


def test_dice_of_hand_made_masks() -> None:
    a = np.zeros((10, 10, 10), dtype=bool)
    b = np.zeros_like(a)
    a[2:6, 2:6, 2:6] = True  # 64 voxels
    b[4:8, 2:6, 2:6] = True  # 64 voxels, 32 shared
    assert dice(a, b) == pytest.approx(0.5)
    assert dice(a, a) == 1.0
    assert dice(a, np.zeros_like(a)) == 0.0


def test_identification_verse_rule() -> None:
    ref = {19: np.array([0.0, 0.0, 0.0]), 20: np.array([0.0, 0.0, -30.0]), 21: np.array([0.0, 0.0, -60.0])}
    pred = {
        19: np.array([0.0, 0.0, 5.0]),  # 5 mm off: identified
        20: np.array([0.0, 0.0, -50.0]),  # 20 mm from own, 10 mm from L2: not identified
        21: np.array([0.0, 30.0, -60.0]),  # 30 mm off: not identified
    }
    out = identification(pred, ref, [19, 20, 21])
    assert out == {19: True, 20: False, 21: False}
    assert identification({}, ref, [19]) == {19: False}


def test_evaluate_case_counts_uncertain_and_wrong() -> None:
    shape = (20, 20, 30)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    ref_lab = np.zeros(shape, dtype=np.int16)
    ref_lab[5:15, 5:15, 2:12] = int(V.L1)
    ref_lab[5:15, 5:15, 15:25] = int(V.T12)
    pred_lab = ref_lab.copy()
    ref = Reference(ref_lab, "test")
    vol = CTVolume(hu=np.zeros(shape, dtype=np.float32), affine_lps=affine)
    _reference_centroids(ref, vol)
    cent = {v: tuple(float(c) for c in vol.index_to_lps(np.argwhere(pred_lab == v).mean(axis=0)))
            for v in (int(V.L1), int(V.T12))}
    seg = SpineSegmentation(body_labels=pred_lab, posterior_mask=None, vertebrae=(
        LabelledVertebra(V.T12, cent[int(V.T12)]),
        LabelledVertebra(V.L1, cent[int(V.L1)], level_uncertain=True, uncertainty_reason="test")),
        model_name="t", model_version="0")
    r = evaluate_case(seg, ref)
    assert r["identification_rate"] == 1.0
    assert r["mean_dice_fully_visible"] == pytest.approx(1.0)
    assert r["per_level"]["L1"]["uncertain"] is True
    # swap the names: both wrong and confident
    swapped = np.where(pred_lab == int(V.L1), int(V.T12), np.where(pred_lab == int(V.T12), int(V.L1), 0))
    seg2 = SpineSegmentation(body_labels=swapped.astype(np.int16), posterior_mask=None, vertebrae=(
        LabelledVertebra(V.T12, cent[int(V.L1)]), LabelledVertebra(V.L1, cent[int(V.T12)])),
        model_name="t", model_version="0")
    r2 = evaluate_case(seg2, ref)
    assert r2["identification_rate"] == 0.0
    assert sorted(r2["wrong_and_confident"]) == ["L1", "T12"]


def test_labels_follow_affines(tmp_path: Path) -> None:
    shape = (6, 7, 8)
    lab = np.zeros(shape, dtype=np.int16)
    lab[1, 2, 3] = 5
    ras = np.diag([-1.5, 1.5, 2.0, 1.0])  # x flipped in RAS = +L step in LPS; y: +A step = -P
    ras[:3, 3] = (10.0, -5.0, 0.0)
    nib.save(nib.Nifti1Image(lab, ras), str(tmp_path / "l.nii.gz"))
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ras
    # CT grid: same voxels with j reversed
    flip_j = np.eye(4)
    flip_j[1, 1] = -1
    flip_j[1, 3] = shape[1] - 1
    vol = CTVolume(hu=np.zeros(shape, dtype=np.float32), affine_lps=lps @ flip_j)
    out = labels_on_ct_grid(tmp_path / "l.nii.gz", vol)
    assert out[1, shape[1] - 1 - 2, 3] == 5
    assert int((out == 5).sum()) == 1
