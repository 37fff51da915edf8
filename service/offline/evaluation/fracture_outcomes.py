"""The fracture check's outcome per level against the phantom truth, on cases of a BMD set, with the node's
segmentation cached between runs (to compare fracture-check settings quickly; not a held-out evaluation).

    python -m service.offline.evaluation.bmd_set var/bmd_tune --seed 2657 --start 6 --cases 1   # ... each case
    python -m service.offline.evaluation.fracture_outcomes var/bmd_tune --cache var/seg_cache [--all]
        [--set endplates.IMAGE_RESOLUTION_FACTOR=0.25 ...] [--bmd]

Prints the fractured levels and the levels called fractured (with the check's detail; ``--all``: every not-measurable
level as well), then the counts of (truth, outcome) over the levels the check covers (T1-L5, not cut by the field of
view), and per truth Genant grade (from the truth's ``height_loss``) how many were called fractured. ``--set``
overrides a constant of ``service.measurement.endplates``, ``fracture_check``, ``fracture``, ``fracture_columns`` or
``roi`` for this run (tuning).
``--fractured`` keeps only the cases whose phantom has a fracture (a before/after comparison of the calls on a set
already evaluated, e.g. ``--fractured --set fracture.QUANTISATION_MARGIN=1.0``).
``--heights`` prints, per case, every level's mask and image heights as the check receives them (to record a case
in a test: ``tests/unit/measurement/test_fracture_posterior_slope.py``).
``--by-thickness`` adds, per slice thickness, the fractures called and the unfractured levels called fractured or
not measurable (where the check is limited: ``fracture_check.THICK_SLICE_LIMIT_MM``).
``--bmd`` adds, per slice thickness, the measured levels' BMD error against the truth (levels matched by name: the
tuning sets' names are right) and the exclusion reasons of the unfractured levels (the ROI's tuning, session 12).
The tuning of session 8 used cases 0-8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 44, 46 and 52 of seed 2657; that of
session 11 cases 0-29 of seed 2657 rendered with the session-11 phantom (``bmd_set var/bmd_tune12 --cases 30 --seed
2657``).
"""

from __future__ import annotations

import argparse
import json
import pickle
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.calibration import assess as assess_module
from service.calibration.assess import assess_bmd
from service.calibration.settings import BmdSettings
from service.domain.levels import VertebraLevel
from service.domain.results import VertebraMeasurement
from service.domain.segmentation import SpineSegmentation
from service.domain.volume import CTVolume
from service.measurement import endplates, fracture, fracture_check, fracture_columns, roi
from service.offline.evaluation.bmd import fracture_outcome, genant_grade
from service.offline.evaluation.segmentation import load_ct
from service.segmentation.inference import load_segmenter
from service.segmentation.settings import SegmentationSettings


def cached_segmentation(case: Path, volume: CTVolume, cache: Path | None) -> SpineSegmentation:
    cached = cache / f"{case.name}.pkl" if cache is not None else None
    if cached is not None and cached.is_file():
        segmentation = pickle.loads(cached.read_bytes())  # our own cache of our own objects
        assert isinstance(segmentation, SpineSegmentation)
        return segmentation
    segmentation = load_segmenter(SegmentationSettings(device="cpu")).segment(volume)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_bytes(pickle.dumps(segmentation))
    return segmentation


class LevelTally:
    """Per slice thickness: the BMD errors of the measured levels and the exclusion reasons of unfractured ones."""

    def __init__(self) -> None:
        self.errors: defaultdict[float, list[float]] = defaultdict(list)
        self.excluded: defaultdict[float, Counter[str]] = defaultdict(Counter)
        self.intact: Counter[float] = Counter()

    def add(self, thickness_mm: float, m: VertebraMeasurement, truth: dict[str, Any]) -> None:
        if not truth or truth.get("cut_by_fov"):
            return
        if m.evaluable and m.bmd_mg_cm3 is not None:
            self.errors[thickness_mm].append(m.bmd_mg_cm3 - float(truth["bmd_mg_cm3"]))
        if not truth.get("fractured"):
            self.intact[thickness_mm] += 1
            if m.exclusion_reason is not None:
                self.excluded[thickness_mm][m.exclusion_reason.value] += 1

    def lines(self) -> list[str]:
        out = []
        for t in sorted(self.intact):
            e = np.asarray(self.errors[t])
            stats = f"MAE {np.abs(e).mean():.2f}, bias {e.mean():+.2f}" if e.size else "none measured"
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.excluded[t].items())) or "none"
            out.append(f"{t:g} mm: {e.size} levels measured ({stats} mg/cm3); unfractured {self.intact[t]}, "
                       f"excluded: {reasons}")
        return out


def outcomes(cases: list[Path], cache: Path | None, every_not_measurable: bool = False,
             tally: LevelTally | None = None, by_thickness: Counter[tuple[float, str, str]] | None = None,
             announce: bool = False) -> tuple[list[str], Counter[tuple[str, str]], Counter[tuple[int, str]]]:
    """(lines for the fractured and called levels, counts of (truth, outcome), counts of (truth grade, outcome));
    ``by_thickness`` also counts (slice thickness, truth, outcome)."""
    lines: list[str] = []
    counts: Counter[tuple[str, str]] = Counter()
    grades: Counter[tuple[int, str]] = Counter()
    for case in cases:
        if announce:  # before the heights --heights prints for it
            print(case.name)
        volume = load_ct(case)
        truth = json.loads((case / "truth.json").read_text())
        by_level = {v["level"]: v for v in truth["vertebrae"]}
        segmentation = cached_segmentation(case, volume, cache)
        result = assess_bmd(volume, segmentation, BmdSettings(calibration_store_dir=None)).result
        for m in result.vertebrae:
            t = by_level.get(m.level.name, {})
            if tally is not None:
                tally.add(float(truth["acquisition"]["slice_thickness_mm"]), m, t)
            status = fracture_outcome(m.fracture_status.value if m.fracture_status else None, m.fracture_detail)
            if status == "not checked":
                continue
            fracture = t.get("fracture") if t.get("fractured") else None
            counts[("fractured" if fracture else "intact", status)] += 1
            if by_thickness is not None:
                by_thickness[(float(truth["acquisition"]["slice_thickness_mm"]),
                              "fractured" if fracture else "intact", status)] += 1
            grades[(genant_grade(fracture["height_loss"]) if fracture else 0, status)] += 1
            if fracture or status == "fractured" or (every_not_measurable and status == "not measurable"):
                what = f"{fracture['kind']} {fracture['height_loss']:.2f}" if fracture else "intact"
                lines.append(f"{case.name} {m.level.name} {truth['acquisition']['slice_thickness_mm']} mm, "
                             f"truth {what} -> {status} | {m.fracture_detail}")
    return lines, counts, grades


@contextmanager
def printed_heights() -> Iterator[None]:
    """Within the block, print every level's mask and image heights (anterior, middle, posterior and the measurement
    step, mm) as the fracture check receives them (``--heights``: for recording a case in a test); the check itself
    is restored afterwards, as ``label_features.recorded_features`` does for the labelling step."""
    original = assess_module.classify_fractures

    def show(h: fracture.VertebralHeights | None) -> str:
        return "-" if h is None else (f"{h.anterior_mm:.1f} / {h.middle_mm:.1f} / {h.posterior_mm:.1f} "
                                      f"(step {h.resolution_mm:.2f})")

    def printing(heights: Mapping[VertebraLevel, fracture_check.LevelHeights], *args: Any, **kwargs: Any
                 ) -> dict[VertebraLevel, fracture_check.FractureAssessment]:
        for level, h in sorted(heights.items()):
            print(f"  {level.name}: mask {show(h.mask)}, image {show(h.image)} {h.reason}")
        return original(heights, *args, **kwargs)

    assess_module.classify_fractures = printing  # type: ignore[assignment]
    try:
        yield
    finally:
        assess_module.classify_fractures = original  # type: ignore[assignment]


TUNABLE = {"endplates": endplates, "fracture_check": fracture_check, "fracture": fracture,
           "fracture_columns": fracture_columns, "roi": roi}


def override(assignment: str) -> None:
    """Set ``module.NAME=value`` (a float) on one of the TUNABLE modules, for this process."""
    target, _, value = assignment.partition("=")
    module_name, _, name = target.partition(".")
    module = TUNABLE.get(module_name)
    if module is None or not hasattr(module, name) or not value:
        raise SystemExit(f"--set {assignment}: expected one of {sorted(TUNABLE)}.NAME=VALUE with an existing NAME")
    setattr(module, name, float(value))


def by_grade(grades: Counter[tuple[int, str]]) -> list[str]:
    """Called / all per truth grade, and the unfractured levels called fractured or not measurable."""
    out = []
    for grade in (1, 2, 3):
        n = sum(v for (g, _), v in grades.items() if g == grade)
        out.append(f"grade {grade}: called {grades[(grade, 'fractured')]} of {n}")
    n0 = sum(v for (g, _), v in grades.items() if g == 0)
    out.append(f"unfractured: called fractured {grades[(0, 'fractured')]} of {n0}, not measurable "
               f"{grades[(0, 'not measurable')]}")
    return out


def thickness_lines(counts: Counter[tuple[float, str, str]]) -> list[str]:
    """Per slice thickness: fractures called, and unfractured levels called fractured or not measurable."""
    out = []
    for t in sorted({k[0] for k in counts}):
        fractured = sum(n for (th, truth, _), n in counts.items() if th == t and truth == "fractured")
        intact = sum(n for (th, truth, _), n in counts.items() if th == t and truth == "intact")
        out.append(f"{t:g} mm: fractures called {counts[(t, 'fractured', 'fractured')]} of {fractured}; unfractured "
                   f"called fractured {counts[(t, 'intact', 'fractured')]} of {intact}, not measurable "
                   f"{counts[(t, 'intact', 'not measurable')]}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("set_dir", type=Path)
    parser.add_argument("--cache", type=Path, default=None, help="folder for the cached segmentations")
    parser.add_argument("--all", action="store_true", help="list every not-measurable level too")
    parser.add_argument("--set", action="append", default=[], metavar="MODULE.NAME=VALUE",
                        help="override a fracture-check constant for this run (tuning)")
    parser.add_argument("--bmd", action="store_true", help="BMD error and exclusions per slice thickness too")
    parser.add_argument("--by-thickness", action="store_true",
                        help="fractures called and unfractured levels called, per slice thickness")
    parser.add_argument("--heights", action="store_true",
                        help="print every level's mask and image heights as the fracture check receives them")
    parser.add_argument("--fractured", action="store_true",
                        help="only the cases whose phantom has a fracture (the spec's fracture_levels)")
    args = parser.parse_args(argv)
    for assignment in args.set:
        override(assignment)
    torch.set_num_threads(2)
    cases = sorted(p for p in args.set_dir.iterdir() if (p / "truth.json").is_file())
    if args.fractured:
        cases = [c for c in cases if json.loads((c / "truth.json").read_text())["spec"]["fracture_levels"]]
    tally = LevelTally() if args.bmd else None
    per_thickness: Counter[tuple[float, str, str]] | None = Counter() if args.by_thickness else None
    with printed_heights() if args.heights else nullcontext():
        lines, counts, grades = outcomes(cases, args.cache, args.all, tally, per_thickness, announce=args.heights)
    print("\n".join(lines))
    if per_thickness is not None:
        print("\n".join(thickness_lines(per_thickness)))
    if tally is not None:
        print("\n".join(tally.lines()))
    for (truth, status), n in sorted(counts.items()):
        print(f"{truth:9s} {status:15s} {n}")
    print("\n".join(by_grade(grades)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
