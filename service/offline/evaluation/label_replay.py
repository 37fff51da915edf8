"""Replay the labelling rules on recorded segmentations: the per-body features the labelling step received, the
body centroids and the reference are recorded once per case (the slow part: the models), then the current
``label_bodies`` names the bodies again in a second.  For tuning and for checking a rule change on many cases; the
held-out figures still come from ``bmd-node evaluate segmentation`` / ``evaluate bmd`` on a set made afterwards.

    python -m service.offline.evaluation.label_replay record SET [SET ...] --cache var/label_cache
    python -m service.offline.evaluation.label_replay replay --cache var/label_cache [--cases [--features]]
    python -m service.offline.evaluation.label_replay first-pairs --cache var/label_cache
    python -m service.offline.evaluation.label_replay last-ribs --cache var/label_cache

SET: a case folder or a folder of case folders (as ``evaluate segmentation`` reads them).  ``replay`` prints, over
the reference bodies fully in the field of view, the confidently wrong names, the identification rate of the
best-guess names (VerSe rule), and the confident share, per group (the case folder's parent: ``whole``/``narrow`` in a
labelling set, the set's name otherwise); ``--cases`` also lists each case with a wrong or uncertain name
(``--features``: with what the labelling step saw per body).
``first-pairs`` prints, per case, the first complete body with a rib on both sides: its reference name, its weaker
side's rib volume as a fraction of the scan's typical pair and of the pair below, and whether the weak-pair rule
(``label_cues.weak_pair_above``) read it as C7's; then the ranges of that fraction per reference name.
``last-ribs`` prints, per case, the last rib-bearing body and the rib readings of the complete body below it (what
the T12 anchor takes for rib-free), then their range per reference name of that body.  ``transitions`` prints, per
group, where the network's thoracic/lumbar votes change against the reference T12.
"""

from __future__ import annotations

import argparse
import pickle
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.domain.levels import VertebraLevel
from service.offline.evaluation.label_features import describe, recorded_features
from service.offline.evaluation.segmentation import case_dirs, identification, load_ct, load_reference
from service.segmentation import inference, label_cues
from service.segmentation.labelling import BodyFeatures, LevelDecision, label_bodies
from service.segmentation.settings import SegmentationSettings


@dataclass(frozen=True)
class RecordedCase:
    name: str
    group: str
    bodies: list[BodyFeatures]
    sacrum_below: bool
    centroids_lps: list[tuple[float, float, float] | None]
    """Per body (cranial -> caudal): the centroid of its mask in the node's segmentation (None: left unlabelled)."""
    s1_centroid_lps: tuple[float, float, float] | None
    """The S1 body the fine stage split off below a body named L5 (not a labelled body of its own)."""
    reference_lps: dict[int, tuple[float, float, float]]
    fully_visible: dict[int, bool]


def record(case: Path, segmenter: inference.Segmenter) -> RecordedCase | None:
    volume = load_ct(case)
    with recorded_features() as calls:
        seg = segmenter.segment(volume)
    if not calls:
        return None
    bodies, sacrum_below, result = calls[-1]
    by_level = {int(v.level): v.centroid_lps_mm for v in seg.vertebrae}
    centroids: list[tuple[float, float, float] | None] = []
    for d in result.decisions:
        centroids.append(by_level.pop(int(d.level)) if d.level is not None and int(d.level) in by_level else None)
    s1 = by_level.get(int(VertebraLevel.S1))
    ref = load_reference(case, volume)
    return RecordedCase(case.name, case.parent.name, bodies, sacrum_below, centroids, s1,
                        {k: tuple(float(x) for x in v) for k, v in ref.centroids_lps.items()},  # type: ignore[misc]
                        dict(ref.fully_visible))


@dataclass(frozen=True)
class CaseScore:
    complete: int
    identified: int
    confident: int
    wrong_confident: list[str]
    uncertain_reasons: list[str]


def score(case: RecordedCase, decisions: list[LevelDecision]) -> CaseScore:
    """The VerSe rule over the reference bodies fully in view, for these names of the recorded bodies."""
    pred: dict[int, np.ndarray] = {}
    uncertain: dict[int, bool] = {}
    named = list(zip(decisions, case.centroids_lps, strict=True))
    if case.s1_centroid_lps is not None and decisions and decisions[-1].level == VertebraLevel.L5:
        named.append((LevelDecision(VertebraLevel.S1, decisions[-1].uncertain, decisions[-1].reason),
                      case.s1_centroid_lps))
    for d, c in named:
        if d.level is None or c is None or int(d.level) in pred:
            continue
        pred[int(d.level)] = np.asarray(c)
        uncertain[int(d.level)] = d.uncertain
    ref = {k: np.asarray(v) for k, v in case.reference_lps.items()}
    visible = [v for v, ok in case.fully_visible.items() if ok]
    ident = identification(pred, ref, visible)
    wrong = [VertebraLevel(v).name for v in visible if not ident[v] and not uncertain.get(v, True)]
    confident = sum(1 for v in visible if v in pred and not uncertain[v])
    reasons = sorted({d.reason for d in decisions if d.uncertain and d.reason})
    return CaseScore(len(visible), sum(ident.values()), confident, wrong, reasons)


def _record_main(sets: list[Path], cache: Path) -> None:
    segmenter = inference.load_segmenter(SegmentationSettings(device="cpu"))
    cache.mkdir(parents=True, exist_ok=True)
    for s in sets:
        for case in case_dirs(s):
            out = cache / f"{s.name}__{case.parent.name}__{case.name}.pkl"
            if out.is_file():
                continue
            recorded = record(case, segmenter)
            out.write_bytes(pickle.dumps(recorded))
            print(f"recorded {out.name}: {'no body' if recorded is None else len(recorded.bodies)}", flush=True)


class _Unpickler(pickle.Unpickler):
    """Our own cache of our own objects; a record written by ``python -m`` names this module ``__main__``."""

    def find_class(self, module: str, name: str) -> object:
        if module == "__main__" and name == "RecordedCase":
            return RecordedCase
        return super().find_class(module, name)


def _load(path: Path) -> RecordedCase | None:
    with path.open("rb") as f:
        case = _Unpickler(f).load()
    assert case is None or isinstance(case, RecordedCase)
    return case


def _replay_main(cache: Path, list_cases: bool, features: bool = False) -> None:
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    for path in sorted(cache.glob("*.pkl")):
        case = _load(path)
        if case is None:
            continue
        result = label_bodies(case.bodies, case.sacrum_below)
        s = score(case, result.decisions)
        group = path.name.split("__")[0] + "/" + case.group
        t = totals[group]
        t[0] += 1
        t[1] += s.complete
        t[2] += s.identified
        t[3] += s.confident
        t[4] += len(s.wrong_confident)
        if list_cases and (s.wrong_confident or s.identified < s.complete or s.confident < s.complete):
            print(f"{path.stem}: {s.identified}/{s.complete} identified, {s.confident} confident, "
                  f"confidently wrong {s.wrong_confident or '-'}; {' | '.join(s.uncertain_reasons)}")
            if features:
                print("\n".join(describe(case.bodies, case.sacrum_below, result)))
    print("group | cases | complete levels | identified | confident | confidently wrong")
    for group, (n, complete, ident, conf, wrong) in sorted(totals.items()):
        print(f"{group} | {n} | {complete} | {ident / max(complete, 1):.1%} | {conf / max(complete, 1):.1%} | {wrong}")


def reference_level(case: RecordedCase, index: int, max_mm: float = 20.0) -> int | None:
    """The reference level whose centroid lies nearest the body's (within ``max_mm``: the VerSe 20 mm), else None."""
    c = case.centroids_lps[index]
    if c is None or not case.reference_lps:
        return None
    level, d = min(((k, float(np.linalg.norm(np.asarray(v) - np.asarray(c)))) for k, v in case.reference_lps.items()),
                   key=lambda kv: kv[1])
    return level if d <= max_mm else None


def _reference_name(case: RecordedCase, index: int) -> str:
    """The reference level nearest the body's centroid (within the VerSe 20 mm), else '?'."""
    level = reference_level(case, index)
    return "?" if level is None else VertebraLevel(level).name


def recorded_cases(cache: Path) -> Iterator[tuple[Path, RecordedCase]]:
    """The recorded cases of the cache (those with a body), in file order."""
    for path in sorted(cache.glob("*.pkl")):
        case = _load(path)
        if case is not None:
            yield path, case


def _first_pairs_main(cache: Path) -> None:
    by_name: dict[str, list[float]] = defaultdict(list)
    for path, case in recorded_cases(cache):
        b = case.bodies
        first = next((i for i, x in enumerate(b) if label_cues.is_complete_pair(x)), None)
        typical = label_cues.typical_pair_mm3(b)
        if first is None or first + 1 >= len(b) or typical <= 0.0:
            continue
        weaker, below = label_cues.pair_mm3(b[first]), label_cues.pair_mm3(b[first + 1])
        name = _reference_name(case, first)
        by_name[name].append(weaker / typical)
        weak = label_cues.weak_pair_above(b[first], b[first + 1], typical)
        print(f"{path.stem}: {name} {weaker / typical:.2f} of typical, {weaker / max(below, 1e-6):.2f} of the pair "
              f"below; read as C7's: {weak}")
    for name, ratios in sorted(by_name.items()):
        print(f"first complete pair on {name}: {len(ratios)} cases, {min(ratios):.2f}-{max(ratios):.2f} of typical")


def _last_ribs_main(cache: Path) -> None:
    by_name: dict[str, list[float]] = defaultdict(list)
    for path, case in recorded_cases(cache):
        b = case.bodies
        bearing = [i for i, x in enumerate(b) if x.rib_bearing]
        if not bearing or bearing[-1] + 1 >= len(b) or b[bearing[-1] + 1].cut_by_fov:
            continue
        last, below = bearing[-1], b[bearing[-1] + 1]
        reading = max(below.rib_left_mm3, below.rib_right_mm3)
        name = _reference_name(case, last + 1)
        by_name[name].append(reading)
        print(f"{path.stem}: last rib-bearing body {_reference_name(case, last)} ({b[last].rib_left_mm3:.0f} / "
              f"{b[last].rib_right_mm3:.0f} mm3), the body below {name} reads {below.rib_left_mm3:.0f} / "
              f"{below.rib_right_mm3:.0f} mm3")
    for name, values in sorted(by_name.items()):
        v = np.sort(np.asarray(values))
        print(f"rib-free body below the last rib-bearing one, reference {name}: {len(v)} cases, larger side "
              f"{v.min():.0f}-{v.max():.0f} mm3 (median {np.median(v):.0f}); " + " ".join(f"{x:.0f}" for x in v[-8:]))


def _transitions_main(cache: Path) -> None:
    """Where the network's thoracic/lumbar votes change (``label_cues.vote_transition``, the transition the
    labelling's appearance cue uses): the last body voting thoracic, its reference level minus T12, per group; and
    how many of these name a body with a rib pair lumbar (the transition above the last rib pair)."""
    offsets: dict[str, Counter[str]] = defaultdict(Counter)
    for path, case in recorded_cases(cache):
        group = path.name.split("__")[0] + "/" + case.group
        last_thoracic = label_cues.vote_transition(case.bodies)
        if last_thoracic is None:
            offsets[group]["no single transition"] += 1
            continue
        name = _reference_name(case, last_thoracic)
        if name == "?":
            offsets[group]["body off the reference"] += 1
            continue
        offsets[group][f"{int(VertebraLevel[name]) - int(VertebraLevel.T12):+d}"] += 1
        if any(b.rib_left and b.rib_right for b in case.bodies[last_thoracic + 1:]):
            offsets[group]["rib pair below the transition"] += 1
    for group, counts in sorted(offsets.items()):
        print(f"{group}: last body voting thoracic, reference level - T12: "
              + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("sets", nargs="+", type=Path)
    rec.add_argument("--cache", type=Path, required=True)
    rep = sub.add_parser("replay")
    rep.add_argument("--cache", type=Path, required=True)
    rep.add_argument("--cases", action="store_true")
    rep.add_argument("--features", action="store_true", help="with --cases: what the labelling saw per body")
    pairs = sub.add_parser("first-pairs")
    pairs.add_argument("--cache", type=Path, required=True)
    last = sub.add_parser("last-ribs")
    last.add_argument("--cache", type=Path, required=True)
    trans = sub.add_parser("transitions")
    trans.add_argument("--cache", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "record":
        _record_main(args.sets, args.cache)
    elif args.command == "replay":
        _replay_main(args.cache, args.cases, args.features)
    elif args.command == "last-ribs":
        _last_ribs_main(args.cache)
    elif args.command == "transitions":
        _transitions_main(args.cache)
    else:
        _first_pairs_main(args.cache)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
