"""Image heights of the fracture check against the phantom's truth, per slice thickness and bone density.

    python -m service.offline.evaluation.height_bias var/bmd_tune12 --cache var/seg_cache12

For every unfractured level T1-L5 of every case (not cut by the field of view) whose image endplates were found in a
column, the column's image height (``fracture_check.measure_level``, with the node's own segmentation, cached as in
``fracture_outcomes``) less the truth's height of that column (``heights_mm`` of truth.json, from the phantom's
geometry). Printed per slice thickness and density (truth trabecular HU below / above ``DENSE_HU``): the count, the
median and the median absolute deviation in mm. A shift shared by all levels of a scan cancels in Genant's relative
losses; what matters is that it does not change with the slice thickness or the density (session 13).

``--truth-losses`` prints instead, for every fractured level, the height loss the node's Genant rule
(``fracture.assess_fractures``) finds on the phantom's truth heights of all levels (no segmentation, no image): how
far a drawn fracture lies above the 20 % threshold before any measuring error (session 16).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from service.domain.levels import VertebraLevel
from service.measurement.fracture import VertebralHeights, assess_fractures
from service.measurement.fracture_check import FIRST_CHECKED, LAST_CHECKED, measure_level
from service.measurement.geometry import crop_labels, vertebra_frame
from service.offline.evaluation.fracture_outcomes import cached_segmentation
from service.offline.evaluation.segmentation import load_ct

DENSE_HU = 150.0
COLUMNS = ("anterior", "middle", "posterior")


def errors(cases: list[Path], cache: Path | None, by_column: bool = False) -> dict[tuple[float, str], list[float]]:
    """(slice thickness, "low" / "dense") -> image height less truth height (mm), one per found column; with
    ``by_column`` the key's second part also names the column ("low anterior", ...)."""
    out: dict[tuple[float, str], list[float]] = defaultdict(list)
    for case in cases:
        volume = load_ct(case)
        truth = json.loads((case / "truth.json").read_text())
        by_level = {v["level"]: v for v in truth["vertebrae"]}
        thickness = float(truth["acquisition"]["slice_thickness_mm"])
        segmentation = cached_segmentation(case, volume, cache)
        crops = crop_labels(segmentation.body_labels)
        centroids = {v.level: v.centroid_lps_mm for v in segmentation.vertebrae if not v.cut_by_fov}
        for v in segmentation.vertebrae:
            t = by_level.get(v.level.name)
            body = crops.get(int(v.level))
            if (v.cut_by_fov or t is None or t.get("cut_by_fov") or t.get("fractured") or body is None
                    or not FIRST_CHECKED <= v.level <= LAST_CHECKED):
                continue
            measured = measure_level(volume, body, vertebra_frame(v.level, v.centroid_lps_mm, centroids))
            density = "dense" if float(t["trabecular_hu"]) >= DENSE_HU else "low"
            for name, image_mm in zip(COLUMNS, measured.image_columns, strict=True):
                if image_mm is not None:
                    key = f"{density} {name}" if by_column else density
                    out[(thickness, key)].append(image_mm - float(t["heights_mm"][name]))
    return out


def truth_losses(case: Path) -> list[tuple[str, str, float, float, str]]:
    """(level, kind, drawn height loss, the rule's loss on truth heights, its detail) per fractured level T1-L5."""
    truth = json.loads((case / "truth.json").read_text())
    heights: dict[VertebraLevel, VertebralHeights] = {}
    fractured: dict[VertebraLevel, dict[str, float | str]] = {}
    for v in truth["vertebrae"]:
        level = VertebraLevel.__members__.get(v["level"])
        if level is None or v.get("cut_by_fov") or not FIRST_CHECKED <= level <= LAST_CHECKED:
            continue
        h = v["heights_mm"]
        heights[level] = VertebralHeights(h["anterior"], h["middle"], h["posterior"])
        if v.get("fracture"):
            fractured[level] = v["fracture"]
    found = assess_fractures(heights)
    return [(lv.name, str(f["kind"]), float(f["height_loss"]), found[lv].max_height_loss, found[lv].detail)
            for lv, f in sorted(fractured.items())]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("set_dir", type=Path)
    parser.add_argument("--cache", type=Path, default=None, help="folder for the cached segmentations")
    parser.add_argument("--by-column", action="store_true", help="one line per column (anterior, middle, posterior)")
    parser.add_argument("--truth-losses", action="store_true",
                        help="the Genant rule's loss on the truth heights of every fractured level")
    args = parser.parse_args(argv)
    cases = sorted(p for p in args.set_dir.iterdir() if (p / "truth.json").is_file())
    if args.truth_losses:
        for case in cases:
            for level, kind, drawn, loss, detail in truth_losses(case):
                print(f"{case.name} {level} {kind} drawn {100 * drawn:.1f} %: rule on truth heights "
                      f"{100 * loss:.1f} % ({detail})")
        return 0
    for (thickness, density), e in sorted(errors(cases, args.cache, args.by_column).items()):
        arr = np.asarray(e)
        median = float(np.median(arr))
        print(f"{thickness:g} mm {density:16s}: {arr.size:4d} columns, image - truth median {median:+.2f} mm, "
              f"MAD {float(np.median(np.abs(arr - median))):.2f} mm")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
