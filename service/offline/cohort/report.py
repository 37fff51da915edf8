"""HTML evaluation report: the tables of Xiong 2025 (Tables 1-5) for every model and split, ROC curves,
predicted-vs-QCT scatter plots and Bland-Altman plots (PNG, matplotlib Agg), and metrics.json.

A cohort with any synthetic row gets a "SYNTHETIC DATA" banner at the top of the page and in every figure title.
"""

from __future__ import annotations

import html
import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

from service.domain.guidelines import NORMAL_ABOVE_MG_CM3, OSTEOPOROSIS_BELOW_MG_CM3
from service.offline.cohort.evaluate import ModelEvaluation, metrics_document
from service.offline.cohort.metrics import BOOTSTRAP_RESAMPLES
from service.site_models.cohort import Cohort

logger = logging.getLogger(__name__)

FIGURE_DPI = 72
PLOT_SPLITS: tuple[str, ...] = ("validation", "test")
REGION_TITLES = {"chest": "Chest (T5-T10)", "abdomen": "Abdomen (T12-L2)",
                 "chest_calibrated": "Chest calibrated (T5-T10-Cal)"}
SYNTHETIC_BANNER = "SYNTHETIC DATA"


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if not np.isfinite(value):
            return "–"
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def _p(value: float | None) -> str:
    if value is None:
        return "–"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend: the report writes PNG files and never opens a window."""
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 - must follow use("Agg"); pyplot is loaded only to draw figures

    return plt


def _panels(n: int, height: float) -> tuple[Any, list[Any]]:
    plt = _pyplot()
    ncols = min(3, n)
    nrows = (n + ncols - 1) // ncols
    fig, axs = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, height * nrows), squeeze=False)
    flat = list(axs.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _categories_text() -> str:
    """The guideline cut-offs as the report states them (HTML-escaped)."""
    low, high = f"{OSTEOPOROSIS_BELOW_MG_CM3:g}", f"{NORMAL_ABOVE_MG_CM3:g}"
    return f"&lt;{low} osteoporosis, {low}-{high} osteopenia, &gt;{high} normal"


def _figure_title(text: str, synthetic: bool) -> str:
    return f"{SYNTHETIC_BANNER} – {text}" if synthetic else text


def _plot_roc(evals: Sequence[ModelEvaluation], target: str, split: str, out: Path, synthetic: bool) -> str | None:
    from sklearn.metrics import roc_curve  # noqa: PLC0415 - sklearn is heavy: loaded only to draw ROC curves

    plt = _pyplot()

    chosen = [e for e in evals if e.target == target and e.split == split and e.classification is not None
              and e.kind == "feature" and e.algorithm == "bdt"]
    chosen += [e for e in evals if e.target == target and e.split == split and e.classification is not None
               and e.kind == "deep"]
    if not chosen:
        return None
    if target == "binary":
        fig, axes = plt.subplots(1, 1, figsize=(5, 5))
        ax = axes
        for e in chosen:
            fpr, tpr, _ = roc_curve(e.y_true, e.prediction[:, 1])
            ax.plot(fpr, tpr, label=f"{e.name} AUC {e.classification.auc.auc:.3f}")  # type: ignore[union-attr]
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set_xlabel("1 - specificity")
        ax.set_ylabel("sensitivity")
        ax.legend(fontsize=7, loc="lower right")
        ax.set_title(_figure_title(f"ROC osteoporosis vs not, {split}", synthetic), fontsize=9)
    else:
        fig, axes_list = _panels(len(chosen), 4.2)
        for ax, e in zip(axes_list, chosen, strict=True):
            for c, label in enumerate(e.labels):
                y = (e.y_true == c).astype(int)
                if 0 < y.sum() < len(y):
                    fpr, tpr, _ = roc_curve(y, e.prediction[:, c])
                    auc = e.classification.per_class[c].auc  # type: ignore[union-attr]
                    ax.plot(fpr, tpr, label=f"{label} AUC {auc:.3f}")
            ax.plot([0, 1], [0, 1], "k:", lw=0.8)
            ax.set_xlabel("1 - specificity")
            ax.set_ylabel("sensitivity")
            ax.legend(fontsize=7, loc="lower right")
            ax.set_title(f"{e.name}\nmacro AUC {e.classification.auc.auc:.3f}", fontsize=8)  # type: ignore[union-attr]
        fig.suptitle(_figure_title(f"ROC one-vs-rest, 3 classes, {split}", synthetic), fontsize=9)
    fig.tight_layout()
    name = f"roc_{target}_{split}.png"
    fig.savefig(out / name, dpi=FIGURE_DPI)
    plt.close(fig)
    return name


def _regression_choice(evals: Sequence[ModelEvaluation], split: str) -> list[ModelEvaluation]:
    chosen = [e for e in evals if e.split == split and e.regression is not None and e.kind == "feature"
              and e.algorithm == "sgd"]
    chosen += [e for e in evals if e.split == split and e.regression is not None and e.kind == "deep"]
    return chosen


def _plot_scatter(evals: Sequence[ModelEvaluation], split: str, out: Path, synthetic: bool) -> str | None:
    plt = _pyplot()
    chosen = _regression_choice(evals, split)
    if not chosen:
        return None
    fig, axes_list = _panels(len(chosen), 4.2)
    for ax, e in zip(axes_list, chosen, strict=True):
        r = e.regression
        ax.scatter(e.y_true, e.prediction, s=8, alpha=0.6)
        lo = float(min(e.y_true.min(), e.prediction.min()))
        hi = float(max(e.y_true.max(), e.prediction.max()))
        ax.plot([lo, hi], [lo, hi], "k:", lw=0.8)
        slope, intercept = np.polyfit(e.y_true, e.prediction, 1)
        ax.plot([lo, hi], [slope * lo + intercept, slope * hi + intercept], "r-", lw=1)
        for t in (OSTEOPOROSIS_BELOW_MG_CM3, NORMAL_ABOVE_MG_CM3):
            ax.axvline(t, color="grey", lw=0.5)
            ax.axhline(t, color="grey", lw=0.5)
        ax.set_xlabel("QCT BMD (mg/cm³)")
        ax.set_ylabel("predicted BMD (mg/cm³)")
        ax.set_title(f"{e.name}\nr = {_fmt(r.pearson_r)}, MAE {_fmt(r.mae, 2)}", fontsize=8)  # type: ignore[union-attr]
    fig.suptitle(_figure_title(f"Predicted vs QCT BMD, {split}", synthetic), fontsize=9)
    fig.tight_layout()
    name = f"scatter_{split}.png"
    fig.savefig(out / name, dpi=FIGURE_DPI)
    plt.close(fig)
    return name


def _plot_bland_altman(evals: Sequence[ModelEvaluation], split: str, out: Path, synthetic: bool) -> str | None:
    plt = _pyplot()
    chosen = _regression_choice(evals, split)
    if not chosen:
        return None
    fig, axes_list = _panels(len(chosen), 4.0)
    for ax, e in zip(axes_list, chosen, strict=True):
        ba = e.regression.bland_altman  # type: ignore[union-attr]
        mean = (e.y_true + e.prediction) / 2.0
        diff = e.prediction - e.y_true
        ax.scatter(mean, diff, s=8, alpha=0.6)
        ax.axhline(ba.bias, color="r", lw=1)
        ax.axhline(ba.loa_low, color="r", ls="--", lw=0.8)
        ax.axhline(ba.loa_high, color="r", ls="--", lw=0.8)
        ax.set_xlabel("mean of predicted and QCT (mg/cm³)")
        ax.set_ylabel("predicted − QCT (mg/cm³)")
        ax.set_title(f"{e.name}\nbias {ba.bias:.2f} (LoA {ba.loa_low:.1f} to {ba.loa_high:.1f})", fontsize=8)
    fig.suptitle(_figure_title(f"Bland–Altman, {split}", synthetic), fontsize=9)
    fig.tight_layout()
    name = f"bland_altman_{split}.png"
    fig.savefig(out / name, dpi=FIGURE_DPI)
    plt.close(fig)
    return name


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _sort_key(e: ModelEvaluation) -> tuple[int, str, str, int]:
    regions = ["chest", "abdomen", "chest_calibrated"]
    splits = ["train", "validation", "test"]
    return (regions.index(e.region) if e.region in regions else 9, e.kind, e.algorithm,
            splits.index(e.split) if e.split in splits else 9)


def _classification_section(evals: Sequence[ModelEvaluation], target: str) -> str:
    rows = []
    for e in sorted((e for e in evals if e.target == target), key=_sort_key):
        c = e.classification
        if c is None:
            continue
        auc = "–" if c.auc.auc is None else f"{c.auc.auc:.3f} ({_fmt(c.auc.ci_low)}–{_fmt(c.auc.ci_high)})"
        rows.append([html.escape(REGION_TITLES.get(e.region, e.region)), html.escape(e.split),
                     html.escape(e.algorithm.upper() + (" (deep)" if e.kind == "deep" else "")), auc,
                     _fmt(c.sensitivity), _fmt(c.specificity), _fmt(c.accuracy), _fmt(c.precision), _fmt(c.f1),
                     str(e.n) + ("" if e.n == e.n_rows else f" of {e.n_rows}")])
    return _table(["region", "split", "method", "AUC (95 % CI)", "sensitivity", "specificity", "accuracy",
                   "precision", "F1", "n"], rows)


def _per_class_section(evals: Sequence[ModelEvaluation]) -> str:
    rows = []
    for e in sorted((e for e in evals if e.target == "3class" and e.classification is not None
                     and e.split == "test" and e.algorithm in ("bdt", "densenet")), key=_sort_key):
        for pc in e.classification.per_class:  # type: ignore[union-attr]
            rows.append([html.escape(e.name), html.escape(pc.label), _fmt(pc.auc), _fmt(pc.sensitivity),
                         _fmt(pc.specificity), _fmt(pc.precision), _fmt(pc.f1), str(pc.support)])
    return _table(["model (test split)", "class", "AUC (one-vs-rest)", "sensitivity", "specificity", "precision",
                   "F1", "support"], rows)


def _regression_section(evals: Sequence[ModelEvaluation]) -> str:
    rows = []
    for e in sorted(evals, key=_sort_key):
        r = e.regression
        if r is None:
            continue
        ba = r.bland_altman
        rows.append([html.escape(REGION_TITLES.get(e.region, e.region)), html.escape(e.split),
                     html.escape(e.algorithm.upper() + (" (deep)" if e.kind == "deep" else "")), _fmt(r.mae),
                     _fmt(r.rmse), _fmt(r.explained_variance), _fmt(r.r2), _fmt(r.pearson_r), _p(r.pearson_p),
                     f"{ba.bias:.2f} ({ba.loa_low:.1f} to {ba.loa_high:.1f})",
                     str(e.n) + ("" if e.n == e.n_rows else f" of {e.n_rows}")])
    return _table(["region", "split", "method", "MAE", "RMSE", "EVS", "R²", "Pearson r", "P",
                   "Bland–Altman bias (95 % LoA)", "n"], rows)


def _cohort_section(summary: dict[str, Any]) -> str:
    rows = []
    for split, s in summary["splits"].items():
        age = f"{s['age_median']:.0f} ({s['age_p25']:.0f}, {s['age_p75']:.0f})"
        rows.append([html.escape(split), str(s["n"]), age,
                     f"{s['male']} ({100 * s['male'] / s['n']:.1f})",
                     f"{s['female']} ({100 * s['female'] / s['n']:.1f})",
                     f"{s['osteoporosis']} ({100 * s['osteoporosis'] / s['n']:.1f})",
                     f"{s['osteopenia']} ({100 * s['osteopenia'] / s['n']:.1f})",
                     f"{s['normal']} ({100 * s['normal'] / s['n']:.1f})",
                     f"{s['qct_bmd_mean']:.1f} ± {_fmt(s['qct_bmd_sd'], 1)}"])
    return _table(["split", "n", "age, median (P25, P75)", "men, n (%)", "women, n (%)", "osteoporosis, n (%)",
                   "osteopenia, n (%)", "normal, n (%)", "QCT BMD mg/cm³, mean ± SD"], rows)


def _acceptance_section(acc: dict[str, Any]) -> str:
    rows = []
    for c in acc["checks"]:
        status = "–" if c["passed"] is None else ("PASS" if c["passed"] else "FAIL")
        if "difference" in c:
            value = (f"{_fmt(c['value'])} vs chest {_fmt(c['reference'])}; difference {c['difference']:+.3f} "
                     f"(95 % CI {c['difference_ci_low']:+.3f} to {c['difference_ci_high']:+.3f}); "
                     f"point estimate {'at least as good' if c['strict'] else 'worse'}; patients predicted: "
                     f"calibrated {c['coverage']['chest_calibrated']}, chest {c['coverage']['chest']} of "
                     f"{c['coverage']['split_rows']}")
        else:
            value = f"{_fmt(c['value'])} (95 % CI {_fmt(c.get('ci_low'))}–{_fmt(c.get('ci_high'))})"
        rows.append([html.escape(c["check"]), value, status, "issue criterion" if c.get("criterion") else "supporting"])
    return _table(["check (test split)", "value", "result", "role"], rows)


CSS = """
body{font-family:sans-serif;margin:1.5em;max-width:1200px}
table{border-collapse:collapse;margin:0.5em 0 1.5em 0;font-size:0.85em}
td,th{border:1px solid #bbb;padding:2px 6px;text-align:right}
td:first-child,th:first-child{text-align:left}
.banner{background:#b00020;color:#fff;font-weight:bold;font-size:1.4em;padding:0.5em;text-align:center}
.note{color:#444;font-size:0.9em}
img{max-width:100%;border:1px solid #ddd;margin:0.3em 0}
"""


def write_report(
    out_dir: Path, cohort: Cohort, evals: Sequence[ModelEvaluation], *, registry_dir: Path | None = None,
    resamples: int | None = None,
) -> dict[str, Any]:
    """Write ``out_dir/index.html``, ``out_dir/metrics.json`` and the PNGs; returns the metrics document."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    resamples = BOOTSTRAP_RESAMPLES if resamples is None else resamples
    doc = metrics_document(cohort, evals, resamples)
    doc["generated_utc"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    doc["registry"] = str(registry_dir) if registry_dir else None
    (out_dir / "metrics.json").write_text(json.dumps(doc, indent=1, sort_keys=False), encoding="utf-8")
    synthetic = cohort.synthetic
    figures: list[tuple[str, str]] = []
    for split in PLOT_SPLITS:
        for target in ("3class", "binary"):
            name = _plot_roc(evals, target, split, out_dir, synthetic)
            if name:
                figures.append((name, f"ROC curves, {target}, {split} split (bagging decision trees)"))
        for fn, caption in ((_plot_scatter, "Predicted vs QCT BMD (SGD regression)"),
                            (_plot_bland_altman, "Bland–Altman, predicted − QCT (SGD regression)")):
            name = fn(evals, split, out_dir, synthetic)
            if name:
                figures.append((name, f"{caption}, {split} split"))
    banner = f'<div class="banner">{SYNTHETIC_BANNER}: this report was built on a synthetic cohort. ' \
             "Its numbers say nothing about any real patient or scanner.</div>" if synthetic else ""
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>bmd-node site model evaluation"
        f"{' – SYNTHETIC DATA' if synthetic else ''}</title><style>{CSS}</style></head><body>",
        banner,
        "<h1>Site model evaluation</h1>",
        f"<p class='note'>Generated {doc['generated_utc']} from cohort {html.escape(str(cohort.path))}"
        f"{' and registry ' + html.escape(str(registry_dir)) if registry_dir else ''}. Reference standard: "
        f"QCT BMD (L1-L2, mg/cm³); categories ACR 2018 / Chinese 2018 QCT ({_categories_text()}). "
        "Models as in Xiong 2025 (features: sex, age, trabecular HU per level, z-scored).</p>",
        "<h2>Acceptance (issue 7)</h2>", _acceptance_section(doc["acceptance"]),
        "<p class='note'>The issue's AUC criterion is read on the three-class abdominal bagging-tree classifier "
        "with the macro one-vs-rest AUC (the stricter of the two); the binary osteoporosis AUC is shown too. "
        "Calibrated vs uncalibrated chest: both models are compared on the test patients both could predict; "
        "PASS means the calibrated model is not significantly worse (paired stratified bootstrap 95 % CI of the "
        "difference reaches the better side of 0); the text says whether the point estimate itself is at least as "
        "good. The calibrated model also predicts patients with fewer than six evaluable thoracic levels (a missing "
        "level takes the curve's value), which the uncalibrated chest model cannot.</p>",
        "<h2>Table 1. Cohort</h2>", _cohort_section(doc["cohort"]),
        "<h2>Table 2/4. Three-class classification (normal / osteopenia / osteoporosis)</h2>",
        "<p class='note'>AUC: macro one-vs-rest, 95 % CI by stratified percentile bootstrap "
        f"({resamples} resamples); sensitivity, specificity, precision, F1: macro averages over the three classes.</p>",
        _classification_section(evals, "3class"),
        "<h3>Per class (test split)</h3>", _per_class_section(evals),
        "<h2>Binary classification (osteoporosis vs not)</h2>",
        "<p class='note'>AUC with 95 % CI by DeLong's method; sensitivity, specificity, precision, F1 of the "
        "osteoporosis class.</p>",
        _classification_section(evals, "binary"),
        "<h2>Table 3/5. BMD regression</h2>",
        "<p class='note'>Bland–Altman: bias = mean(predicted − QCT), limits = bias ± 1.96 SD.</p>",
        _regression_section(evals),
        "<h2>Figures</h2>",
    ]
    for name, caption in figures:
        parts.append(f"<figure><img src='{html.escape(name)}' alt='{html.escape(caption)}'>"
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    parts.append("</body></html>")
    (out_dir / "index.html").write_text("\n".join(parts), encoding="utf-8")
    logger.info("report written to %s (%d evaluations, %d figures)", out_dir, len(evals), len(figures))
    return doc
