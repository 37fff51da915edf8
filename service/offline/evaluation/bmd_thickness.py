"""An evaluated BMD set's fracture outcomes and exclusions per slice thickness (from its metrics.json).

    python -m service.offline.evaluation.bmd_thickness var/bmd_eval_s24 [--dataset var/bmd_set_s24]

``bmd-node evaluate bmd`` scores the whole set; the fracture check and the ROI depend on the slice thickness (5 mm
scans: ``fracture_check.THICK_SLICE_LIMIT_MM``, ``roi.too_few_slices``), so this splits its per-level rows by the
thickness of each case (the phantom's ``acquisition.slice_thickness_mm`` in the dataset's truth.json; the dataset is
the one metrics.json names unless given). Per thickness: the fractured levels and how many were called (by Genant
grade), the unfractured levels the check covers (T4-L4, not cut) and how many it called fractured or left not
measurable, the unfractured levels excluded from the BMD by reason, and how many cases' summaries say the fracture
check is limited (``fracture_check.thick_slice_limitation``, from each case's result.json under ``cases/``).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from service.domain.results import FRACTURE_CHECK_LIMITED_NOTE


def thickness_by_case(dataset: Path) -> dict[str, float]:
    """Case folder name -> slice thickness (mm) from each case's truth.json."""
    return {p.parent.name: float(json.loads(p.read_text())["acquisition"]["slice_thickness_mm"])
            for p in sorted(dataset.glob("*/truth.json"))}


def limited_cases(report: Path) -> set[str]:
    """The cases whose summary notes say the fracture check is limited."""
    return {p.parent.name for p in report.glob("cases/*/result.json")
            if any(n.startswith(FRACTURE_CHECK_LIMITED_NOTE) for n in json.loads(p.read_text())["summary"]["notes"])}


def table(per_level: list[dict[str, Any]], thickness: dict[str, float], limited: set[str] | None = None
          ) -> list[str]:
    """One line per slice thickness (see the module doc); ``limited``: the cases whose summary says so."""
    rows: dict[float, list[dict[str, Any]]] = defaultdict(list)
    for row in per_level:
        rows[thickness[row["case"]]].append(row)
    out = []
    for t in sorted(rows):
        fractured = [r for r in rows[t] if r["fracture_grade_truth"] > 0]
        intact = [r for r in rows[t] if r["fracture_grade_truth"] == 0]
        grades = " ".join(f"G{g} {sum(r['called_fracture'] for r in fractured if r['fracture_grade_truth'] == g)}"
                          f"/{sum(r['fracture_grade_truth'] == g for r in fractured)}" for g in (1, 2, 3))
        checked = [r for r in intact if r["fracture_outcome"] != "not checked"]
        outcomes = Counter(r["fracture_outcome"] for r in checked)
        reasons = Counter(r["exclusion_reason"] for r in intact if r["exclusion_reason"])
        excluded = ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())) or "none"
        line = (f"{t:g} mm: fractures called {sum(r['called_fracture'] for r in fractured)} of {len(fractured)} "
                f"({grades}); unfractured checked {len(checked)}: called fractured {outcomes['fractured']}, not "
                f"measurable {outcomes['not measurable']}; unfractured excluded: {excluded}")
        if limited is not None:
            cases = {c for c, th in thickness.items() if th == t}
            line += f"; summaries saying the check is limited: {len(cases & limited)} of {len(cases)} cases"
        out.append(line)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", type=Path, help="the folder evaluate bmd wrote (metrics.json)")
    parser.add_argument("--dataset", type=Path, default=None, help="the evaluated set (default: metrics.json's)")
    args = parser.parse_args(argv)
    metrics = json.loads((args.report / "metrics.json").read_text())
    dataset = args.dataset if args.dataset is not None else Path(metrics["dataset"])
    print("\n".join(table(metrics["per_level"], thickness_by_case(dataset), limited_cases(args.report))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
