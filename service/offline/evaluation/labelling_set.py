"""The held-out labelling set of issue 16: whole-torso phantoms and targeted spine reconstructions (half each), with
rib and lumbosacral variants and fractures, written after the last change to the labelling.

    python -m service.offline.evaluation.labelling_set var/labelling_set --cases 60
    bmd-node evaluate segmentation var/labelling_set/whole --out var/labelling_whole --device cpu
    bmd-node evaluate segmentation var/labelling_set/narrow --out var/labelling_narrow --device cpu
    python -m service.offline.evaluation.narrow_fov summary var/labelling_whole/report.json   # and narrow

Case i draws ``random_spec(default_rng([seed, i]), ...)`` on a 256 x 256 grid at 1.4 mm with:
  * even i: a whole field (region abdomen, chest-abdomen, chest in turn), written to ``whole/``;
  * odd i: a targeted spine reconstruction, written to ``narrow/``: the same kind of phantom cut in-plane to a
    square field of 90, 105, 120, 150 or 200 mm (by i // 2 % 5), centred on the spine or, every third case,
    shifted 10-25 mm to one side; 6 to 9 levels between T6 and S1 in head-foot; a sharp kernel in two of three;
  * every 5th case 11 or 13 rib pairs, every 7th a lumbarised S1 or a sacralised L5 (in turn within each half);
  * every 4th case a fracture (Genant grade 1-3 in turn) at T11..L3, besides the generator's own draws.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from service.domain.levels import VertebraLevel as V
from service.offline.evaluation.narrow_fov import cut_in_plane
from service.offline.phantom.api import generate, random_spec, write_phantom

SEED = 16016
FIELDS_MM = (90.0, 105.0, 120.0, 150.0, 200.0)
PIXEL_MM = 1.4
ROWS = 256
WHOLE_REGIONS = ("abdomen", "chest-abdomen", "chest")
GRADE_LOSS = (0.225, 0.32, 0.45)


def case_overrides(i: int, rng: np.random.Generator) -> dict[str, Any]:
    narrow = i % 2 == 1
    o: dict[str, Any] = {"rows": ROWS, "columns": ROWS, "pixel_spacing_mm": PIXEL_MM, "feet_first": False,
                         "rib_pairs": 12, "lumbar_variant": "normal"}
    # each variant in turn within each half (whole: even i, targeted: odd i); until session 8 the turn ran over all
    # cases, so whole fields drew only 11 rib pairs and lumbarised S1s, targeted fields only 13 and sacralised L5s
    if i % 5 == 0:
        o["rib_pairs"] = (11, 13)[(i // 10) % 2]
    if i % 7 == 0:
        o["lumbar_variant"] = ("lumbarised_s1", "sacralised_l5")[(i // 14) % 2]
    if i % 4 == 0:
        o["fracture_levels"] = (V(int(rng.integers(V.T11, V.L3 + 1))),)
        o["fracture_height_loss"] = GRADE_LOSS[(i // 4) % 3]
        o["pedicle_screw_levels"] = ()
    if narrow:
        n_levels = int(rng.integers(6, 10))
        top = int(rng.integers(V.T6, V.S1 - n_levels + 2))
        o.update(region="chest-abdomen", fov_top_level=V(top), fov_bottom_level=V(top + n_levels - 1),
                 slice_thickness_mm=float(rng.choice([1.0, 1.5, 2.0, 3.0])))
        if i % 3 != 2:
            o["noise_scale"] = 2.0  # the phantom writes ConvolutionKernel SHARP
    else:
        o["region"] = WHOLE_REGIONS[(i // 2) % 3]
    return o


def write_set(out: Path, cases: int, seed: int = SEED) -> None:
    for i in range(cases):
        narrow = i % 2 == 1
        folder = out / ("narrow" if narrow else "whole") / f"case_{i:02d}"
        if (folder / "truth.json").is_file():
            continue
        rng = np.random.default_rng([seed, i, 1])
        overrides = case_overrides(i, rng)
        try:
            phantom = generate(random_spec(np.random.default_rng([seed, i]), **overrides))
        except ValueError as exc:  # an impossible combination (e.g. a fracture outside the field): say and skip
            print(f"case {i}: skipped ({exc})")
            continue
        if narrow:
            field = FIELDS_MM[(i // 2) % len(FIELDS_MM)]
            shift = float(rng.uniform(10.0, 25.0)) * (1 if rng.random() < 0.5 else -1) if i % 3 == 0 else 0.0
            phantom = cut_in_plane(phantom, field, shift)
        write_phantom(phantom, folder)
        print(f"case {i}: {'narrow' if narrow else 'whole'} {overrides.get('region')} {phantom.volume.hu.shape}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--cases", type=int, default=60)
    p.add_argument("--seed", type=int, default=SEED)
    args = p.parse_args(argv)
    write_set(args.out, args.cases, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
