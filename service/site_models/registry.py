"""Model registry: trained site models in a folder outside the repository, with a manifest and activation.

Layout of a registry folder (``[site_models] registry_dir`` in the node's configuration, its environment override
``BMD_NODE_SITE_MODELS__REGISTRY_DIR``, or ``--registry`` on the command line)::

    REGISTRY/manifest.json            {"schema_version", "models": [...], "active": [...]}
    REGISTRY/activation.log           one JSON line per activate / deactivate (UTC time, who, what)
    REGISTRY/<name>/<version>/        model.joblib + model.json (feature models) or model.pt + model.json (deep)

``bmd-node train models --out REGISTRY`` adds a version of every model it trains; nothing is active until
``bmd-node models activate NAME [--version V]``. At most one model per region is active; the node asks
``load_active_predictor(registry_dir)`` for a ``SiteModelPredictor`` and falls back to its linear calibration
when it gets None. A regression model's prediction carries the BMD and no category (the node categorises it
with its configured thresholds); a three-class model's carries the category and no BMD. Only feature models
with a BMD (regression) or three-class target can be activated: the screening pipeline hands a site model
per-level HU, sex and age, which is what those models take.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service.domain.levels import VertebraLevel
from service.domain.results import Category, SitePrediction
from service.domain.site_model import SiteModelPredictor
from service.site_models.feature_models import load_feature_model

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
ACTIVATION_LOG = "activation.log"
REGISTRY_ENV = "BMD_NODE_SITE_MODELS__REGISTRY_DIR"
"""The node configuration's own environment override of ``[site_models] registry_dir``."""
MANIFEST_SCHEMA_VERSION = 1
ACTIVATABLE_TARGETS: tuple[str, ...] = ("bmd", "3class")
REGION_PREFERENCE: tuple[str, ...] = ("abdomen", "chest_calibrated", "chest")
"""Order in which active models are tried: lumbar levels when present, else the calibrated chest model."""


class RegistryError(ValueError):
    pass


def resolve_registry_dir(registry_dir: Path | str | None) -> Path | None:
    if registry_dir is not None and str(registry_dir) != "":
        return Path(registry_dir)
    env = os.environ.get(REGISTRY_ENV, "")
    return Path(env) if env else None


def read_manifest(registry_dir: Path) -> dict[str, Any]:
    path = Path(registry_dir) / MANIFEST_FILE
    if not path.is_file():
        return {"schema_version": MANIFEST_SCHEMA_VERSION, "models": [], "active": []}
    manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest.setdefault("models", [])
    manifest.setdefault("active", [])
    return manifest


def _write_manifest(registry_dir: Path, manifest: dict[str, Any]) -> None:
    registry_dir = Path(registry_dir)
    registry_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".manifest-", dir=registry_dir)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=2, sort_keys=True)
    os.replace(tmp, registry_dir / MANIFEST_FILE)


def _warn_if_inside_repository(registry_dir: Path) -> None:
    repo_root = Path(__file__).resolve().parents[2]
    try:
        Path(registry_dir).resolve().relative_to(repo_root)
    except ValueError:
        return
    logger.warning("model registry %s is inside the source tree %s; keep site models outside the repository",
                   registry_dir, repo_root)


def new_version() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def model_folder(registry_dir: Path, name: str, version: str) -> Path:
    return Path(registry_dir) / name / version


def register_saved_model(registry_dir: Path, folder: Path) -> dict[str, Any]:
    """Add the model saved in ``folder`` (inside the registry) to the manifest; returns its entry."""
    registry_dir = Path(registry_dir)
    _warn_if_inside_repository(registry_dir)
    meta = json.loads((Path(folder) / "model.json").read_text(encoding="utf-8"))
    entry = {
        "name": meta["name"],
        "version": meta["version"],
        "kind": meta["kind"],
        "region": meta["region"],
        "task": meta["task"],
        "target": meta["target"],
        "algorithm": meta["algorithm"],
        "path": str(Path(folder).resolve().relative_to(registry_dir.resolve())),
        "model_sha256": meta.get("model_sha256"),
        "training_data_sha256": meta.get("training_data_sha256"),
        "created_utc": meta.get("created_utc"),
        "synthetic": bool(meta.get("synthetic", False)),
    }
    manifest = read_manifest(registry_dir)
    manifest["models"] = [m for m in manifest["models"]
                          if not (m["name"] == entry["name"] and m["version"] == entry["version"])]
    manifest["models"].append(entry)
    _write_manifest(registry_dir, manifest)
    return entry


def list_models(registry_dir: Path) -> list[dict[str, Any]]:
    manifest = read_manifest(registry_dir)
    active = {(a["name"], a["version"]) for a in manifest["active"]}
    out = []
    for m in sorted(manifest["models"], key=lambda m: (m["name"], m["version"])):
        out.append({**m, "active": (m["name"], m["version"]) in active})
    return out


def latest_models(registry_dir: Path) -> list[dict[str, Any]]:
    """The newest version of every model name."""
    newest: dict[str, dict[str, Any]] = {}
    for m in read_manifest(registry_dir)["models"]:
        if m["name"] not in newest or m["version"] > newest[m["name"]]["version"]:
            newest[m["name"]] = m
    return [newest[k] for k in sorted(newest)]


def _find(manifest: dict[str, Any], name: str, version: str | None) -> dict[str, Any]:
    candidates = [m for m in manifest["models"] if m["name"] == name]
    if not candidates:
        known = sorted({m["name"] for m in manifest["models"]})
        raise RegistryError(f"no model named {name!r} in the registry (known: {', '.join(known) or 'none'})")
    if version is None:
        return max(candidates, key=lambda m: m["version"])
    for m in candidates:
        if m["version"] == version:
            return m
    raise RegistryError(f"model {name!r} has no version {version!r} "
                        f"(versions: {', '.join(sorted(m['version'] for m in candidates))})")


def _log_action(registry_dir: Path, action: str, entry: dict[str, Any]) -> None:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    record = {"utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "action": action, "name": entry["name"],
              "version": entry["version"], "region": entry.get("region"), "user": user}
    with (Path(registry_dir) / ACTIVATION_LOG).open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, sort_keys=True) + "\n")
    logger.info("site model %s: %s version %s (region %s)", action, entry["name"], entry["version"],
                entry.get("region"))


def activate(registry_dir: Path, name: str, version: str | None = None) -> dict[str, Any]:
    """Make ``name`` (newest version unless given) the active model of its region; logged."""
    registry_dir = Path(registry_dir)
    manifest = read_manifest(registry_dir)
    entry = _find(manifest, name, version)
    if entry["kind"] != "feature":
        raise RegistryError(f"{name}: only feature models can serve in the node (this one is {entry['kind']!r}: "
                            "it needs image crops the screening pipeline does not hand over)")
    if entry["target"] not in ACTIVATABLE_TARGETS:
        raise RegistryError(f"{name}: target {entry['target']!r} cannot be activated; use one of "
                            f"{', '.join(ACTIVATABLE_TARGETS)} (the node reports a BMD or a three-class category)")
    # load it once now, so a broken or tampered artefact is refused at activation, not at the first patient
    _load_predictor(registry_dir, entry)
    replaced = [a for a in manifest["active"] if a.get("region") == entry["region"]]
    manifest["active"] = [a for a in manifest["active"] if a.get("region") != entry["region"]]
    manifest["active"].append({"name": entry["name"], "version": entry["version"], "region": entry["region"],
                               "activated_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")})
    _write_manifest(registry_dir, manifest)
    for old in replaced:
        _log_action(registry_dir, "deactivate", old)
    _log_action(registry_dir, "activate", entry)
    return entry


def deactivate(registry_dir: Path, name: str | None = None) -> list[dict[str, Any]]:
    """Deactivate ``name`` (every active model when None); logged. Returns what was deactivated."""
    registry_dir = Path(registry_dir)
    manifest = read_manifest(registry_dir)
    if name is None:
        removed = list(manifest["active"])
    else:
        removed = [a for a in manifest["active"] if a["name"] == name]
        if not removed:
            raise RegistryError(f"model {name!r} is not active")
    manifest["active"] = [a for a in manifest["active"] if a not in removed]
    _write_manifest(registry_dir, manifest)
    for entry in removed:
        _log_action(registry_dir, "deactivate", entry)
    return removed


@dataclass
class FeatureModelPredictor:
    """A SiteModelPredictor around one trained feature model."""

    name: str
    model: Any  # FeatureModel

    @property
    def region(self) -> str:
        return str(self.model.region)

    def predict(
        self, hu_by_level: dict[VertebraLevel, float], sex: str, age_years: float | None
    ) -> SitePrediction | None:
        """None (the model skips) when an input it takes is missing: the age, the sex or one of its levels."""
        sex_n = (sex or "").strip().upper()[:1]
        if age_years is None or sex_n not in ("F", "M"):
            logger.info("site model %s skipped: patient %s unknown", self.name,
                        "age" if age_years is None else "sex")
            return None
        x = self.model.spec.vector(hu_by_level, sex_n, age_years)
        if x is None:
            return None
        out = self.model.predict_matrix(x[None, :])
        if self.model.task == "regression":
            # the category of a predicted BMD is left to the node, which applies its configured threshold set
            return SitePrediction(model_name=self.name, bmd_mg_cm3=float(out[0]), category=None)
        label = self.model.labels[int(out[0].argmax())]
        return SitePrediction(model_name=self.name, bmd_mg_cm3=None, category=Category(label))


@dataclass
class ActiveSiteModels:
    """The active models of a registry, tried in ``REGION_PREFERENCE`` order (first that has its levels wins)."""

    name: str
    predictors: tuple[FeatureModelPredictor, ...]

    def predict(
        self, hu_by_level: dict[VertebraLevel, float], sex: str, age_years: float | None
    ) -> SitePrediction | None:
        for predictor in self.predictors:
            prediction = predictor.predict(hu_by_level, sex, age_years)
            if prediction is not None:
                return prediction
        return None


def _load_predictor(registry_dir: Path, entry: dict[str, Any]) -> FeatureModelPredictor:
    model = load_feature_model(Path(registry_dir) / entry["path"])
    if model.meta.get("model_sha256") != entry.get("model_sha256"):
        raise RegistryError(f"{entry['name']} {entry['version']}: model.json hash differs from the manifest")
    return FeatureModelPredictor(name=f"{entry['name']}@{entry['version']}", model=model)


def load_active_predictor(registry_dir: Path | None) -> SiteModelPredictor | None:
    """The active site model(s) of the registry, or None when none is active (or no registry is configured)."""
    resolved = resolve_registry_dir(registry_dir)
    if resolved is None or not (resolved / MANIFEST_FILE).is_file():
        return None
    manifest = read_manifest(resolved)
    if not manifest["active"]:
        return None
    entries = []
    for active in manifest["active"]:
        entries.append(_find(manifest, active["name"], active["version"]))
    entries.sort(key=lambda e: REGION_PREFERENCE.index(e["region"]) if e["region"] in REGION_PREFERENCE else 99)
    predictors = tuple(_load_predictor(resolved, e) for e in entries)
    if len(predictors) == 1:
        return predictors[0]
    return ActiveSiteModels(name=" + ".join(p.name for p in predictors), predictors=predictors)
