"""``index.html`` and plots of ``bmd-node evaluate bmd``: the figures, a predicted-vs-truth BMD plot, the
exclusion confusion table, and one row per case with its key image (which draws every level, excluded ones with
their reason)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _plot_levels(out: Path, levels: list[dict[str, Any]]) -> str | None:
    scored = [lv for lv in levels if lv["evaluable"] and lv["bmd_predicted"] is not None]
    if not scored:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.2))
    for kvp, marker in ((80, "v"), (100, "s"), (120, "o"), (140, "^")):
        sel = [lv for lv in scored if lv["kvp"] == kvp]
        if not sel:
            continue
        truth = [lv["bmd_truth"] for lv in sel]
        pred = [lv["bmd_predicted"] for lv in sel]
        ax1.scatter(truth, pred, s=12, marker=marker, label=f"{kvp} kVp")
        ax2.scatter(truth, [p - t for p, t in zip(pred, truth, strict=True)], s=12, marker=marker, label=f"{kvp} kVp")
    lo = min(min(lv["bmd_truth"] for lv in scored), min(lv["bmd_predicted"] for lv in scored)) - 5
    hi = max(max(lv["bmd_truth"] for lv in scored), max(lv["bmd_predicted"] for lv in scored)) + 5
    ax1.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax1.set(xlabel="truth BMD (mg/cm3)", ylabel="node BMD (mg/cm3)", title="per evaluable level")
    ax2.axhline(0, color="k", lw=0.8)
    for y in (-3, 3):
        ax2.axhline(y, color="grey", lw=0.6, ls=":")
    ax2.set(xlabel="truth BMD (mg/cm3)", ylabel="node - truth (mg/cm3)", title="error (dotted: +-3 mg/cm3)")
    ax1.legend(fontsize=8)
    fig.tight_layout()
    path = out / "bmd_levels.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def _table(rows: list[list[Any]], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c if str(c).startswith('<') else html.escape(str(c))}</td>" for c in r)
                   + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def write_report(out: Path, metrics: dict[str, Any]) -> Path:
    plot = _plot_levels(out, metrics["per_level"])
    s, lb, fr, nm = metrics["summary"], metrics["level_bmd"], metrics["fracture"], metrics["naming"]
    figures = _table([
        ["cases", metrics["cases"]],
        ["per-level BMD MAE / bias (mg/cm3), levels", f"{lb['mae']} / {lb['bias']}, {lb['levels']}"],
        ["L1-L2 summary MAE (mg/cm3), cases", f"{s['l1_l2_mae']}, {s['l1_l2_cases']}"],
        ["any numeric summary MAE (mg/cm3), cases", f"{s['all_numeric_mae']}, {s['numeric_summaries']}"],
        ["category agreement (indeterminate count as disagreement)", f"{s['category_agreement']} "
                                                                      f"({s['indeterminate']} indeterminate)"],
        ["cases failed or rejected", s["failed_or_rejected"]],
        ["levels matched / named right / confidently wrong", f"{nm['matched_levels']} / {nm['named_right']} / "
                                                               f"{nm['confident_wrong']}"],
    ], ["figure", "value"])
    by_kvp = _table([[k, v["levels"], v["mae"], v["bias"]] for k, v in lb["by_kvp"].items()],
                    ["kVp", "levels", "MAE", "bias"])
    c = fr["confusion"]
    confusion = _table([["fractured (phantom geometry)", c["fractured_called"], c["fractured_missed"]],
                        ["not fractured", c["intact_called"], c["intact_not_called"]]],
                       ["truth", "called fractured", "not called"])
    grades = _table([[g, v["levels"], v["called"], v["sensitivity"]] for g, v in fr["sensitivity_by_grade"].items()],
                    ["Genant grade", "levels", "called", "sensitivity"])
    cases = _table([[cr["case"], cr["kvp"], cr["status"], cr["summary_bmd"], "+".join(cr["summary_levels"]),
                     cr["summary_category"], cr["truth_l1_l2_bmd"], cr["truth_category"],
                     "<br>".join(html.escape(f"{lv}: {r} ({d})") for lv, r, d in cr["exclusions"]) or "-",
                     f'<a href="{cr["key_image"]}"><img src="{cr["key_image"]}" width="220"></a>'
                     if cr["key_image"] else "-"]
                    for cr in metrics["per_case"]],
                   ["case", "kVp", "status", "BMD", "levels", "category", "truth L1-L2", "truth category",
                    "exclusions (reason, detail)", "key image"])
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>bmd-node evaluate bmd</title>
<style>body{{font-family:sans-serif;margin:1em}}table{{border-collapse:collapse;margin:0.5em 0}}
td,th{{border:1px solid #bbb;padding:3px 6px;font-size:13px;vertical-align:top}}</style></head><body>
<h1>BMD evaluation: {html.escape(metrics['dataset'])}</h1>
<p>The node's whole pipeline (trained segmenter) against the phantom generator's truth. Category: ACR thresholds on
the truth L1-L2 BMD. Fracture grade: Genant, from the phantom's height loss.</p>
<h2>Figures</h2>{figures}<h2>Per kVp</h2>{by_kvp}
{f'<img src="{plot}">' if plot else ''}
<h2>Fractures (complete levels)</h2>{confusion}{grades}
<p>Not fractured: {fr['intact_levels']} levels; excluded as fracture {fr['false_fracture_share']}; excluded for any
reason {fr['intact_excluded_share']} ({html.escape(str(fr['intact_exclusion_reasons']))}).</p>
<h2>Cases</h2>{cases}</body></html>"""
    path = out / "index.html"
    path.write_text(page)
    return path
