"""CLI: ``bmd-node phantom --out DIR --seed N [options]``.

Registered by service/cli/offline_commands.py, which imports this module only when the ``phantom`` command runs
(so the generator's imports here cost the node's own commands nothing)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from service.offline.phantom import density
from service.offline.phantom.api import PhantomSpec, generate, random_spec, write_phantom


def register(root_subparsers: Any) -> None:
    p = root_subparsers.add_parser(
        "phantom",
        help="write a synthetic CT phantom series with known anatomy and bone density",
        description="Writes DIR/dicom/*.dcm (CT Image Storage), DIR/labels.nii.gz and DIR/truth.json.",
    )
    add_arguments(p)
    p.set_defaults(func=run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same phantom)")
    p.add_argument("--region", choices=["chest", "abdomen", "chest-abdomen"], default="chest")
    p.add_argument("--slice-thickness", type=float, default=1.0, metavar="MM", help="0.6-5 mm (default 1)")
    p.add_argument("--pixel-spacing", type=float, default=0.7, metavar="MM", help="0.5-0.98 mm (default 0.7)")
    p.add_argument("--rows", type=int, default=512)
    p.add_argument("--columns", type=int, default=512)
    p.add_argument("--kvp", type=int, choices=density.SUPPORTED_KVP, default=density.REFERENCE_KVP,
                   help="tube voltage; 80 kVp as in low-dose protocols (noisier)")
    p.add_argument("--contrast", action="store_true", help="portal-venous IV contrast")
    p.add_argument("--low-dose", action="store_true", help="low-dose noise level")
    p.add_argument("--noise-free", action="store_true", help="no quantum noise (tests)")
    p.add_argument("--feet-first", action="store_true", help="feet-first supine (FFS) instead of HFS")
    p.add_argument("--jpeg2000", action="store_true", help="JPEG 2000 lossless transfer syntax")
    p.add_argument("--calibration-phantom", choices=["k2hpo4", "hydroxyapatite"], default=None,
                   help="QCT calibration rods under the patient")
    p.add_argument("--fracture", action="append", default=[], metavar="LEVEL",
                   help="compression fracture at LEVEL (repeatable), e.g. --fracture L1")
    p.add_argument("--fracture-kind", choices=["wedge", "biconcave", "crush"], default=None)
    p.add_argument("--rib-pairs", type=int, choices=[11, 12, 13], default=12)
    p.add_argument("--lumbar-variant", choices=["normal", "lumbarised_s1", "sacralised_l5"], default="normal")
    p.add_argument("--scoliosis", type=float, default=0.0, metavar="DEG", help="Cobb angle of a mild scoliosis")
    p.add_argument("--bone-island", default=None, metavar="LEVEL", help="sclerotic bone island in LEVEL")
    p.add_argument("--pedicle-screws", action="append", default=[], metavar="LEVEL",
                   help="pedicle screws at LEVEL (repeatable)")
    p.add_argument("--sex", choices=["F", "M"], default=None)
    p.add_argument("--age", type=float, default=None, metavar="YEARS")
    p.add_argument("--category", choices=["normal", "osteopenia", "osteoporosis"], default=None)
    p.add_argument("--bmd", type=float, default=None, metavar="MG_CM3",
                   help="force the L1-L2 mean trabecular BMD (mg/cm3); other levels keep the patient's gradient")
    p.add_argument("--habitus", choices=["slim", "average", "obese"], default=None)
    p.add_argument("--arms-in-fov", action="store_true", default=None)
    p.add_argument("--no-table", action="store_true")
    p.add_argument("--noise-scale", type=float, default=1.0)
    p.add_argument("--scanner-gain", type=float, default=None, metavar="G",
                   help="HU scale of the scanner (HU' = G * HU + offset; default drawn from the seed, ~1 +- 0.01)")
    p.add_argument("--scanner-offset", type=float, default=None, metavar="HU",
                   help="HU offset of the scanner (default drawn from the seed, ~0 +- 3 HU)")
    p.add_argument("--random", action="store_true",
                   help="draw every unspecified option at random from the seed (training-style variety)")


def spec_from_args(args: argparse.Namespace) -> PhantomSpec:
    values: dict[str, Any] = {
        "seed": args.seed,
        "region": args.region,
        "slice_thickness_mm": args.slice_thickness,
        "pixel_spacing_mm": args.pixel_spacing,
        "rows": args.rows,
        "columns": args.columns,
        "kvp": args.kvp,
        "contrast": args.contrast,
        "low_dose": args.low_dose,
        "noise_free": args.noise_free,
        "feet_first": args.feet_first,
        "calibration_phantom": args.calibration_phantom,
        "fracture_levels": tuple(args.fracture),
        "fracture_kind": args.fracture_kind,
        "rib_pairs": args.rib_pairs,
        "lumbar_variant": args.lumbar_variant,
        "scoliosis_deg": args.scoliosis,
        "bone_island_level": args.bone_island,
        "pedicle_screw_levels": tuple(args.pedicle_screws),
        "sex": args.sex,
        "age_years": args.age,
        "category": args.category,
        "l1_l2_bmd_mg_cm3": args.bmd,
        "habitus": args.habitus,
        "arms_in_fov": args.arms_in_fov,
        "table": not args.no_table,
        "noise_scale": args.noise_scale,
        "scanner_gain": args.scanner_gain,
        "scanner_offset_hu": args.scanner_offset,
    }
    if args.random:
        return random_spec(np.random.default_rng(args.seed), seed=args.seed)
    return PhantomSpec(**values)


def run(args: argparse.Namespace) -> int:
    try:
        spec = spec_from_args(args)
    except ValueError as exc:
        print(f"bmd-node phantom: {exc}")
        return 2
    t0 = time.perf_counter()
    phantom = generate(spec)
    t1 = time.perf_counter()
    paths = write_phantom(phantom, args.out, jpeg2000=args.jpeg2000)
    t2 = time.perf_counter()
    n_dcm = sum(1 for p in paths if p.suffix == ".dcm")
    l12 = [v for v in phantom.truth["vertebrae"] if v["level"] in ("L1", "L2")]
    print(json.dumps({
        "out": str(args.out),
        "slices": n_dcm,
        "region": spec.region,
        "patient": {k: phantom.truth["patient"][k] for k in ("sex", "age_years", "category", "l1_l2_bmd_mg_cm3")},
        "levels": [v["level"] for v in phantom.truth["vertebrae"]],
        "l1_l2": [{"level": v["level"], "bmd_mg_cm3": v["bmd_mg_cm3"], "trabecular_hu": v["trabecular_hu"]}
                  for v in l12],
        "render_s": round(t1 - t0, 2),
        "write_s": round(t2 - t1, 2),
    }, indent=1))
    return 0
