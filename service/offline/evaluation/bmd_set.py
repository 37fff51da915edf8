"""The BMD evaluation set of issue 15: phantoms at every kVp the node meets, with contrast, low dose, 1-5 mm slices,
sharp kernels, calibration rods, and one fracture in every other case, the grades cycling 1, 2, 3.

    python -m service.offline.evaluation.bmd_set var/bmd_set --cases 60 --seed 2612
    bmd-node evaluate bmd var/bmd_set --out docs/evaluation/bmd --device cpu

Case i (``random_spec(default_rng([seed, i]), ...)`` with these fixed): kVp 80/100/120/140 and slice thickness 1,
2, 3, 5, 1.25, 2.5 mm by ``acquisition_indices`` (balanced over fracture grades); contrast when i % 3 == 1; low dose
when i % 5 == 2; a sharp kernel (noise
scale 2.0, which the phantom writes as ConvolutionKernel SHARP) when (i // 4) % 3 == 0; K2HPO4 rods (the node's
default synchronous phantom definition: a site has one phantom, and the node reads the rods as that one) in every
case unless --no-rods; region abdomen or chest-abdomen in turn; 12 rib pairs and a
normal lumbosacral junction (the variant set is apart: its right answer may be "uncertain"). Even cases carry one
fracture at T11..L4 with the height loss of Genant grade (i // 2) % 3 + 1 (22.5 %, 32 % or 45 %), so 60 cases
hold 10 of each grade. Everything else (anatomy, density category, habitus, noise, bone islands, screws) is drawn.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from service.domain.levels import VertebraLevel
from service.offline.phantom.api import generate, random_spec, write_phantom
from service.offline.phantom.density import SUPPORTED_KVP

SEED = 2612
KVPS = SUPPORTED_KVP
THICKNESS_MM = (1.0, 2.0, 3.0, 5.0, 1.25, 2.5)
GRADE_HEIGHT_LOSS = {1: 0.225, 2: 0.32, 3: 0.45}
"""Mid-range height loss of each Genant grade (20-25 %, 25-40 %, >= 40 %)."""
SHARP_NOISE_SCALE = 2.0
RODS = "k2hpo4"
FRACTURE_LEVELS = tuple(VertebraLevel(v) for v in range(VertebraLevel.T11, VertebraLevel.L4 + 1))


def acquisition_indices(i: int) -> tuple[int, int]:
    """(slice thickness index, kVp index) of case i. Fracture cases (even i, j = i // 2, grade j % 3 + 1) step
    through thickness and kVp by m = j // 3, so that every grade meets every thickness and every kVp; the others
    cycle apart. (Sets s5 and before used i % 6 and i % 4: grade was then tied to thickness and kVp, e.g. every
    grade 2 fracture at 3 mm.)"""
    j = i // 2
    if i % 2 == 0:
        m = j // 3
        return m % len(THICKNESS_MM), (m + j % 3) % len(KVPS)
    return j % len(THICKNESS_MM), (j + 1) % len(KVPS)


def case_overrides(i: int, rng: np.random.Generator, *, rods: bool, rows: int | None) -> dict[str, Any]:
    thickness, kvp = acquisition_indices(i)
    overrides: dict[str, Any] = {
        "kvp": KVPS[kvp], "contrast": i % 3 == 1, "low_dose": i % 5 == 2,
        "slice_thickness_mm": THICKNESS_MM[thickness], "region": ("abdomen", "chest-abdomen")[(i // 2) % 2],
        "rib_pairs": 12, "lumbar_variant": "normal", "calibration_phantom": RODS if rods else None,
        "fracture_levels": (), "feet_first": False,
    }
    if (i // 4) % 3 == 0:
        overrides["noise_scale"] = SHARP_NOISE_SCALE
    if i % 2 == 0:
        grade = (i // 2) % 3 + 1
        overrides["fracture_levels"] = (FRACTURE_LEVELS[int(rng.integers(len(FRACTURE_LEVELS)))],)
        overrides["fracture_height_loss"] = GRADE_HEIGHT_LOSS[grade]
        overrides["pedicle_screw_levels"] = ()
    if rows is not None:
        overrides.update(rows=rows, columns=rows, pixel_spacing_mm=380.0 / rows)
    return overrides


def write_set(out: Path, cases: int, seed: int = SEED, *, rods: bool = True, rows: int | None = None,
              start: int = 0) -> list[Path]:
    written = []
    for i in range(start, start + cases):
        folder = out / f"case_{i:02d}"
        if (folder / "truth.json").is_file():  # a case already written is kept as it is
            written.append(folder)
            continue
        rng = np.random.default_rng([seed, i])
        spec = random_spec(rng, **case_overrides(i, np.random.default_rng([seed, i, 1]), rods=rods, rows=rows))
        write_phantom(generate(spec), folder)
        written.append(folder)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--cases", type=int, default=60)
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--start", type=int, default=0, help="first case index (to grow a set)")
    p.add_argument("--rows", type=int, default=None, help="smaller images for smoke tests (field kept ~380 mm)")
    p.add_argument("--no-rods", action="store_true", help="no calibration rods (internal calibration)")
    args = p.parse_args(argv)
    for folder in write_set(args.out, args.cases, args.seed, rods=not args.no_rods, rows=args.rows,
                            start=args.start):
        print(folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
