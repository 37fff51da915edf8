"""CLI: ``bmd-node train segmentation`` and ``bmd-node evaluate segmentation``.

The CLI imports this module on every call to register the commands: torch, MONAI and the training / evaluation
modules are imported inside the command that needs them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

from service.segmentation.settings import SegmentationSettings


def _add_recipe_arguments(p: argparse.ArgumentParser, *, out: str, seed: int, cases: int, iterations: int,
                          threads: int, cache: str, threads_help: str | None = None) -> None:
    """The options both training recipes have (their defaults are the recipes' config defaults)."""
    p.add_argument("--out", type=Path, default=Path(out), help="bundle folder to write")
    p.add_argument("--seed", type=int, default=seed)
    p.add_argument("--cases", type=int, default=cases, help="synthetic phantoms in the training set")
    p.add_argument("--iterations", type=int, default=iterations)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=threads, help=threads_help)
    p.add_argument("--cache", type=Path, default=Path(cache))
    p.add_argument("--minutes", type=float, default=None, help="optional wall-clock cap")


def register_train(train_subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = train_subparsers.add_parser("segmentation", help="train the coarse vertebra model (MONAI bundle)")
    _add_recipe_arguments(p, out="models/vertebra_seg", seed=7, cases=160, iterations=1100, threads=1,
                          cache="var/train_cache/segmentation",
                          threads_help="torch CPU threads while training (on a shared, oversubscribed CPU more are "
                                       "slower)")
    p.add_argument("--real-data", type=Path, default=None,
                   help="folder of real labelled CT (TotalSegmentator-style or VerSe-style case folders)")
    p.add_argument("--real-weight", type=float, default=0.5, help="fraction of patches drawn from real cases")
    p.add_argument("--render-mm", type=float, default=3.0,
                   help="render the phantoms on this grid and area-average to 3 mm (finer = more realistic, slower)")
    p.add_argument("--strong-pv", action="store_true",
                   help="stronger partial-volume and low-density augmentation (fine-tuning experiments)")
    p.add_argument("--init", type=Path, default=None, help="start from this bundle's weights (fine-tuning)")
    p.set_defaults(func=_train)
    f = train_subparsers.add_parser("segmentation-fine",
                                    help="train the fine body model (stage 2, 1.25 mm; MONAI bundle)")
    _add_recipe_arguments(f, out="models/vertebra_body_fine", seed=21, cases=240, iterations=4000, threads=2,
                          cache="var/train_cache")
    f.set_defaults(func=_train_fine)


def _train_fine(args: argparse.Namespace) -> int:
    # heavy: torch/MONAI load only when this command runs
    from service.offline.training.fine_segmentation import FineTrainConfig, train_fine  # noqa: PLC0415

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cfg = FineTrainConfig(out=args.out, seed=args.seed, cases=args.cases, iterations=args.iterations,
                          batch_size=args.batch_size, learning_rate=args.lr, threads=args.threads, cache=args.cache,
                          minutes=args.minutes)
    log = train_fine(cfg)
    print(json.dumps({k: v for k, v in log.items() if k != "loss_curve"}, indent=2))
    return 0


def _train(args: argparse.Namespace) -> int:
    from service.offline.training.segmentation import TrainConfig, train  # noqa: PLC0415  # heavy: torch/MONAI

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cfg = TrainConfig(out=args.out, seed=args.seed, cases=args.cases, iterations=args.iterations,
                      batch_size=args.batch_size, learning_rate=args.lr, threads=args.threads, cache=args.cache,
                      real_data=args.real_data, real_weight=args.real_weight, minutes=args.minutes,
                      init=args.init, render_mm=args.render_mm, strong_pv=args.strong_pv)
    log = train(cfg)
    print(json.dumps({k: v for k, v in log.items() if k != "loss_curve"}, indent=2))
    return 0


def register_evaluate(evaluate_subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = evaluate_subparsers.add_parser(
        "segmentation", help="body Dice + identification rate per level, overlay PNG per case")
    p.add_argument("dataset", type=Path, help="a case folder or a folder of case folders")
    p.add_argument("--out", type=Path, default=None, help="folder for report.json and overlay PNGs")
    p.add_argument("--bundle", type=Path, default=Path("models/vertebra_seg"))
    p.add_argument("--fine-bundle", type=Path, default=Path("models/vertebra_body_fine"))
    p.add_argument("--no-fine", action="store_true", help="bodies from the coarse model only (no stage 2)")
    p.add_argument("--backend", default="bmd-node", choices=["bmd-node", "totalsegmentator"])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=_evaluate)
    b = evaluate_subparsers.add_parser(
        "bmd", help="the whole pipeline over phantom (and real) cases: BMD error, category agreement, fractures")
    b.add_argument("dataset", type=Path, help="a case folder or a folder of case folders (dicom/ + truth.json)")
    b.add_argument("--out", type=Path, required=True, help="folder for metrics.json, index.html and key images")
    b.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"], help="override [segmentation] device")
    b.set_defaults(func=_evaluate_bmd)


def _evaluate(args: argparse.Namespace) -> int:
    # heavy: torch/MONAI, nibabel and scipy load only when this command runs
    from service.offline.evaluation.segmentation import evaluate_dataset  # noqa: PLC0415
    from service.segmentation.inference import load_segmenter  # noqa: PLC0415

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    segmenter = load_segmenter(SegmentationSettings(backend=args.backend, bundle_dir=args.bundle,
                                                    fine_bundle_dir=args.fine_bundle, fine_stage=not args.no_fine,
                                                    device=args.device))
    summary = evaluate_dataset(args.dataset, args.out, segmenter)
    short = {k: v for k, v in summary.items() if k != "per_case"}
    short["per_case"] = {
        name: {k: r[k] for k in ("identification_rate", "mean_dice_fully_visible", "wrong_and_confident",
                                 "seconds", "notes")} | {
            "levels": {lv: {k: e.get(k) for k in ("identified", "uncertain", "centroid_error_mm", "dice",
                                                  "body_dice_any_name") if k in e} for lv, e in r["per_level"].items()}}
        for name, r in summary["per_case"].items()}
    print(json.dumps(short, indent=2, default=str))
    return 0


def _evaluate_bmd(args: argparse.Namespace) -> int:
    # heavy: the screening recipe (torch, MONAI, highdicom) loads only when this command runs
    from service.config import load_config  # noqa: PLC0415
    from service.offline.evaluation.bmd import evaluate  # noqa: PLC0415
    from service.pipeline.screening import build_screening_pipeline  # noqa: PLC0415

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    config = load_config(getattr(args, "config", None))  # the CLI's --config option
    if args.device is not None:
        config = dataclasses.replace(config, segmentation=dataclasses.replace(config.segmentation,
                                                                              device=args.device))
    metrics = evaluate(args.dataset, args.out, config, build_screening_pipeline(config))
    print(json.dumps({k: v for k, v in metrics.items() if k not in ("per_case", "per_level")}, indent=2))
    return 0
