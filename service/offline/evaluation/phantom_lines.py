"""The synchronous phantom's HU -> BMD line against the phantom's physics, case by case, on BMD sets.

    python -m service.offline.evaluation.phantom_lines var/bmd_set_s10 [var/bmd_set_s11 ...] [--hu 150]

For every case whose truth declares a calibration phantom, the node's synchronous calibration runs on the CT as the
pipeline runs it (rods searched posterior to the vertebral bodies, here placed from the truth centroids, so the
segmentation model is not part of the figure); the line's error is the BMD it gives at ``--hu`` minus the BMD the
truth line (the phantom's physics for this acquisition: kVp, patient size, scanner gain and offset) gives there.
A case without a line falls back to another calibration in the node and is counted as such. Prints one line per
case, then the count with a line, the mean absolute error and the largest errors.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from service.calibration.phantom import synchronous_calibration
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sets", nargs="+", type=Path)
    parser.add_argument("--hu", type=float, default=150.0, help="HU at which the lines are compared")
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
