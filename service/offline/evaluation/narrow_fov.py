"""Narrow-field set for the labelling confidence of issue 16: normal phantoms written whole, and the same volumes cut
in-plane to a square field centred on the spine (a targeted spine reconstruction's field of view), plus a summary of
``bmd-node evaluate segmentation`` reports (complete levels, identified, confident share, confident and wrong).

    python -m service.offline.evaluation.narrow_fov write var/narrow_fov --cases 4 --field-mm 100
    bmd-node evaluate segmentation var/narrow_fov/wide --out var/narrow_fov_wide --device cpu
    bmd-node evaluate segmentation var/narrow_fov/narrow --out var/narrow_fov_narrow --device cpu
    python -m service.offline.evaluation.narrow_fov summary var/narrow_fov_narrow/report.json [--by-variant SET_DIR]

Case i: ``random_spec(default_rng([777, i]))`` with 12 rib pairs, a normal lumbosacral junction, abdomen or
chest-abdomen in turn, 256 x 256 at 1.4 mm. The cut keeps the phantom's own grid and shifts the affine's origin, so
the narrow volume is the same voxels as the wide one inside the field.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from service.domain.volume import CTVolume
from service.offline.phantom.api import Phantom, generate, random_spec, write_phantom
from service.segmentation.classes import phantom_body_levels

SEED = 777


def cut_in_plane(phantom: Phantom, field_mm: float, shift_mm: float = 0.0) -> Phantom:
    """The phantom cut in-plane to a square field of ``field_mm`` centred on the spine (shifted ``shift_mm`` along
    the first array axis): the same voxels on the phantom's own grid, the affine's origin moved to the cut."""
    volume, labels = phantom.volume, phantom.labels
    spacing = np.linalg.norm(volume.affine_lps[:3, :3], axis=0)
    centre = np.argwhere(phantom_body_levels(labels) > 0)[:, :2].mean(axis=0)
    centre[0] += shift_mm / spacing[0]
    half = (int(field_mm / 2 / spacing[0]), int(field_mm / 2 / spacing[1]))
    start = (max(0, int(centre[0]) - half[0]), max(0, int(centre[1]) - half[1]))
    cut = (slice(start[0], int(centre[0]) + half[0]), slice(start[1], int(centre[1]) + half[1]), slice(None))
    return dataclasses.replace(phantom, volume=sub_volume(volume, cut), labels=np.ascontiguousarray(labels[cut]))


def sub_volume(volume: CTVolume, box: tuple[slice, slice, slice]) -> CTVolume:
    """The volume's own voxels inside ``box`` (step-1 slices), the affine's origin moved to the box's first voxel;
    the per-slice UIDs and paths of the slices kept."""
    start = np.array([s.indices(n)[0] for s, n in zip(box, volume.shape, strict=True)], dtype=np.float64)
    affine = volume.affine_lps.copy()
    affine[:3, 3] = affine[:3, :3] @ start + affine[:3, 3]
    return dataclasses.replace(volume, hu=np.ascontiguousarray(volume.hu[box]), affine_lps=affine,
                               sop_instance_uids=volume.sop_instance_uids[box[2]],
                               source_paths=volume.source_paths[box[2]])


def write_sets(out: Path, cases: int, field_mm: float) -> None:
    for i in range(cases):
        spec = random_spec(np.random.default_rng([SEED, i]), rib_pairs=12, lumbar_variant="normal",
                           region=("abdomen", "chest-abdomen")[i % 2], rows=256, columns=256, pixel_spacing_mm=1.4,
                           feet_first=False)
        phantom = generate(spec)
        write_phantom(phantom, out / "wide" / f"case_{i:02d}")
        narrow = cut_in_plane(phantom, field_mm)
        write_phantom(narrow, out / "narrow" / f"case_{i:02d}")
        print(f"case {i}: {spec.region}, {phantom.volume.shape} -> {narrow.volume.hu.shape}")


def variant_of(case_dir: Path) -> str:
    """"normal", "rib pairs N", the lumbosacral variant or "short last rib" of a written case (its truth.json)."""
    variants = json.loads((case_dir / "truth.json").read_text())["variants"]
    if variants["rib_pairs"] != 12:
        return f"rib pairs {variants['rib_pairs']}"
    if variants["lumbar_variant"] != "normal":
        return str(variants["lumbar_variant"])
    return "short last rib" if min(variants.get("last_rib_scale", [1.0])) < 1.0 else "normal"


def summarise_by_variant(report: dict[str, Any], set_dir: Path) -> dict[str, dict[str, float]]:
    """``summarise`` per anatomical variant of the cases (read from ``set_dir``/CASE/truth.json)."""
    groups: dict[str, dict[str, Any]] = {}
    for name, case in report["per_case"].items():
        groups.setdefault(variant_of(set_dir / name), {})[name] = case
    return {variant: summarise({"per_case": cases}) for variant, cases in sorted(groups.items())}


def summarise(report: dict[str, Any]) -> dict[str, float]:
    """Complete (fully visible) levels: how many, identified, confident, confident and wrong."""
    complete = identified = confident = wrong = 0
    for case in report["per_case"].values():
        for entry in case["per_level"].values():
            if not entry.get("fully_visible"):
                continue
            complete += 1
            if entry.get("predicted"):
                identified += bool(entry.get("identified"))
                if not entry.get("uncertain"):
                    confident += 1
                    wrong += not entry.get("identified")
    return {"complete": complete, "identified": identified, "confident": confident, "confident_wrong": wrong,
            "confident_share": confident / max(complete, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    write = commands.add_parser("write")
    write.add_argument("out", type=Path)
    write.add_argument("--cases", type=int, default=4)
    write.add_argument("--field-mm", type=float, default=100.0)
    summary = commands.add_parser("summary")
    summary.add_argument("metrics", type=Path, help="report.json of bmd-node evaluate segmentation")
    summary.add_argument("--by-variant", type=Path, default=None, metavar="SET_DIR",
                         help="also split the figures by the cases' anatomical variant (the evaluated set folder)")
    args = parser.parse_args(argv)
    if args.command == "write":
        write_sets(args.out, args.cases, args.field_mm)
    else:
        report = json.loads(args.metrics.read_text())
        print(json.dumps(summarise(report), indent=1))
        if args.by_variant is not None:
            print(json.dumps(summarise_by_variant(report, args.by_variant), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
