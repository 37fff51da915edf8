"""How often each labelling anchor reads its own body wrong, and why anchors disagree, on recorded segmentations.

    python -m service.offline.evaluation.anchor_errors --cache var/label_cache14 [--cache ...] [--cases]

For each recorded case (``label_replay record``), the anchors the labelling step would count
(``label_anchors.anchor_counts``: the first rib pair T1, the last rib T12, the sacrum L5) each name one body: T1, T12 or
L5. The tool compares that body's reference level (the reference centroid nearest the body's, within the VerSe
20 mm) with the anchor's level: the anchor's **own error**, in levels (an 11th rib pair read as the last: +1).
Each anchor's count also names every other body; where the anchors' counts disagree although every anchor read its
own body right, the bodies between them were miscounted (two bodies segmented as one, or a body missed), not read.

Printed: each anchor's own errors over the cases where it counts, then, over the cases where two or three anchors
count and their counts disagree, what explains it: which anchor read its own body wrong, or "bodies between the
anchors miscounted".  It reads recorded features only; the names are not changed.  Session 22 used it to weigh a
rule that would name with confidence from two anchors against a third (not adopted: docs/segmentation/README.md).
"""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict
from pathlib import Path

from service.domain.levels import VertebraLevel
from service.offline.evaluation.label_replay import RecordedCase, recorded_cases, reference_level
from service.segmentation.label_anchors import ANCHOR_LEVEL, anchor_counts, sacrum_field_shortfall
from service.segmentation.label_gaps import gap_missing
from service.segmentation.labelling import body_positions

SHORT = {name: level.name for name, level in ANCHOR_LEVEL.items()}
MISCOUNTED = "bodies between the anchors miscounted"


def anchor_readings(case: RecordedCase) -> tuple[dict[str, int], dict[str, int | None]]:
    """(anchor -> the level its count gives the first body, anchor -> its own error in levels; None where its body
    has no reference)."""
    pos = body_positions(gap_missing(case.bodies))
    counts, _ = anchor_counts(case.bodies, pos, case.sacrum_below)
    own: dict[str, int | None] = {}
    for name, first in counts.items():
        index = pos.index(int(ANCHOR_LEVEL[name]) - first)
        ref = reference_level(case, index)
        own[SHORT[name]] = None if ref is None else int(ANCHOR_LEVEL[name]) - ref
    return {SHORT[k]: v for k, v in counts.items()}, own


def explanation(counts: dict[str, int], own: dict[str, int | None]) -> str | None:
    """Why the counts disagree ("T12 +1", "T1 -1, L5 +1", MISCOUNTED, "no reference"); None when they agree."""
    if len(set(counts.values())) <= 1:
        return None
    if any(e is None for e in own.values()):
        return "no reference"
    wrong = [f"{k} {e:+d}" for k, e in sorted(own.items()) if e]
    return ", ".join(wrong) if wrong else MISCOUNTED


def sacrum_field_lines(cache: Path) -> list[str]:
    """Per recorded case with the sacrum below its lowest body: that body's reference level and height, how far the
    field reaches below its centre, and whether the L5 anchor counts there (``label_anchors.sacrum_field_shortfall``),
    in order of that reach."""
    rows = []
    for path, case in recorded_cases(cache):
        lowest = case.bodies[-1]
        if not case.sacrum_below or lowest.cut_by_fov or lowest.field_below_mm is None:
            continue
        ref = reference_level(case, len(case.bodies) - 1)
        name = VertebraLevel(ref).name if ref is not None else "no reference"
        counts = "dropped" if sacrum_field_shortfall(lowest) is not None else "counts"
        rows.append((lowest.field_below_mm, f"{cache.name}/{path.stem}: lowest body {name} "
                                            f"({lowest.height_mm:.0f} mm), field {lowest.field_below_mm:.0f} mm below "
                                            f"its centre: sacrum {counts}"))
    return [line for _, line in sorted(rows)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, action="append", required=True)
    parser.add_argument("--cases", action="store_true", help="list every case whose anchors disagree")
    parser.add_argument("--sacrum-field", action="store_true",
                        help="list, per case with the sacrum below its lowest body, how far the field reaches below")
    args = parser.parse_args(argv)
    if args.sacrum_field:
        for cache in args.cache:
            print("\n".join(sacrum_field_lines(cache)))
        return 0
    per_anchor: dict[str, Counter[str]] = defaultdict(Counter)
    why: dict[int, Counter[str]] = defaultdict(Counter)
    counted: Counter[int] = Counter()
    for cache in args.cache:
        for path, case in recorded_cases(cache):
            counts, own = anchor_readings(case)
            for k, e in own.items():
                per_anchor[k]["no reference" if e is None else f"{e:+d}"] += 1
            if len(counts) >= 2:
                counted[len(counts)] += 1
                reason = explanation(counts, own)
                if reason is not None:
                    why[len(counts)][reason] += 1
                    if args.cases:
                        print(f"{cache.name}/{path.stem}: {len(counts)} anchors disagree: {reason}")
    print("anchor | cases where it counts | own error in levels: cases")
    for k in (VertebraLevel.T1.name, VertebraLevel.T12.name, VertebraLevel.L5.name):
        c = per_anchor.get(k, Counter())
        print(f"{k} | {sum(c.values())} | " + ", ".join(f"{e}: {n}" for e, n in sorted(c.items())))
    for n in (3, 2):
        print(f"{n} anchors: {counted[n]} cases, counts disagree in {sum(why[n].values())}")
        for reason, m in why[n].most_common():
            print(f"  {reason}: {m}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
