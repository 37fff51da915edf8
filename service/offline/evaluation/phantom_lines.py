"""The synchronous phantom's HU -> BMD line against the phantom's physics, case by case, on BMD sets.

    python -m service.offline.evaluation.phantom_lines var/bmd_set_s10 [var/bmd_set_s11 ...] [--hu 150]

For every case whose truth declares a calibration phantom, the node's synchronous calibration runs on the CT as the
pipeline runs it (rods searched posterior to the vertebral bodies, here placed from the truth centroids, so the
segmentation model is not part of the figure); the line's error is the BMD it gives at ``--hu`` minus the BMD the
truth line (the phantom's physics for this acquisition: kVp, patient size, scanner gain and offset) gives there.
A case without a line falls back to another calibration in the node and is counted as such. Prints one line per
case, then the count with a line, the mean absolute error and the largest errors.

``--rods`` also lists each case's rod candidates: centre, HU as sampled (median over the slices where the matched
filter fired), those slices' count and HU spread (robust SD), the HU read on every slice of the candidate's stretch,
and the declared density and physics HU of the phantom rod within 9 mm, if any.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from service.calibration.phantom import SYNC_MIN_POSTERIOR_MM, find_rods, load_definition, synchronous_calibration
from service.calibration.phantom_rods import rod_along
from service.offline.evaluation.segmentation import load_ct


def line_error(case: Path, at_hu: float) -> float | None:
    """BMD error (mg/cm3) of the synchronous line at ``at_hu``; None when no line was found."""
    truth = json.loads((case / "truth.json").read_text())
    volume = load_ct(case)
    vertebrae = [SimpleNamespace(centroid_lps_mm=v["centroid_lps_mm"]) for v in truth["vertebrae"]]
    cal = synchronous_calibration(volume, SimpleNamespace(vertebrae=vertebrae), None)  # type: ignore[arg-type]
    if cal is None:
        return None
    line = truth["hu_to_bmd"]
    return float((cal.slope * at_hu + cal.intercept) - (line["slope"] * at_hu + line["intercept"]))


def rod_lines(case: Path) -> list[str]:
    """One line per rod candidate of the case's synchronous search (see the module doc)."""
    truth = json.loads((case / "truth.json").read_text())
    volume = load_ct(case)
    definition = load_definition()
    posterior = max(v["centroid_lps_mm"][1] for v in truth["vertebrae"]) + SYNC_MIN_POSTERIOR_MM
    lines = []
    for r in find_rods(volume, definition, posterior):
        along = rod_along(volume, r.centre_lps_mm, definition.rod_diameter_mm / 2, *r.slice_range) \
            if r.slice_range is not None else None
        near = [f"{t['density_mg_cm3']:.0f} mg/cm3 rod, {t['hu']:.1f} HU" for t in truth["calibration_phantom"]["rods"]
                if np.hypot(r.centre_lps_mm[0] - t["centre_lps_mm"][0], r.centre_lps_mm[1] - t["centre_lps_mm"][1]) < 9]
        lines.append(f"  ({r.centre_lps_mm[0]:.1f}, {r.centre_lps_mm[1]:.1f}) sampled {r.hu:.1f} HU on {r.n_slices} "
                     f"slices, spread {r.hu_spread:.1f}; along its stretch "
                     f"{'-' if along is None else f'{along[0]:.1f} HU ({along[2]} slices)'}; "
                     f"{near[0] if near else 'no phantom rod'}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sets", nargs="+", type=Path)
    parser.add_argument("--hu", type=float, default=150.0, help="HU at which the lines are compared")
    parser.add_argument("--rods", action="store_true", help="list each case's rod candidates")
    args = parser.parse_args(argv)
    errors: dict[str, float] = {}
    without = 0
    for s in args.sets:
        for case in sorted(p for p in s.iterdir() if (p / "truth.json").is_file()):
            if not json.loads((case / "truth.json").read_text()).get("calibration_phantom"):
                continue
            err = line_error(case, args.hu)
            name = f"{s.name}/{case.name}"
            print(f"{name}: {'no line' if err is None else f'{err:+.1f} mg/cm3'}", flush=True)
            if args.rods:
                print("\n".join(rod_lines(case)), flush=True)
            if err is None:
                without += 1
            else:
                errors[name] = err
    values = np.array(list(errors.values()))
    worst = sorted(errors.items(), key=lambda kv: -abs(kv[1]))[:5]
    print(f"cases with a phantom: {len(errors) + without}; with a line: {len(errors)}; without: {without}")
    if len(values):
        print(f"line error at {args.hu:.0f} HU: MAE {np.abs(values).mean():.2f} mg/cm3, mean {values.mean():+.2f}, "
              f"largest {', '.join(f'{k} {v:+.1f}' for k, v in worst)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
