"""CLI commands of the site-model package (registered by service/cli/main.py).

    bmd-node cohort synthetic --out DIR --patients N --seed S [--with-ct K]
    bmd-node train models --cohort CSV --out MODELS_DIR [--deep] [--seed S] [--curve site|per_patient]
    bmd-node evaluate models --cohort CSV --models MODELS_DIR --out REPORT_DIR [--bootstrap N]
    bmd-node models list|activate|deactivate [--registry DIR] ...

The CLI imports this module on every call to register the commands, so it imports at the top only what is cheap
(the registry and the configuration); a command's numpy/scipy/sklearn work is imported when that command runs.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from service.config import load_config
from service.site_models.registry import (
    REGISTRY_ENV,
    RegistryError,
    activate,
    deactivate,
    list_models,
    resolve_registry_dir,
)

logger = logging.getLogger(__name__)


def register_cohort(cohort_subparsers: Any) -> None:
    p = cohort_subparsers.add_parser("synthetic", help="write a synthetic cohort CSV (marked synthetic)")
    p.add_argument("--out", type=Path, required=True, help="output folder (cohort.csv is written there)")
    p.add_argument("--patients", type=int, default=700, help="number of patients (default 700)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--with-ct", type=int, default=0, metavar="K",
                   help="also render full phantom CT series for the first K rows (feature path end to end)")
    p.add_argument("--missing-level-probability", type=float, default=None,
                   help="probability that a level is not evaluable (default 0.02)")
    p.set_defaults(func=_cmd_cohort_synthetic)
    p = cohort_subparsers.add_parser(
        "features", help="extract per-level HU once (result.json / CT through the node pipeline) into a new CSV")
    p.add_argument("--cohort", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="output CSV with hu_T5..hu_L2 filled")
    p.add_argument("--skip-failed", action="store_true",
                   help="leave rows whose extraction fails without features instead of stopping")
    p.set_defaults(func=_cmd_cohort_features)


def register_train(train_subparsers: Any) -> None:
    p = train_subparsers.add_parser("models", help="train the site BMD models on a cohort (Xiong 2025 / Peng 2023)")
    p.add_argument("--cohort", type=Path, required=True, help="cohort CSV manifest")
    p.add_argument("--out", type=Path, required=True, help="model registry folder (outside the repository)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--curve", choices=("site", "per_patient"), default="site",
                   help="thoracolumbar curve slope for the calibrated chest model (default: site slope k)")
    p.add_argument("--deep", action="store_true", help="also train the 3D DenseNet / residual U-Net models")
    p.add_argument("--deep-epochs", type=int, default=None)
    p.add_argument("--deep-crop", type=int, default=None, help="crop edge in voxels (1 mm) for the deep models")
    p.add_argument("--device", default=None, help="torch device for the deep models (default: cuda if available)")
    p.add_argument("--version", default=None, help="version label (default: UTC timestamp)")
    p.set_defaults(func=_cmd_train)


def register_evaluate(evaluate_subparsers: Any) -> None:
    p = evaluate_subparsers.add_parser("models", help="evaluate registry models on a cohort; HTML report")
    p.add_argument("--cohort", type=Path, required=True)
    p.add_argument("--models", type=Path, required=True, help="model registry folder")
    p.add_argument("--out", type=Path, required=True, help="report folder (index.html, metrics.json, PNGs)")
    p.add_argument("--bootstrap", type=int, default=None, help="bootstrap resamples for the 3-class AUC CI")
    p.add_argument("--splits", default="train,validation,test")
    p.set_defaults(func=_cmd_evaluate)


def register(root_subparsers: Any) -> None:
    models = root_subparsers.add_parser("models", help="site model registry: list, activate, deactivate")
    sub = models.add_subparsers(dest="models_command", required=True)
    p = sub.add_parser("list", help="models in the registry (active ones marked)")
    _registry_arg(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_models_list)
    p = sub.add_parser("activate", help="use a model for the per-patient BMD / category (logged)")
    _registry_arg(p)
    p.add_argument("name")
    p.add_argument("--version", default=None, help="default: newest")
    p.set_defaults(func=_cmd_models_activate)
    p = sub.add_parser("deactivate", help="stop using a model (all active models with --all) (logged)")
    _registry_arg(p)
    p.add_argument("name", nargs="?")
    p.add_argument("--all", action="store_true")
    p.set_defaults(func=_cmd_models_deactivate)


def _registry_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--registry", type=Path, default=None,
                   help="registry folder (default: [site_models] registry_dir or $BMD_NODE_SITE_MODELS__REGISTRY_DIR)")


def _registry_from_args(args: argparse.Namespace) -> Path:
    registry = resolve_registry_dir(getattr(args, "registry", None))
    if registry is None:
        registry = _registry_from_config(getattr(args, "config", None))
    if registry is None:
        raise SystemExit(f"no registry folder: pass --registry, set {REGISTRY_ENV} or [site_models] registry_dir")
    return registry


def _registry_from_config(config_path: str | Path | None) -> Path | None:
    """``[site_models] registry_dir`` of the node configuration (``--config`` of the root parser, else default)."""
    try:
        settings = load_config(config_path)
    except Exception as exc:  # a broken config file is reported by the node itself; here we just cannot use it
        logger.warning("could not read the node configuration for [site_models] registry_dir: %s", exc)
        return None
    section = getattr(settings, "site_models", None)
    value = getattr(section, "registry_dir", None) if section is not None else None
    return Path(value) if value else None


def _cmd_cohort_synthetic(args: argparse.Namespace) -> int:
    # deferred: numpy and the phantom renderer (scipy) load only when this command runs
    from service.offline.cohort.synthetic import MISSING_LEVEL_PROBABILITY, write_synthetic_cohort  # noqa: PLC0415

    missing = MISSING_LEVEL_PROBABILITY if args.missing_level_probability is None else args.missing_level_probability
    path = write_synthetic_cohort(args.out, args.patients, args.seed, with_ct=args.with_ct,
                                  missing_level_probability=missing)
    print(f"SYNTHETIC cohort written: {path} ({args.patients} patients, seed {args.seed})")
    return 0


def _cmd_cohort_features(args: argparse.Namespace) -> int:
    # deferred: numpy and the node's pipeline load only when this command runs
    from service.offline.cohort.features import extract_features  # noqa: PLC0415
    from service.site_models.cohort import load_cohort, write_cohort  # noqa: PLC0415

    cohort = extract_features(load_cohort(args.cohort), on_error="skip" if args.skip_failed else "raise")
    path = write_cohort(args.out, cohort.rows)
    missing = sum(1 for r in cohort.rows if not r.hu_by_level)
    print(f"features written: {path} ({len(cohort.rows)} rows, {missing} without any evaluable level)")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from service.offline.cohort.training import train_models  # noqa: PLC0415  # deferred: numpy/sklearn training

    deep_options: dict[str, Any] = {}
    if args.deep_epochs is not None:
        deep_options["epochs"] = args.deep_epochs
    if args.deep_crop is not None:
        deep_options["crop_voxels"] = args.deep_crop
    if args.device is not None:
        deep_options["device"] = args.device
    entries = train_models(args.cohort, args.out, seed=args.seed, curve_mode=args.curve, deep=args.deep,
                           deep_options=deep_options, version=args.version)
    for e in entries:
        print(f"{e['name']:32s} {e['version']}  {e['task']:14s} -> {Path(args.out) / e['path']}")
    print(f"{len(entries)} models registered in {args.out} (none activated)")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    # deferred: scipy.stats, sklearn and matplotlib load only when this command runs
    from service.offline.cohort.evaluate import evaluate_registry  # noqa: PLC0415
    from service.offline.cohort.features import extract_features  # noqa: PLC0415
    from service.offline.cohort.metrics import BOOTSTRAP_RESAMPLES  # noqa: PLC0415
    from service.offline.cohort.report import write_report  # noqa: PLC0415
    from service.site_models.cohort import load_cohort  # noqa: PLC0415

    resamples = BOOTSTRAP_RESAMPLES if args.bootstrap is None else args.bootstrap
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    cohort = extract_features(load_cohort(args.cohort))
    evals = evaluate_registry(cohort, args.models, splits=splits, resamples=resamples)
    doc = write_report(args.out, cohort, evals, registry_dir=args.models, resamples=resamples)
    if doc["synthetic"]:
        print("SYNTHETIC DATA: the report is built on a synthetic cohort")
    for check in doc["acceptance"]["checks"]:
        status = "n/a" if check["passed"] is None else ("PASS" if check["passed"] else "FAIL")
        print(f"{status:4s} {check['check']}: {check['value']}")
    print(f"report: {Path(args.out) / 'index.html'}; metrics: {Path(args.out) / 'metrics.json'}")
    return 0


def _cmd_models_list(args: argparse.Namespace) -> int:
    models = list_models(_registry_from_args(args))
    if args.json:
        print(json.dumps(models, indent=2))
        return 0
    if not models:
        print("no models")
    for m in models:
        flag = "*" if m["active"] else " "
        syn = " SYNTHETIC" if m.get("synthetic") else ""
        print(f"{flag} {m['name']:32s} {m['version']:20s} {m['kind']:8s} {m['task']:14s}{syn}")
    return 0


def _cmd_models_activate(args: argparse.Namespace) -> int:
    try:
        entry = activate(_registry_from_args(args), args.name, args.version)
    except RegistryError as exc:
        print(f"error: {exc}")
        return 2
    warn = " (trained on SYNTHETIC data)" if entry.get("synthetic") else ""
    print(f"activated {entry['name']} version {entry['version']} for region {entry['region']}{warn}")
    return 0


def _cmd_models_deactivate(args: argparse.Namespace) -> int:
    if args.name is None and not args.all:
        print("error: name a model or pass --all")
        return 2
    try:
        removed = deactivate(_registry_from_args(args), None if args.all else args.name)
    except RegistryError as exc:
        print(f"error: {exc}")
        return 2
    for e in removed:
        print(f"deactivated {e['name']} version {e['version']}")
    if not removed:
        print("no active model")
    return 0
