"""How well the centroid spacing (``service.segmentation.label_spacing``) tells counts apart, on recorded phantom
features and on a real scan.

    python -m service.offline.evaluation.spacing_check --cache var/label_cache [--cache ...]
    python -m service.offline.evaluation.spacing_check --case ../shared/data/cptac_lscc_chest

``--cache`` (features recorded by ``label_replay record``): per group, the reference count's spacing cost above the
best count's (median, 99th percentile, maximum), how many reference counts ``SPACING_REJECTS`` would reject, and the
share of counts 1, 2 and 3 or more levels off that it rejects; then the measured spacing per reference level pair
against the typical one, and each level's extent along the scanner axis (the size reading the spacing replaced in
the no-anchor best guess) against the typical body height. ``--case``: the real scan is segmented, and the spacing
of each pair of adjacent complete bodies is printed with the node's names (take them as the reference only where
they are confident) against the typical spacing, then each complete body's extent along the scanner axis. Not a
held-out evaluation: the labelling figures come from ``evaluate segmentation``.
"""

from __future__ import annotations

import argparse
import math
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from service.domain.levels import VertebraLevel
from service.offline.evaluation.label_features import recorded_features
from service.offline.evaluation.label_replay import RecordedCase, recorded_cases
from service.offline.evaluation.segmentation import load_ct
from service.segmentation import inference
from service.segmentation.label_cues import TYPICAL_HEIGHT_MM
from service.segmentation.label_gaps import gap_missing
from service.segmentation.label_spacing import (
    SPACING_REJECTS,
    measured_spacings,
    rejected_by_spacing,
    spacing_costs,
    typical_spacing_mm,
)
from service.segmentation.labelling import BodyFeatures, body_positions
from service.segmentation.settings import SegmentationSettings


def positions(bodies: list[BodyFeatures]) -> list[int]:
    """Each body's position as the labelling step counts them (bodies presumed missed in gaps included)."""
    return body_positions(gap_missing(bodies))


def reference_first(case: RecordedCase, pos: list[int]) -> int | None:
    """The level of position 0 that most bodies' nearest reference centroids (within 10 mm) agree on."""
    ref = {k: np.asarray(v) for k, v in case.reference_lps.items()}
    offsets = []
    for c, p in zip(case.centroids_lps, pos, strict=True):
        if c is None or not ref:
            continue
        level = min(ref, key=lambda k: float(np.linalg.norm(ref[k] - np.asarray(c))))
        if float(np.linalg.norm(ref[level] - np.asarray(c))) <= 10.0:
            offsets.append(level - p)
    return Counter(offsets).most_common(1)[0][0] if offsets else None


def _cache_main(caches: list[Path]) -> None:
    above: dict[str, list[float]] = defaultdict(list)
    rejected_ref: Counter[str] = Counter()
    off: dict[str, Counter[str]] = defaultdict(Counter)
    per_pair: dict[int, list[float]] = defaultdict(list)
    extents: dict[int, list[float]] = defaultdict(list)
    for cache in caches:
        for path, case in recorded_cases(cache):
            pos = positions(case.bodies)
            first = reference_first(case, pos)
            costs = spacing_costs(case.bodies, pos)
            if first is None or first not in costs:
                continue
            group = path.name.split("__")[0] + "/" + case.group
            above[group].append(costs[first] - min(costs.values()))
            rejected_ref[group] += rejected_by_spacing(costs, first)
            for f in costs:
                k = min(abs(f - first), 3)
                if k:
                    off[group][f"{k} tried"] += 1
                    off[group][f"{k} rejected"] += rejected_by_spacing(costs, f)
            for p, span, d in measured_spacings(case.bodies, pos):
                if span == 1:
                    per_pair[first + p].append(d)
            for b, p in zip(case.bodies, pos, strict=True):
                if not b.cut_by_fov:
                    extents[first + p].append(b.height_mm)
    print(f"group | cases | reference cost above the best: median / 99th pct / max | reference rejected "
          f"(> {SPACING_REJECTS}) | counts 1 / 2 / >=3 levels off rejected")
    for group, a in sorted(above.items()):
        o = off[group]
        shares = " / ".join(f"{o[f'{k} rejected'] / max(o[f'{k} tried'], 1):.0%}" for k in (1, 2, 3))
        print(f"{group} | {len(a)} | {np.median(a):.1f} / {np.percentile(a, 99):.1f} / {max(a):.1f} | "
              f"{rejected_ref[group]} | {shares}")
    print("level pair | n | measured mean (sd) mm | typical mm")
    for upper, ds in sorted(per_pair.items()):
        t = typical_spacing_mm(upper)
        print(f"{VertebraLevel(upper).name}/{VertebraLevel(upper + 1).name} | {len(ds)} | {np.mean(ds):.1f} "
              f"({np.std(ds):.1f}) | {'-' if t is None else f'{t:.1f}'}")
    print("level | n | extent along the scanner axis, mean (sd) mm | typical body height mm (label_cues)")
    for level, hs in sorted(extents.items()):
        h = TYPICAL_HEIGHT_MM.get(level)
        print(f"{VertebraLevel(level).name} | {len(hs)} | {np.mean(hs):.1f} ({np.std(hs):.1f}) | "
              f"{'-' if h is None else f'{h:.1f}'}")


def _case_main(case: Path) -> None:
    segmenter = inference.load_segmenter(SegmentationSettings(device="cpu"))
    with recorded_features() as calls:
        segmenter.segment(load_ct(case))
    if not calls:
        print("no vertebral body found")
        return
    bodies, _, result = calls[-1]
    print("pair (node's names) | confident | measured mm | typical mm")
    for i in range(len(bodies) - 1):
        a, b = result.decisions[i], result.decisions[i + 1]
        if bodies[i].cut_by_fov or bodies[i + 1].cut_by_fov or a.level is None or b.level is None:
            continue
        t = typical_spacing_mm(int(a.level)) if int(b.level) == int(a.level) + 1 else None
        d = math.dist(bodies[i].centroid_mm, bodies[i + 1].centroid_mm)
        print(f"{a.level.name}/{b.level.name} | {not (a.uncertain or b.uncertain)} | {d:.1f} | "
              f"{'-' if t is None else f'{t:.1f}'}")
    print("body (node's name) | extent along the scanner axis mm | typical body height mm")
    for body, decision in zip(bodies, result.decisions, strict=True):
        if not body.cut_by_fov and decision.level is not None:
            h = TYPICAL_HEIGHT_MM.get(int(decision.level))
            print(f"{decision.level.name} | {body.height_mm:.1f} | {'-' if h is None else f'{h:.1f}'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, action="append", default=[], help="recorded features (label_replay)")
    parser.add_argument("--case", type=Path, help="a real case folder to segment")
    args = parser.parse_args(argv)
    if args.case is not None:
        _case_main(args.case)
    if args.cache:
        _cache_main(args.cache)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
