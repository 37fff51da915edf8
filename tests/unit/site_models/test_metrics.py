"""Metrics on small examples checked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from service.offline.cohort.metrics import (
    bland_altman,
    classification_metrics,
    delong_auc,
    macro_ovr_auc,
    paired_auc_difference,
    paired_mae_difference,
    regression_metrics,
)


def test_binary_auc_and_delong_ci_by_hand() -> None:
    # positives 0.35, 0.8; negatives 0.1, 0.4. Pairs (pos > neg): (0.35>0.1) (0.8>0.1) (0.8>0.4) = 3 of 4.
    y = np.array([0, 0, 1, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8])
    res = delong_auc(y, s)
    assert res.auc == pytest.approx(0.75)
    # placement values: V10 (per positive) = [1/2, 1]; V01 (per negative) = [1, 1/2]
    # var = var(V10)/2 + var(V01)/2 = 0.125/2 + 0.125/2 = 0.125 -> half-width 1.96 * sqrt(0.125) -> clipped
    half = 1.959963984540054 * math.sqrt(0.125)
    assert res.ci_low == pytest.approx(max(0.0, 0.75 - half))
    assert res.ci_high == pytest.approx(1.0)
    assert res.method == "delong"


def test_binary_auc_ties_count_half() -> None:
    y = np.array([0, 1])
    s = np.array([0.5, 0.5])
    assert delong_auc(y, s).auc == pytest.approx(0.5)


def test_delong_matches_sklearn_and_ci_brackets() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    s = y * 1.0 + rng.normal(0, 1.2, 300)
    res = delong_auc(y, s)
    assert res.auc == pytest.approx(roc_auc_score(y, s))
    assert res.ci_low < res.auc < res.ci_high
    assert 0.05 < res.ci_high - res.ci_low < 0.2


def test_macro_ovr_auc_by_hand() -> None:
    # three classes, one case each; class c has the highest probability on its own case -> every OvR AUC = 1
    y = np.array([0, 1, 2, 0, 1, 2])
    p = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8],
                  [0.5, 0.3, 0.2], [0.2, 0.5, 0.3], [0.4, 0.1, 0.5]])
    res, per_class = macro_ovr_auc(y, p, 3, resamples=200)
    assert per_class == [pytest.approx(1.0)] * 3
    assert res.auc == pytest.approx(1.0)
    p2 = p.copy()
    p2[3, 0] = 0.05  # class-0 positive now below negatives 0.1, 0.1, 0.2, 0.4 -> its wins: 0 of 4
    res2, per2 = macro_ovr_auc(y, p2, 3, resamples=200)
    # class 0: positives 0.8 (beats 4 of 4), 0.05 (beats 0 of 4) -> 4/8 = 0.5
    assert per2[0] == pytest.approx(0.5)
    assert res2.auc == pytest.approx((0.5 + 1 + 1) / 3)
    # rows of p sum to 1, so scikit-learn accepts them: same macro one-vs-rest AUC
    assert res.auc == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))


def test_macro_bootstrap_ci_is_deterministic_and_brackets() -> None:
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 150)
    p = rng.dirichlet([1, 1, 1], 150)
    p[np.arange(150), y] += 0.6
    p /= p.sum(1, keepdims=True)
    a, _ = macro_ovr_auc(y, p, 3, resamples=300, seed=5)
    b, _ = macro_ovr_auc(y, p, 3, resamples=300, seed=5)
    assert a == b
    assert a.auc == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))
    assert a.ci_low < a.auc < a.ci_high
    assert a.method == "bootstrap"


def test_macro_auc_undefined_when_class_missing() -> None:
    y = np.array([0, 0, 1, 1])
    p = np.full((4, 3), 1 / 3)
    res, per = macro_ovr_auc(y, p, 3, resamples=10)
    assert res.auc is None and per[2] is None


def test_classification_counts_by_hand() -> None:
    # 3 classes; truth and prediction chosen so every count is known
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 1])
    pred = np.array([0, 0, 1, 1, 2, 2, 2, 2, 0, 1])
    proba = np.eye(3)[pred] * 0.8 + 0.1
    m = classification_metrics(y, proba, ("normal", "osteopenia", "osteoporosis"), resamples=50)
    assert m.confusion == ((2, 1, 0), (0, 2, 1), (1, 0, 3))
    assert m.accuracy == pytest.approx(7 / 10)
    c0, c1, c2 = m.per_class
    assert c0.sensitivity == pytest.approx(2 / 3) and c0.specificity == pytest.approx(6 / 7)
    assert c0.precision == pytest.approx(2 / 3)
    assert c1.sensitivity == pytest.approx(2 / 3) and c1.specificity == pytest.approx(6 / 7)
    assert c2.sensitivity == pytest.approx(3 / 4) and c2.specificity == pytest.approx(5 / 6)
    assert c2.precision == pytest.approx(3 / 4) and c2.f1 == pytest.approx(3 / 4)
    assert m.sensitivity == pytest.approx((2 / 3 + 2 / 3 + 3 / 4) / 3)
    assert m.specificity == pytest.approx((6 / 7 + 6 / 7 + 5 / 6) / 3)
    assert m.averaging == "macro"


def test_binary_classification_headline_is_positive_class() -> None:
    y = np.array([0, 0, 0, 1, 1])
    p1 = np.array([0.1, 0.6, 0.2, 0.9, 0.4])
    proba = np.stack([1 - p1, p1], axis=1)
    m = classification_metrics(y, proba, ("not_osteoporosis", "osteoporosis"), positive_index=1)
    # predicted positive: 0.6 (false), 0.9 (true) -> sens 1/2, spec 2/3, precision 1/2
    assert m.sensitivity == pytest.approx(0.5)
    assert m.specificity == pytest.approx(2 / 3)
    assert m.precision == pytest.approx(0.5)
    assert m.f1 == pytest.approx(0.5)
    # AUC: positives 0.9 (beats 3), 0.4 (beats 0.1, 0.2) -> 5/6
    assert m.auc.auc == pytest.approx(5 / 6)
    assert m.auc.method == "delong"


def test_bland_altman_by_hand() -> None:
    ref = np.array([100.0, 100.0, 100.0])
    pred = np.array([101.0, 102.0, 103.0])  # differences 1, 2, 3: mean 2, SD 1
    ba = bland_altman(pred, ref)
    assert ba.bias == pytest.approx(2.0)
    assert ba.sd == pytest.approx(1.0)
    assert ba.loa_low == pytest.approx(2.0 - 1.96)
    assert ba.loa_high == pytest.approx(2.0 + 1.96)


def test_regression_metrics_by_hand() -> None:
    ref = np.array([1.0, 2.0, 3.0, 4.0])
    pred = np.array([1.0, 2.0, 3.0, 6.0])  # errors 0, 0, 0, 2
    r = regression_metrics(pred, ref)
    assert r.mae == pytest.approx(0.5)
    assert r.rmse == pytest.approx(1.0)
    # R2 = 1 - SSres/SStot = 1 - 4/5
    assert r.r2 == pytest.approx(0.2)
    # explained variance = 1 - var(err)/var(ref) = 1 - 0.75/1.25
    assert r.explained_variance == pytest.approx(0.4)
    assert r.pearson_r == pytest.approx(np.corrcoef(pred, ref)[0, 1])
    assert 0 < r.pearson_p < 0.2
    assert r.bland_altman.bias == pytest.approx(0.5)


def test_paired_difference_of_identical_models_is_zero() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 60)
    p = rng.dirichlet([1, 1, 1], 60)
    d = paired_auc_difference(y, p, p, resamples=100)
    assert d.difference == 0.0 and d.ci_low == 0.0 and d.ci_high == 0.0
    ref = rng.normal(100, 20, 60)
    better = ref + rng.normal(0, 1, 60)
    worse = ref + rng.normal(0, 10, 60)
    m = paired_mae_difference(ref, better, worse, resamples=200)
    assert m.difference < 0 and m.ci_high < 0


def test_input_shape_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match="proba"):
        classification_metrics(np.array([0, 1]), np.zeros((2, 3)), ("a", "b"))
    with pytest.raises(ValueError, match="predicted and reference"):
        regression_metrics(np.zeros(3), np.zeros(4))
