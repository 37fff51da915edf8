"""How deformed each fractured phantom body is on its own geometry, read as a radiologist reads it: against its
neighbours and its own posterior height, not against its unseen pre-fracture height.

The BMD set draws a fracture as a loss of the body's own normal height (``fracture.height_loss``: 22.5, 32 or 45 %,
grades 1-3), and the evaluation grades the truth from that draw. A reader (and the node) cannot see the normal
height: Genant's method compares the body with its neighbours and its anterior and middle heights with its posterior
one. Where the neighbours are taller or shorter than the body's own normal, the deformity a reader can see differs
from the draw; a drawn grade 1 (22.5 %) can show less than the 20 % threshold.

This command reads, from the phantom's truth heights only (``truth.json``; nothing of the node's fracture check), the
largest of: each column's loss against the mean of the same column of the nearest complete unfractured neighbours
(one above, one below, up to two levels away), and the loss of the anterior/posterior and middle/posterior ratios
against the neighbours' mean ratios. It lists every fractured level with its drawn grade, that visible loss and its
grade, and the node's outcome from an evaluation report, then the node's calls per visible grade. The drawn grade
stays the evaluation's truth (``bmd-node evaluate bmd``); this is a second figure, not a replacement.

    python -m service.offline.evaluation.truth_deformity var/bmd_set_s26 --report var/bmd_eval_s26/metrics.json
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from service.domain.levels import VertebraLevel
from service.offline.evaluation.bmd import genant_grade

COLUMNS = ("anterior", "middle", "posterior")
NEIGHBOUR_REACH = 2
"""Levels above and below searched for the nearest complete unfractured neighbour."""


def _neighbours(vertebrae: dict[str, dict[str, Any]], level: str) -> list[dict[str, Any]]:
    """The nearest complete unfractured truth body above and below ``level`` (each within NEIGHBOUR_REACH)."""
    here = VertebraLevel[level]
    found = []
    for direction in (-1, 1):
        for step in range(1, NEIGHBOUR_REACH + 1):
            other = here.shifted(direction * step)
            v = vertebrae.get(other.name) if other is not None else None
            if v is not None and not v.get("cut_by_fov") and not v.get("fractured") and v.get("heights_mm"):
                found.append(v)
                break
    return found


def visible_loss(vertebrae: dict[str, dict[str, Any]], level: str) -> float | None:
    """The largest height loss the truth geometry shows against the neighbours (see the module doc); None without a
    neighbour."""
    body = vertebrae[level]["heights_mm"]
    neighbours = [n["heights_mm"] for n in _neighbours(vertebrae, level)]
    if not neighbours:
        return None
    losses = [1.0 - body[c] / float(np.mean([n[c] for n in neighbours])) for c in COLUMNS]
    for c in ("anterior", "middle"):
        ratio = float(np.mean([n[c] / n["posterior"] for n in neighbours]))
        losses.append(1.0 - (body[c] / body["posterior"]) / ratio)
    return max(losses)


def fractured_levels(dataset: Path, report: dict[str, Any]) -> list[tuple[str, str, int, float | None, str]]:
    """(case, level, drawn grade, visible loss, node outcome) for every truth-fractured level in the report."""
    outcomes = {(r["case"], r["truth_level"]): r for r in report["per_level"]}
    rows = []
    for (case, level), r in sorted(outcomes.items()):
        if r["fracture_grade_truth"] == 0:
            continue
        truth = json.loads((dataset / case / "truth.json").read_text())
        vertebrae = {v["level"]: v for v in truth["vertebrae"]}
        rows.append((case, level, r["fracture_grade_truth"], visible_loss(vertebrae, level), r["fracture_outcome"]))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--report", type=Path, required=True, help="metrics.json of bmd-node evaluate bmd")
    args = parser.parse_args(argv)
    rows = fractured_levels(args.dataset, json.loads(args.report.read_text()))
    called: Counter[int] = Counter()
    total: Counter[int] = Counter()
    for case, level, drawn, loss, outcome in rows:
        visible = genant_grade(loss) if loss is not None else None
        shown = "-" if loss is None else f"{100 * loss:.0f} % (grade {visible})"
        print(f"{case} {level}: drawn grade {drawn}, visible loss {shown}, node {outcome}")
        if visible is not None:
            total[visible] += 1
            called[visible] += outcome == "fractured"
    for grade in sorted(total):
        print(f"visible grade {grade}: called {called[grade]} of {total[grade]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
