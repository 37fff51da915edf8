"""ROC AUC with confidence intervals.

Binary: the usual ROC AUC of the positive class, 95 % CI by DeLong's method (DeLong 1988; the fast algorithm of
Sun & Xu 2014). Several classes: macro one-vs-rest AUC (unweighted mean of the per-class one-vs-rest AUCs, as
``sklearn.metrics.roc_auc_score(multi_class="ovr", average="macro")``), 95 % CI by a stratified percentile
bootstrap (``BOOTSTRAP_RESAMPLES`` resamples, fixed seed), because DeLong gives no closed form for the macro average.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

BOOTSTRAP_RESAMPLES = 1000
"""Resamples for the bootstrap CI of the macro one-vs-rest AUC."""
BOOTSTRAP_SEED = 20250320
CI_LEVEL = 0.95


@dataclass(frozen=True)
class AucResult:
    auc: float | None
    ci_low: float | None
    ci_high: float | None
    method: str
    """'delong' or 'bootstrap' (or 'undefined' when a class is absent)."""


def midrank_auc(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Rank (Mann-Whitney) AUC along the last axis; ties count one half. ``scores``, ``positive``: (..., n)."""
    ranks = stats.rankdata(scores, axis=-1)
    n_pos = positive.sum(axis=-1)
    n_neg = positive.shape[-1] - n_pos
    rank_sum = (ranks * positive).sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def delong_auc(y_true: np.ndarray, scores: np.ndarray, ci_level: float = CI_LEVEL) -> AucResult:
    """Binary AUC with DeLong's variance and a normal CI clipped to [0, 1]. ``y_true`` in {0, 1}."""
    y = np.asarray(y_true).astype(int)
    s = np.asarray(scores, dtype=float)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError(f"y_true and scores must be 1-D of equal length, got {y.shape} and {s.shape}")
    pos, neg = s[y == 1], s[y == 0]
    m, n = len(pos), len(neg)
    if m == 0 or n == 0:
        return AucResult(None, None, None, "undefined")
    # Sun & Xu 2014: placement values from mid-ranks
    tx = stats.rankdata(pos)
    ty = stats.rankdata(neg)
    tz = stats.rankdata(np.concatenate([pos, neg]))
    auc = float((tz[:m].sum() - m * (m + 1) / 2.0) / (m * n))
    v10 = (tz[:m] - tx) / n  # for each positive: fraction of negatives below it
    v01 = 1.0 - (tz[m:] - ty) / m  # for each negative: fraction of positives above it
    s10 = float(np.var(v10, ddof=1)) if m > 1 else 0.0
    s01 = float(np.var(v01, ddof=1)) if n > 1 else 0.0
    var = s10 / m + s01 / n
    z = stats.norm.ppf(0.5 + ci_level / 2.0)
    half = z * math.sqrt(max(var, 0.0))
    return AucResult(auc, float(max(0.0, auc - half)), float(min(1.0, auc + half)), "delong")


def macro_ovr_auc(
    y_true: np.ndarray,
    proba: np.ndarray,
    n_classes: int,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    ci_level: float = CI_LEVEL,
) -> tuple[AucResult, list[float | None]]:
    """Macro one-vs-rest AUC (classes 0..n_classes-1) with a stratified percentile bootstrap CI.

    Returns the result and the per-class one-vs-rest AUCs. Classes absent from ``y_true`` make the macro AUC
    undefined (None), as in scikit-learn.
    """
    y = np.asarray(y_true).astype(int)
    p = np.asarray(proba, dtype=float)
    if p.ndim != 2 or p.shape != (len(y), n_classes):
        raise ValueError(f"proba must have shape ({len(y)}, {n_classes}), got {p.shape}")
    onehot = (y[:, None] == np.arange(n_classes)[None, :]).astype(float)
    per_class = [midrank_auc(p[:, c], onehot[:, c]) for c in range(n_classes)]
    per_class_f: list[float | None] = [None if not np.isfinite(a) else float(a) for a in per_class]
    if any(a is None for a in per_class_f):
        return AucResult(None, None, None, "undefined"), per_class_f
    auc = float(np.mean([a for a in per_class_f if a is not None]))
    rng = np.random.default_rng(seed)
    # stratified resampling keeps every class present in every resample
    idx_parts = []
    for c in range(n_classes):
        members = np.flatnonzero(y == c)
        idx_parts.append(members[rng.integers(0, len(members), size=(resamples, len(members)))])
    idx = np.concatenate(idx_parts, axis=1)  # (resamples, n)
    boot = np.zeros(resamples)
    for c in range(n_classes):
        boot += midrank_auc(p[idx, c], onehot[idx, c])
    boot /= n_classes
    alpha = (1.0 - ci_level) / 2.0
    low, high = np.quantile(boot, [alpha, 1.0 - alpha])
    return AucResult(auc, float(low), float(high), "bootstrap"), per_class_f
