"""The anatomical-variant set of docs/segmentation/README.md: phantoms with 11 or 13 rib pairs, a lumbarised S1 or
a sacralised L5, whose right answer may be "uncertain" (kept out of the synthetic test sets for that reason).

    python -m service.offline.evaluation.variants var/variants --cases 8 --seed 4242
    bmd-node evaluate segmentation var/variants --out var/variants_report

Case i is ``random_spec(default_rng([seed, i]), **VARIANTS[i % len(VARIANTS)])``: the variant, region and slice
thickness are fixed per case, everything else (anatomy, habitus, noise, pixel spacing ...) is drawn.  Each case is
written by the phantom's own writer (``write_phantom``: ``case_NN/dicom/``, ``labels.nii.gz``, ``truth.json``), which
``bmd-node evaluate segmentation`` reads; a case with a truth.json is kept as it is.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from service.offline.phantom.api import PhantomSpec, generate, random_spec, write_phantom

logger = logging.getLogger(__name__)

SEED = 4242
VARIANTS: tuple[Mapping[str, Any], ...] = (
    {"rib_pairs": 11, "lumbar_variant": "normal", "region": "abdomen", "slice_thickness_mm": 1.0},
    {"rib_pairs": 13, "lumbar_variant": "normal", "region": "chest-abdomen", "slice_thickness_mm": 2.0},
    {"rib_pairs": 12, "lumbar_variant": "lumbarised_s1", "region": "abdomen", "slice_thickness_mm": 3.0},
    {"rib_pairs": 12, "lumbar_variant": "sacralised_l5", "region": "chest-abdomen", "slice_thickness_mm": 5.0},
    {"rib_pairs": 11, "lumbar_variant": "normal", "region": "chest-abdomen", "slice_thickness_mm": 3.0},
    {"rib_pairs": 13, "lumbar_variant": "normal", "region": "abdomen", "slice_thickness_mm": 5.0},
    {"rib_pairs": 12, "lumbar_variant": "lumbarised_s1", "region": "chest-abdomen", "slice_thickness_mm": 1.0},
    {"rib_pairs": 12, "lumbar_variant": "sacralised_l5", "region": "abdomen", "slice_thickness_mm": 2.0},
)
"""One anatomical variant per case: four with 11/13 rib pairs, four transitional lumbosacral; abdomen and
chest-abdomen (both show the thoracolumbar junction and the sacrum); 1, 2, 3 and 5 mm slices."""


def variant_spec(index: int, seed: int = SEED, **overrides: Any) -> PhantomSpec:
    """The spec of case ``index``; ``overrides`` (e.g. a smaller grid for a quick look) go over the variant."""
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    return random_spec(np.random.default_rng([seed, index]), **{**VARIANTS[index % len(VARIANTS)], **overrides})


def write_variants(out: Path, n: int = len(VARIANTS), seed: int = SEED, **overrides: Any) -> list[Path]:
    """Cases ``out/case_00`` ... ``case_{n-1}``; returns their folders."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    out.mkdir(parents=True, exist_ok=True)
    cases = []
    for index in range(n):
        case = out / f"case_{index:02d}"
        if not (case / "truth.json").is_file():
            spec = variant_spec(index, seed, **overrides)
            phantom = generate(spec)
            write_phantom(phantom, case)
            logger.info("variant case %s: %s, shape %s", case.name, VARIANTS[index % len(VARIANTS)],
                        phantom.volume.shape)
        cases.append(case)
    return cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for the case_NN/ folders")
    parser.add_argument("--cases", type=int, default=len(VARIANTS))
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--rows", type=int, default=None,
                        help="rows = columns of every case (default: the spec's; fewer for a quick look)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    overrides = {} if args.rows is None else {"rows": args.rows, "columns": args.rows}
    for case in write_variants(args.out, args.cases, args.seed, **overrides):
        print(case)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
