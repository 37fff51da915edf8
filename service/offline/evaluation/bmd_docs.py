"""A committed summary of one ``bmd-node evaluate bmd`` run: README.md with the figures, metrics.json, the BMD plot,
and small copies of the key images of the worst cases and of each fracture grade (the whole report's 60 key images
are ~45 MB, too much for the repository).

    .venv/bin/python -m service.offline.evaluation.bmd_docs var/bmd_eval_s6 docs/evaluation/bmd_s6 \
        --title "set s6 (seed 2656), first run"
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from PIL import Image

THUMB_WIDTH_PX = 900
WORST_CASES = 4


def _thumb(report: Path, case: dict[str, Any], out: Path) -> str | None:
    if not case.get("key_image"):
        return None
    src = report / case["key_image"]
    if not src.is_file():
        return None
    name = f"{case['case']}_key_image.jpg"
    with Image.open(src) as im:
        rgb = im.convert("RGB")
        rgb.thumbnail((THUMB_WIDTH_PX, THUMB_WIDTH_PX))
        rgb.save(out / name, quality=80)
    return name


def _summary_error(case: dict[str, Any]) -> float:
    if case.get("summary_bmd") is None or case.get("truth_l1_l2_bmd") is None:
        return -1.0
    return abs(case["summary_bmd"] - case["truth_l1_l2_bmd"])


def _picked(metrics: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    cases = {c["case"]: c for c in metrics["per_case"]}
    worst = sorted(cases.values(), key=_summary_error, reverse=True)[:WORST_CASES]
    picked = [(f"largest summary error ({_summary_error(c):.1f} mg/cm³)", c) for c in worst]
    for grade in (1, 2, 3):
        for called in (True, False):
            level = next((lv for lv in metrics["per_level"] if lv["fracture_grade_truth"] == grade
                          and bool(lv["called_fracture"]) == called), None)
            if level is not None:
                what = "called" if called else "missed"
                picked.append((f"Genant {grade} fracture at {level['truth_level']}, {what}", cases[level["case"]]))
    return picked


def _fractures_by_thickness(m: dict[str, Any]) -> dict[float, tuple[int, int]]:
    """Fractured truth levels and how many were called, by the case's slice thickness (from its truth.json)."""
    out: dict[float, tuple[int, int]] = {}
    for lv in m["per_level"]:
        truth = Path(m["dataset"]) / lv["case"] / "truth.json"
        if not lv["fracture_grade_truth"] or not truth.is_file():
            continue
        th = float(json.loads(truth.read_text())["spec"]["slice_thickness_mm"])
        n, called = out.get(th, (0, 0))
        out[th] = (n + 1, called + bool(lv["called_fracture"]))
    return out


def _same_levels(m: dict[str, Any]) -> str:
    sl = m.get("summary_same_levels")
    if not sl:
        return "not scored (run before session 12)"
    return f"{sl['mae']}, {sl['category_agreement']}, {sl['cases']} ({sl['not_l1_l2']})"


def _figures(m: dict[str, Any]) -> list[str]:
    lb, s, fr, nm = m["level_bmd"], m["summary"], m["fracture"], m["naming"]
    c = fr["confusion"]
    rows = [
        ("cases", m["cases"]),
        ("per-level BMD MAE / bias / p95 (mg/cm³), levels", f"{lb['mae']} / {lb['bias']} / {lb['p95_abs']}, "
                                                             f"{lb['levels']}"),
        ("L1-L2 summary MAE (mg/cm³), cases", f"{s['l1_l2_mae']}, {s['l1_l2_cases']}"),
        ("any numeric summary MAE (mg/cm³), cases", f"{s['all_numeric_mae']}, {s['numeric_summaries']}"),
        ("category agreement (indeterminate counts as disagreement)", f"{s['category_agreement']} "
                                                                      f"({s['indeterminate']} indeterminate)"),
        ("numeric summaries against the truth over the levels they used: MAE (mg/cm³), category agreement, cases "
         "(of them not L1-L2)", _same_levels(m)),
        ("category-only summaries (names uncertain), of them agreeing",
         f"{s.get('category_only', 0)}, {s.get('category_only_agree', 0)}"),
        ("fractured levels called / missed", f"{c['fractured_called']} / {c['fractured_missed']}"),
        ("sensitivity by Genant grade 1 / 2 / 3", " / ".join(str(fr["sensitivity_by_grade"][g]["sensitivity"])
                                                             for g in ("1", "2", "3"))),
        ("unfractured levels called fractured", f"{c['intact_called']} of {fr['intact_levels']} "
                                                f"({fr['false_fracture_share']})"),
        ("unfractured levels excluded for any reason", f"{fr['intact_excluded_share']} "
                                                       f"{fr['intact_exclusion_reasons']}"),
        ("fracture check outcomes, fractured / unfractured levels",
         f"{fr.get('outcomes', {}).get('fractured')} / {fr.get('outcomes', {}).get('intact')}"),
        ("unfractured levels checked whose height was not measurable", f"{fr.get('intact_not_measurable_share')}"),
        ("levels matched / named right / confidently wrong", f"{nm['matched_levels']} / {nm['named_right']} / "
                                                               f"{nm['confident_wrong']}"),
    ]
    out = ["| figure | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    out += ["", "| slice thickness (mm) | fractured levels | called |", "|---|---|---|"]
    out += [f"| {th} | {n} | {called} |" for th, (n, called) in sorted(_fractures_by_thickness(m).items())]
    out += ["", "| kVp | levels | MAE | bias |", "|---|---|---|---|"]
    out += [f"| {k} | {v['levels']} | {v['mae']} | {v['bias']} |" for k, v in lb["by_kvp"].items()]
    return out


def write_docs(report: Path, out: Path, title: str) -> Path:
    metrics = json.loads((report / "metrics.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(report / "metrics.json", out / "metrics.json")
    lines = [f"# BMD evaluation: {title}", "",
             f"`bmd-node evaluate bmd {metrics['dataset']} --out {report} --device cpu`, summarised by "
             f"`python -m service.offline.evaluation.bmd_docs {report} {out}`. Full per-level rows in metrics.json.",
             "", *_figures(metrics)]
    if (report / "bmd_levels.png").is_file():
        shutil.copyfile(report / "bmd_levels.png", out / "bmd_levels.png")
        lines += ["", "![per-level BMD](bmd_levels.png)"]
    lines += ["", "## Key images", ""]
    for why, case in _picked(metrics):
        name = _thumb(report, case, out)
        excl = "; ".join(f"{lv}: {r}" for lv, r, _ in case["exclusions"]) or "none"
        lines += [f"### {case['case']}: {why}", "",
                  f"kVp {case['kvp']}, node {case['summary_bmd']} ({case['summary_category']}), truth L1-L2 "
                  f"{case['truth_l1_l2_bmd']} ({case['truth_category']}); exclusions: {excl}", ""]
        if name:
            lines += [f"![{case['case']}]({name})", ""]
    path = out / "README.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("report", type=Path, help="the --out folder of bmd-node evaluate bmd")
    p.add_argument("out", type=Path)
    p.add_argument("--title", default="")
    args = p.parse_args(argv)
    print(write_docs(args.report, args.out, args.title or str(args.report)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
