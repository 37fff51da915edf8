"""Chest fields whose top cuts through C7 or T1: what the first rib pair reads there, and how the labelling names them.

    python -m service.offline.evaluation.cut_top write var/cut_top --cases 24 --seed 16100
    python -m service.offline.evaluation.label_replay record var/cut_top --cache var/label_cache_cut_top
    python -m service.offline.evaluation.cut_top report --cache var/label_cache_cut_top

A chest CT starts at or a little above the lung apices, which lie about at T1: the top of the field can cut C7 or
T1. The phantom's own chest fields start 5-30 mm above the apex, so they show C7 whole or cut high; this set cuts
through C7 (even cases) or T1 (odd cases) at 20, 35 or 50 % of the body's height from its top (the slices above are
removed from a chest phantom whose field began 5 mm above C7), at 1, 2 or 3 mm slices; cases 6-11 have 11 rib
pairs, 18-23 13 (a rib on L1), the others 12 (each level and cut in each group of six).

``report`` prints per recorded case the body cut by the top of the field (its reference level, its visible height
against the first complete body's), whether it reads a rib pair (a rib on both sides), its rib pair as a fraction
of the pair below and of the scan's typical pair
(the ratios ``label_cues.weak_pair_above`` reads), and the names the current labelling gives (identified, confident,
confidently wrong, as ``label_replay replay`` scores them).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np

from service.domain.levels import VertebraLevel as V
from service.offline.evaluation.label_replay import recorded_cases, reference_level, score
from service.offline.evaluation.narrow_fov import sub_volume
from service.offline.phantom.api import Phantom, generate, random_spec, write_phantom
from service.segmentation import classes as cls
from service.segmentation import label_cues
from service.segmentation.labelling import label_bodies

FRACTIONS = (0.2, 0.35, 0.5)
THICKNESS_MM = (1.0, 2.0, 3.0)
RIB_PAIRS = (12, 11, 12, 13)


def cut_through(phantom: Phantom, level: V, fraction: float) -> Phantom:
    """The phantom without the slices above the plane ``fraction`` of ``level``'s body height below its top."""
    body = cls.phantom_body_levels(phantom.labels) == int(level)
    ks = np.nonzero(body.any(axis=(0, 1)))[0]
    superior_up = phantom.volume.affine_lps[2, 2] > 0  # LPS z grows towards the head
    top, bottom = (ks.max(), ks.min()) if superior_up else (ks.min(), ks.max())
    cut = int(np.rint(top + fraction * (bottom - top)))
    box = (slice(None), slice(None), slice(0, cut + 1) if superior_up else slice(cut, None))
    return dataclasses.replace(phantom, volume=sub_volume(phantom.volume, box),
                               labels=np.ascontiguousarray(phantom.labels[box]),
                               instance_numbers=phantom.instance_numbers[box[2]] if phantom.instance_numbers else ())


def rib_pairs_and_thickness(i: int, turn: str) -> tuple[int, float]:
    """Case ``i``'s rib pairs and slice thickness: ``group`` as in the module doc; ``parity``, the first design of
    session 22 (every T1 cut has 11 or 13 rib pairs, every C7 cut 12; 1 mm for cases 0-5 and 18-23, 2 mm for 6-11,
    3 mm for 12-17), kept so that its run can be repeated."""
    if turn == "parity":
        return (12, 11, 12, 13)[i % 4], THICKNESS_MM[(i // 6) % len(THICKNESS_MM)]
    return RIB_PAIRS[(i // 6) % len(RIB_PAIRS)], THICKNESS_MM[(i // 3) % len(THICKNESS_MM)]


def write_set(out: Path, cases: int, seed: int, turn: str = "group") -> None:
    for i in range(cases):
        folder = out / f"case_{i:02d}"
        if (folder / "truth.json").is_file():
            continue
        level = (V.C7, V.T1)[i % 2]
        fraction = FRACTIONS[(i // 2) % len(FRACTIONS)]
        ribs, thickness = rib_pairs_and_thickness(i, turn)
        spec = random_spec(np.random.default_rng([seed, i]), region="chest", fov_top_level=V.C7, rib_pairs=ribs,
                           lumbar_variant="normal", rows=256, columns=256, pixel_spacing_mm=1.4, feet_first=False,
                           slice_thickness_mm=thickness, fracture_levels=())
        phantom = cut_through(generate(spec), level, fraction)
        write_phantom(phantom, folder)
        print(f"case {i}: top cut through {level.name} at {fraction:.0%}, {ribs} rib pairs, "
              f"{spec.slice_thickness_mm:g} mm, {phantom.volume.hu.shape}", flush=True)


def report(cache: Path) -> None:
    print("case | cut body (reference) | visible / first body mm | reads a rib pair | pair / pair below | "
          "pair / typical | identified / complete | confident | confidently wrong")
    for path, case in recorded_cases(cache):
        b = case.bodies
        top = b[0]
        if not (top.cut_by_fov and top.cut_top) or len(b) < 2:
            print(f"{path.stem} | no body cut by the top of the field")
            continue
        ref = reference_level(case, 0, max_mm=float("inf"))
        below = label_cues.pair_mm3(b[1])
        typical = label_cues.typical_pair_mm3(b)
        pair = label_cues.pair_mm3(top)
        s = score(case, label_bodies(b, case.sacrum_below).decisions)
        ratios = " | ".join(f"{pair / x:.2f}" if x else "nan" for x in (below, typical))
        print(f"{path.stem} | {V(ref).name if ref else '?'} | {top.height_mm:.0f} / {b[1].height_mm:.0f} | "
              f"{'yes' if top.rib_left and top.rib_right else 'no'} | {ratios} | {s.identified} / {s.complete} | "
              f"{s.confident} | {','.join(s.wrong_confident) or '-'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write")
    w.add_argument("out", type=Path)
    w.add_argument("--cases", type=int, default=24)
    w.add_argument("--seed", type=int, default=16100)
    w.add_argument("--rib-turn", choices=["group", "parity"], default="group")
    r = sub.add_parser("report")
    r.add_argument("--cache", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "write":
        write_set(args.out, args.cases, args.seed, args.rib_turn)
    else:
        report(args.cache)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
