"""Targeted reconstructions cut from a real CT: do confident level names survive a narrower field? (issue 16)

A real scan is segmented whole, then cut to square in-plane fields centred on its spine (optionally shifted to one
side) and to windows along the spine, as a targeted spine reconstruction or a short scan would show it, and
segmented again. Each body of a cut is matched to the whole scan's body with the nearest centroid (<= 12 mm).

The check needs no reference labels: two confident names for the same body of the same scan that differ cannot
both be right, so every **contradiction** (a confident name in the cut, a confident and different name in the whole
scan, neither body cut by the field) is at least one confidently wrong name. A cut whose names are uncertain, or
confident and equal to the whole scan's, passes. The whole scan's names are not taken as truth.  The uncertain
names of complete bodies are best guesses; how many equal and how many differ from a confident whole-scan name is
printed too (where the whole scan is right, that is how good the best guesses are).

    python -m service.offline.evaluation.real_crops ../shared/data/cptac_lscc_chest [--out report.json]
        [--overlay DIR] [--features]

The default grid: fields 90, 105, 130, 170 and 250 mm, centred and shifted 25 mm, over the whole length, the lower
and upper half and the middle; voxels are the scan's own (the affine's origin moves to the cut).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.domain.segmentation import SpineSegmentation
from service.domain.volume import CTVolume
from service.offline.evaluation.label_features import describe, recorded_features
from service.offline.evaluation.narrow_fov import sub_volume
from service.offline.evaluation.segmentation import load_ct, overlay_png
from service.segmentation.inference import Segmenter, load_segmenter
from service.segmentation.settings import SegmentationSettings

MATCH_MM = 12.0
FIELDS_MM = (90.0, 105.0, 130.0, 170.0, 250.0)
SHIFTS_MM = (0.0, 25.0)
WINDOWS = ((0.0, 1.0), (0.0, 0.5), (0.4, 1.0), (0.2, 0.75))
"""Fractions of the scan's slices, from its first slice."""


@dataclass(frozen=True)
class Cut:
    field_mm: float
    shift_mm: float
    window: tuple[float, float]

    def label(self) -> str:
        lo, hi = self.window
        return f"{self.field_mm:.0f} mm, shift {self.shift_mm:+.0f} mm, slices {lo:.2f}-{hi:.2f}"


@dataclass(frozen=True)
class Named:
    name: str
    uncertain: bool
    cut_by_fov: bool
    centroid_lps_mm: tuple[float, float, float]


def _named(seg: SpineSegmentation) -> list[Named]:
    return [Named(v.level.name, v.level_uncertain, v.cut_by_fov, v.centroid_lps_mm) for v in seg.vertebrae]


def spine_centre_index(volume: CTVolume, bodies: list[Named]) -> tuple[float, float]:
    """In-plane array index of the mean body centroid."""
    ijk = volume.lps_to_index(np.array([b.centroid_lps_mm for b in bodies]))
    return float(ijk[:, 0].mean()), float(ijk[:, 1].mean())


def cut_volume(volume: CTVolume, centre_ij: tuple[float, float], cut: Cut) -> CTVolume:
    """The scan's own voxels inside the cut; the affine's origin moved to the cut's first voxel."""
    sx, sy, _ = volume.spacing_mm
    hx, hy = int(cut.field_mm / 2 / sx), int(cut.field_mm / 2 / sy)
    i0 = max(0, int(centre_ij[0] + cut.shift_mm / sx) - hx)
    j0 = max(0, int(centre_ij[1]) - hy)
    nz = volume.shape[2]
    k0, k1 = round(cut.window[0] * nz), round(cut.window[1] * nz)
    return sub_volume(volume, (slice(i0, i0 + 2 * hx), slice(j0, j0 + 2 * hy), slice(k0, k1)))


@dataclass(frozen=True)
class CutOutcome:
    cut: Cut
    rows: list[dict[str, Any]]
    """Per body of the cut: its name, uncertain, cut by the field, the whole scan's name (None: no match)."""

    @property
    def contradictions(self) -> int:
        return sum(1 for r in self.rows if r["contradiction"])

    @property
    def confident_agreeing(self) -> int:
        return sum(1 for r in self.rows if r["whole"] == r["name"] and not r["uncertain"] and not r["cut_by_fov"])

    def best_guesses(self, agreeing: bool) -> int:
        """Uncertain names of complete bodies that equal (``agreeing``) or differ from the whole scan's confident
        name of the same complete body."""
        return sum(1 for r in self.rows if r["uncertain"] and not r["cut_by_fov"] and r["whole"] is not None
                   and r["whole_uncertain"] is False and not r["whole_cut_by_fov"]
                   and (r["whole"] == r["name"]) == agreeing)


def compare(cut: Cut, whole: list[Named], narrow: list[Named]) -> CutOutcome:
    rows = []
    for b in narrow:
        d = [float(np.linalg.norm(np.subtract(b.centroid_lps_mm, w.centroid_lps_mm))) for w in whole]
        j = int(np.argmin(d)) if d else -1
        match = whole[j] if j >= 0 and d[j] <= MATCH_MM else None
        contradiction = (match is not None and not b.uncertain and not match.uncertain and not b.cut_by_fov
                         and not match.cut_by_fov and b.name != match.name)
        rows.append({"name": b.name, "uncertain": b.uncertain, "cut_by_fov": b.cut_by_fov,
                     "whole": None if match is None else match.name,
                     "whole_uncertain": None if match is None else match.uncertain,
                     "whole_cut_by_fov": None if match is None else match.cut_by_fov, "contradiction": contradiction})
    return CutOutcome(cut, rows)


def default_cuts() -> list[Cut]:
    return [Cut(f, s, w) for f, s, w in itertools.product(FIELDS_MM, SHIFTS_MM, WINDOWS)]


def _segment(segmenter: Segmenter, volume: CTVolume, features: list[str] | None) -> SpineSegmentation:
    """The segmentation; with ``features`` (a list), what the labelling step saw per body is appended to it."""
    with recorded_features() as calls:
        seg = segmenter.segment(volume)
    if features is not None and calls:
        features.extend(describe(*calls[-1]))
    return seg


def run(case: Path, cuts: list[Cut], segmenter: Segmenter, overlay_dir: Path | None = None,
        features: list[str] | None = None) -> tuple[list[Named], list[CutOutcome]]:
    """The whole scan's names and each cut's comparison; ``overlay_dir``: a sagittal/coronal PNG per cut there;
    ``features``: a list that receives, for the whole scan and each cut, what the labelling step saw per body."""
    volume = load_ct(case)
    if features is not None:
        features.append("whole scan:")
    whole = _named(_segment(segmenter, volume, features))
    if not whole:
        raise ValueError(f"no vertebral body found in the whole scan {case}")
    centre = spine_centre_index(volume, whole)
    outcomes = []
    for i, c in enumerate(cuts):
        narrow = cut_volume(volume, centre, c)
        if features is not None:
            features.append(f"cut_{i:02d} ({c.label()}):")
        seg = _segment(segmenter, narrow, features)
        outcomes.append(compare(c, whole, _named(seg)))
        if overlay_dir is not None:
            overlay_dir.mkdir(parents=True, exist_ok=True)
            overlay_png(narrow, seg, None, overlay_dir / f"cut_{i:02d}.png", f"{case.name}: {c.label()}")
    return whole, outcomes


def _row_text(r: dict[str, Any]) -> str:
    mark = "!!" if r["contradiction"] else ""
    return f"{r['name']}{'?' if r['uncertain'] else ''}{'(cut)' if r['cut_by_fov'] else ''}={r['whole']}{mark}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("case", type=Path)
    ap.add_argument("--out", type=Path, default=None, help="write the outcomes as JSON here")
    ap.add_argument("--overlay", type=Path, default=None, help="write a PNG per cut (cut_NN.png) to this folder")
    ap.add_argument("--features", action="store_true",
                    help="print what the labelling step saw per body (rib volumes, votes, field) for every cut")
    args = ap.parse_args(argv)
    segmenter = load_segmenter(SegmentationSettings(device="cpu"))
    features: list[str] | None = [] if args.features else None
    whole, outcomes = run(args.case, default_cuts(), segmenter, args.overlay, features)
    if features is not None:
        print("\n".join(features))
    print("whole scan: " + " ".join(f"{b.name}{'?' if b.uncertain else ''}" for b in whole))
    for o in outcomes:
        print(f"{o.cut.label()}: " + " ".join(_row_text(r) for r in o.rows))
    total = sum(o.contradictions for o in outcomes)
    agreeing = sum(o.confident_agreeing for o in outcomes)
    bodies = sum(len(o.rows) for o in outcomes)
    guesses = {k: sum(o.best_guesses(k) for o in outcomes) for k in (True, False)}
    print(f"{len(outcomes)} cuts, {bodies} bodies: {total} confident names contradicting the whole scan's, "
          f"{agreeing} confident and agreeing; best guesses (uncertain, complete) equal to the whole scan's "
          f"confident name: {guesses[True]}, different: {guesses[False]}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "case": str(args.case), "whole": [dataclasses.asdict(b) for b in whole],
            "cuts": [{"cut": dataclasses.asdict(o.cut), "rows": o.rows} for o in outcomes],
            "contradictions": total, "confident_agreeing": agreeing, "bodies": bodies,
            "best_guesses_agreeing": guesses[True], "best_guesses_differing": guesses[False]}, indent=1))
    return 0 if total == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
