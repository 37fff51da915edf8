"""Refit the length prior of the fine-stage body cutting (``THORACIC_LENGTH_FROM_SECTION``,
``LUMBAR_LENGTH_FROM_SECTION`` in service/segmentation/instances.py) on a calibration set.

    python -m service.offline.evaluation.length_prior var/calibration_set --cases 16 --seed 7 --out fit.json

The calibration set is ``write_testset(DIR, n=16, seed=7)`` (the coarse model's training seed: training-side data,
not a test set); missing cases are generated first.  Every case is segmented with the **fixed** prior (the fine
stage's ``CutRules`` with ``length_from_section=False``: one expected length per vote group); for every interior piece
of the cut spine column (both ends at a cut, not at the column's ends), as the dynamic programme sees it, the
length along the centreline (bins x bin size), the median of its windowed cross-section (``section_mm2``, the
largest cross-section within 27 mm) and its mean thoracic vote are recorded.  Pieces under 40 mm are fitted by least
squares, length = a + b * sqrt(section), per vote group (thoracic: vote >= 0.5).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from service.offline.evaluation.segmentation import case_dirs, load_ct
from service.offline.evaluation.synthetic_testset import write_testset
from service.segmentation import inference, instances
from service.segmentation.settings import SegmentationSettings

logger = logging.getLogger(__name__)

MAX_PIECE_MM = 40.0
"""Pieces at least this long are left out of the fit (two bodies the fixed prior did not cut apart)."""
THORACIC_VOTE = 0.5
"""A piece whose mean thoracic vote reaches this is fitted in the thoracic group, below it in the lumbar group."""


@dataclass(frozen=True)
class Piece:
    """One interior piece of a cut spine column, as the dynamic programme measures it."""

    length_mm: float
    section_mm2: float
    """Median over the piece's bins of the windowed (largest within 27 mm) cross-section."""
    thoracic_vote: float

    def __post_init__(self) -> None:
        if self.length_mm <= 0:
            raise ValueError(f"length_mm must be positive, got {self.length_mm}")
        if self.section_mm2 < 0:
            raise ValueError(f"section_mm2 must be >= 0, got {self.section_mm2}")
        if not 0.0 <= self.thoracic_vote <= 1.0:
            raise ValueError(f"thoracic_vote must be in [0, 1], got {self.thoracic_vote}")


@dataclass(frozen=True)
class LengthFit:
    """length_mm = a + b * sqrt(section_mm2), least squares over ``pieces`` pieces."""

    a: float
    b: float
    pieces: int
    residual_sd_mm: float
    constant_sd_mm: float
    """SD of the lengths around their mean: the residual with one length for the whole group."""


def interior_pieces(cuts: Sequence[int], vote: npt.NDArray[np.float64], section_mm2: npt.NDArray[np.float64],
                    bin_mm: float) -> list[Piece]:
    """The pieces between two cuts (``instances._choose_cuts``' answer), measured as its ``piece_cost`` does."""
    return [Piece(length_mm=(b - a) * bin_mm, section_mm2=float(np.median(section_mm2[a + 1: b])),
                  thoracic_vote=float(np.clip(np.mean(vote[a + 1: b]), 0.0, 1.0)))
            for a, b in itertools.pairwise(cuts) if b - a > 1]


def fit_group(pieces: Sequence[Piece]) -> LengthFit:
    if len(pieces) < 3:
        raise ValueError(f"pieces: at least 3 are needed for a line, got {len(pieces)}")
    length = np.array([p.length_mm for p in pieces])
    design = np.stack([np.ones(len(pieces)), np.sqrt([p.section_mm2 for p in pieces])], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, length, rcond=None)
    residual = length - design @ np.array([a, b])
    return LengthFit(float(a), float(b), len(pieces), float(np.std(residual, ddof=2)), float(np.std(length, ddof=1)))


def fit_length_prior(pieces: Sequence[Piece], max_length_mm: float = MAX_PIECE_MM) -> dict[str, LengthFit]:
    """Per vote group ('thoracic', 'lumbar'), the line through the pieces shorter than ``max_length_mm``; a group
    with fewer than 3 such pieces is left out."""
    kept = [p for p in pieces if p.length_mm < max_length_mm]
    groups = {"thoracic": [p for p in kept if p.thoracic_vote >= THORACIC_VOTE],
              "lumbar": [p for p in kept if p.thoracic_vote < THORACIC_VOTE]}
    return {name: fit_group(group) for name, group in groups.items() if len(group) >= 3}


@contextmanager
def recording_fine_pieces(fixed_prior: bool = True) -> Iterator[list[Piece]]:
    """While the block runs, the fine stage cuts with the fixed prior (``fixed_prior``) and every interior piece
    it makes is appended to the yielded list (module attributes patched in this process, restored at the end)."""
    rules = (dataclasses.replace(instances.FINE_RULES, length_from_section=False) if fixed_prior
             else instances.FINE_RULES)
    split, choose, inference_rules = instances._split_component, instances._choose_cuts, inference.FINE_RULES
    pieces: list[Piece] = []
    fine = [False]

    def recording_split(mask: Any, body_prob: Any, disc_prob: Any, thoracic_share: Any, spacing: float,
                        cut_rules: instances.CutRules) -> Any:
        fine[0] = cut_rules is rules
        try:
            return split(mask, body_prob, disc_prob, thoracic_share, spacing, cut_rules)
        finally:
            fine[0] = False

    def recording_choose(score: Any, vote: Any, bin_mm: float, open_start: bool, open_end: bool,
                         section_mm2: Any = None, length_from_section: bool = False) -> list[int]:
        cuts = choose(score, vote, bin_mm, open_start, open_end, section_mm2, length_from_section)
        if fine[0] and section_mm2 is not None:
            pieces.extend(interior_pieces(cuts, vote, section_mm2, bin_mm))
        return cuts

    instances._split_component, instances._choose_cuts = recording_split, recording_choose  # type: ignore[assignment]
    inference.FINE_RULES = rules
    try:
        yield pieces
    finally:
        instances._split_component, instances._choose_cuts, inference.FINE_RULES = split, choose, inference_rules


def measure_pieces(dataset: Path, settings: SegmentationSettings, fixed_prior: bool = True) -> list[Piece]:
    segmenter = inference.load_segmenter(settings)
    pieces: list[Piece] = []
    for case in case_dirs(dataset):
        volume = load_ct(case)
        with recording_fine_pieces(fixed_prior) as found:
            segmenter.segment(volume)
        logger.info("%s: %d interior pieces", case.name, len(found))
        pieces += found
    return pieces


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset", type=Path, help="calibration set folder (case_NN/ folders)")
    p.add_argument("--cases", type=int, default=0, help="generate this many cases first (write_testset); 0: none")
    p.add_argument("--seed", type=int, default=7, help="seed of the generated cases (the calibration set: 7)")
    p.add_argument("--current-prior", action="store_true",
                   help="cut with the prior in instances.py instead of the fixed one (to check a fit)")
    p.add_argument("--bundle", type=Path, default=Path("models/vertebra_seg"))
    p.add_argument("--fine-bundle", type=Path, default=Path("models/vertebra_body_fine"))
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--out", type=Path, default=None, help="also write the fit and the pieces here (JSON)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.cases:
        write_testset(args.dataset, n=args.cases, seed=args.seed)
    settings = SegmentationSettings(bundle_dir=args.bundle, fine_bundle_dir=args.fine_bundle, device=args.device)
    pieces = measure_pieces(args.dataset, settings, fixed_prior=not args.current_prior)
    fit = {name: dataclasses.asdict(f) for name, f in fit_length_prior(pieces).items()}
    print(json.dumps({"fit": fit, "pieces": len(pieces)}, indent=2))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"fit": fit, "pieces": [dataclasses.asdict(p) for p in pieces]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
