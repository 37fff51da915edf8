"""Evaluation metrics for site models, computed with scikit-learn and scipy.

Classification (as in Xiong 2025 Tables 2/4 and Peng 2023 Table 1):
    * AUC (auc.py). Binary: the usual ROC AUC of the positive class (osteoporosis), 95 % CI by DeLong's method
      (DeLong 1988; the fast algorithm of Sun & Xu 2014). Three classes: macro one-vs-rest AUC (unweighted
      mean of the per-class one-vs-rest AUCs, ``sklearn.metrics.roc_auc_score(multi_class="ovr",
      average="macro")``), 95 % CI by a stratified percentile bootstrap (``BOOTSTRAP_RESAMPLES`` resamples,
      fixed seed), because DeLong gives no closed form for the macro average.
    * sensitivity (= recall), specificity, precision, F1: per class one-vs-rest and their macro mean;
      accuracy: overall fraction correct. For a binary task the headline values are those of the positive class.
Regression (Xiong 2025 Tables 3/5): MAE, RMSE, explained variance, R², Pearson r with its two-sided p-value,
Bland–Altman bias (mean of predicted − reference) and 95 % limits of agreement (bias ± 1.96 SD of the
differences, SD with ddof = 1; Bland & Altman 1986).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from service.offline.cohort.auc import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    CI_LEVEL,
    AucResult,
    delong_auc,
    macro_ovr_auc,
    midrank_auc,
)

BLAND_ALTMAN_Z = 1.96
"""95 % limits of agreement (Bland & Altman 1986)."""


@dataclass(frozen=True)
class ClassMetrics:
    label: str
    support: int
    sensitivity: float | None
    specificity: float | None
    precision: float | None
    f1: float | None
    auc: float | None


@dataclass(frozen=True)
class ClassificationMetrics:
    n: int
    labels: tuple[str, ...]
    auc: AucResult
    sensitivity: float | None
    specificity: float | None
    accuracy: float
    precision: float | None
    f1: float | None
    per_class: tuple[ClassMetrics, ...]
    confusion: tuple[tuple[int, ...], ...]
    """Rows: true label, columns: predicted label, in ``labels`` order."""
    averaging: str
    """'macro' (three classes) or 'positive_class' (binary)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "labels": list(self.labels),
            "auc": self.auc.auc,
            "auc_ci_low": self.auc.ci_low,
            "auc_ci_high": self.auc.ci_high,
            "auc_ci_method": self.auc.method,
            "sensitivity": self.sensitivity,
            "specificity": self.specificity,
            "accuracy": self.accuracy,
            "precision": self.precision,
            "f1": self.f1,
            "averaging": self.averaging,
            "per_class": [c.__dict__ for c in self.per_class],
            "confusion": [list(r) for r in self.confusion],
        }


@dataclass(frozen=True)
class BlandAltman:
    bias: float
    sd: float
    loa_low: float
    loa_high: float


@dataclass(frozen=True)
class RegressionMetrics:
    n: int
    mae: float
    rmse: float
    explained_variance: float | None
    r2: float | None
    pearson_r: float | None
    pearson_p: float | None
    bland_altman: BlandAltman
    extra: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "mae": self.mae,
            "rmse": self.rmse,
            "explained_variance": self.explained_variance,
            "r2": self.r2,
            "pearson_r": self.pearson_r,
            "pearson_p": self.pearson_p,
            "ba_bias": self.bland_altman.bias,
            "ba_sd": self.bland_altman.sd,
            "ba_loa_low": self.bland_altman.loa_low,
            "ba_loa_high": self.bland_altman.loa_high,
        }


# ---------------------------------------------------------------- classification


def _safe_div(a: float, b: float) -> float | None:
    return None if b == 0 else float(a) / float(b)


def _mean_or_none(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return None if len(vals) != len(values) or not vals else float(np.mean(vals))


def classification_metrics(
    y_true: np.ndarray,
    proba: np.ndarray,
    labels: tuple[str, ...],
    *,
    positive_index: int | None = None,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> ClassificationMetrics:
    """Metrics of class-probability predictions.

    ``y_true``: integer class indices into ``labels``; ``proba``: (n, len(labels)) class probabilities; the
    predicted class is the arg-max. ``positive_index`` set (binary task): headline sensitivity, specificity,
    precision and F1 are those of that class and the AUC is DeLong's; otherwise macro averages and the
    bootstrap macro one-vs-rest AUC.
    """
    from sklearn.metrics import confusion_matrix  # noqa: PLC0415  # heavy: loaded only when metrics are computed

    y = np.asarray(y_true).astype(int)
    p = np.asarray(proba, dtype=float)
    k = len(labels)
    if p.shape != (len(y), k):
        raise ValueError(f"proba must have shape ({len(y)}, {k}), got {p.shape}")
    if len(y) == 0:
        raise ValueError("y_true must not be empty")
    if y.min() < 0 or y.max() >= k:
        raise ValueError(f"y_true values must be within 0..{k - 1}")
    pred = p.argmax(axis=1)
    cm = confusion_matrix(y, pred, labels=list(range(k)))
    total = cm.sum()
    per_class: list[ClassMetrics] = []
    if positive_index is None:
        auc_res, class_aucs = macro_ovr_auc(y, p, k, resamples=resamples, seed=seed)
    else:
        if k != 2:
            raise ValueError(f"positive_index needs two labels, got {labels}")
        auc_res = delong_auc((y == positive_index).astype(int), p[:, positive_index])
        other = 1 - positive_index
        other_auc = None if auc_res.auc is None else auc_res.auc  # AUC is symmetric for two classes
        class_aucs = [None, None]
        class_aucs[positive_index] = auc_res.auc
        class_aucs[other] = other_auc
    for c in range(k):
        tp = cm[c, c]
        fn = cm[c, :].sum() - tp
        fp = cm[:, c].sum() - tp
        tn = total - tp - fn - fp
        sens = _safe_div(tp, tp + fn)
        spec = _safe_div(tn, tn + fp)
        prec = _safe_div(tp, tp + fp)
        f1 = None if sens is None or prec is None else (0.0 if sens + prec == 0 else 2 * sens * prec / (sens + prec))
        per_class.append(ClassMetrics(labels[c], int(tp + fn), sens, spec, prec, f1, class_aucs[c]))
    if positive_index is None:
        head = {
            "sensitivity": _mean_or_none([c.sensitivity for c in per_class]),
            "specificity": _mean_or_none([c.specificity for c in per_class]),
            "precision": _mean_or_none([c.precision for c in per_class]),
            "f1": _mean_or_none([c.f1 for c in per_class]),
        }
        averaging = "macro"
    else:
        pc = per_class[positive_index]
        head = {"sensitivity": pc.sensitivity, "specificity": pc.specificity, "precision": pc.precision,
                "f1": pc.f1}
        averaging = "positive_class"
    return ClassificationMetrics(
        n=len(y),
        labels=tuple(labels),
        auc=auc_res,
        accuracy=float(np.trace(cm) / total),
        per_class=tuple(per_class),
        confusion=tuple(tuple(int(v) for v in row) for row in cm),
        averaging=averaging,
        **head,
    )


# ---------------------------------------------------------------- regression


def bland_altman(predicted: np.ndarray, reference: np.ndarray) -> BlandAltman:
    """Bias = mean(predicted - reference); limits = bias ± 1.96 SD (ddof = 1)."""
    d = np.asarray(predicted, dtype=float) - np.asarray(reference, dtype=float)
    if d.ndim != 1 or len(d) < 2:
        raise ValueError(f"bland_altman needs at least two paired values, got shape {d.shape}")
    bias = float(d.mean())
    sd = float(d.std(ddof=1))
    return BlandAltman(bias, sd, bias - BLAND_ALTMAN_Z * sd, bias + BLAND_ALTMAN_Z * sd)


def regression_metrics(predicted: np.ndarray, reference: np.ndarray) -> RegressionMetrics:
    # heavy: scikit-learn is loaded only when metrics are computed, not by the modules that read the constants
    from sklearn.metrics import explained_variance_score, mean_absolute_error, mean_squared_error, r2_score  # noqa: PLC0415

    pred = np.asarray(predicted, dtype=float)
    ref = np.asarray(reference, dtype=float)
    if pred.shape != ref.shape or pred.ndim != 1:
        raise ValueError(f"predicted and reference must be 1-D of equal length, got {pred.shape}, {ref.shape}")
    if len(pred) < 2:
        raise ValueError("regression metrics need at least two values")
    constant = bool(np.all(ref == ref[0])) or bool(np.all(pred == pred[0]))
    r: float | None
    pval: float | None
    if constant:
        r, pval = None, None
    else:
        res = stats.pearsonr(pred, ref)
        r, pval = float(res.statistic), float(res.pvalue)
    ref_constant = bool(np.all(ref == ref[0]))
    return RegressionMetrics(
        n=len(pred),
        mae=float(mean_absolute_error(ref, pred)),
        rmse=float(math.sqrt(mean_squared_error(ref, pred))),
        explained_variance=None if ref_constant else float(explained_variance_score(ref, pred)),
        r2=None if ref_constant else float(r2_score(ref, pred)),
        pearson_r=r,
        pearson_p=pval,
        bland_altman=bland_altman(pred, ref),
    )


# ---------------------------------------------------------------- paired comparison


@dataclass(frozen=True)
class PairedDifference:
    """``a - b`` of one metric on the same cases, with a paired percentile bootstrap 95 % CI."""

    metric: str
    a: float
    b: float
    difference: float
    ci_low: float
    ci_high: float
    resamples: int

    @property
    def a_not_significantly_worse(self) -> bool:
        """For a higher-is-better metric: the CI of a - b reaches 0 or above."""
        return self.ci_high >= 0.0


def _boot_indices(strata: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    parts = []
    for c in np.unique(strata):
        members = np.flatnonzero(strata == c)
        parts.append(members[rng.integers(0, len(members), size=(resamples, len(members)))])
    return np.concatenate(parts, axis=1)


def _auc_batch(y: np.ndarray, proba: np.ndarray, idx: np.ndarray, positive_index: int | None) -> np.ndarray:
    """AUC (macro OvR, or binary of ``positive_index``) for every row of resample indices ``idx``."""
    k = proba.shape[1]
    classes = [positive_index] if positive_index is not None else list(range(k))
    total = np.zeros(idx.shape[0])
    for c in classes:
        total += midrank_auc(proba[idx, c], (y[idx] == c).astype(float))
    return total / len(classes)


def paired_auc_difference(
    y_true: np.ndarray, proba_a: np.ndarray, proba_b: np.ndarray, *, positive_index: int | None = None,
    resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED, ci_level: float = CI_LEVEL,
) -> PairedDifference:
    """AUC(a) - AUC(b) on the same cases; stratified paired bootstrap (both models see the same resamples)."""
    y = np.asarray(y_true).astype(int)
    pa, pb = np.asarray(proba_a, dtype=float), np.asarray(proba_b, dtype=float)
    if pa.shape != pb.shape or pa.shape[0] != len(y):
        raise ValueError(f"proba_a {pa.shape} and proba_b {pb.shape} must match y_true ({len(y)})")
    full = np.arange(len(y))[None, :]
    a = float(_auc_batch(y, pa, full, positive_index)[0])
    b = float(_auc_batch(y, pb, full, positive_index)[0])
    idx = _boot_indices(y, resamples, seed)
    diff = _auc_batch(y, pa, idx, positive_index) - _auc_batch(y, pb, idx, positive_index)
    alpha = (1.0 - ci_level) / 2.0
    low, high = np.quantile(diff, [alpha, 1.0 - alpha])
    return PairedDifference("auc", a, b, a - b, float(low), float(high), resamples)


def paired_mae_difference(
    reference: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, *, resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED, ci_level: float = CI_LEVEL,
) -> PairedDifference:
    """MAE(a) - MAE(b) on the same cases with a paired percentile bootstrap CI (lower is better)."""
    ref = np.asarray(reference, dtype=float)
    ea = np.abs(np.asarray(pred_a, dtype=float) - ref)
    eb = np.abs(np.asarray(pred_b, dtype=float) - ref)
    idx = _boot_indices(np.zeros(len(ref), dtype=int), resamples, seed)
    diff = ea[idx].mean(axis=1) - eb[idx].mean(axis=1)
    alpha = (1.0 - ci_level) / 2.0
    low, high = np.quantile(diff, [alpha, 1.0 - alpha])
    return PairedDifference("mae", float(ea.mean()), float(eb.mean()), float(ea.mean() - eb.mean()), float(low),
                            float(high), resamples)
