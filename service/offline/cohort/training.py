"""``bmd-node train models``: features from the cohort, every feature model (and optionally the deep models)
fitted on the train split and saved as a new version in the registry folder."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from service.offline.cohort.deep_models import DeepOptions, train_deep_models
from service.offline.cohort.features import extract_features
from service.site_models.cohort import load_cohort
from service.site_models.feature_models import train_all_feature_models
from service.site_models.registry import model_folder, new_version, read_manifest, register_saved_model

logger = logging.getLogger(__name__)


def train_models(
    cohort_csv: Path, registry_dir: Path, *, seed: int = 0, curve_mode: str = "site", deep: bool = False,
    deep_options: dict[str, Any] | None = None, version: str | None = None,
) -> list[dict[str, Any]]:
    """Train and register; returns the manifest entries added."""
    cohort = extract_features(load_cohort(cohort_csv, split_seed=seed))
    train_rows = cohort.split("train")
    if not train_rows:
        raise ValueError(f"{cohort_csv}: no rows in the train split")
    version = version or new_version()
    taken = {m["version"] for m in read_manifest(registry_dir)["models"]}
    base, i = version, 1
    while version in taken:
        i += 1
        version = f"{base}-{i}"
    entries = []
    for model in train_all_feature_models(train_rows, seed=seed, curve_mode=curve_mode, version=version,
                                          synthetic=cohort.synthetic):
        folder = model.save(model_folder(registry_dir, model.name, version))
        entries.append(register_saved_model(registry_dir, folder))
    if deep:
        options = DeepOptions(**(deep_options or {}))
        for deep_model in train_deep_models(cohort, options=options, seed=seed, version=version):
            folder = deep_model.save(model_folder(registry_dir, deep_model.name, version))
            entries.append(register_saved_model(registry_dir, folder))
    logger.info("registered %d models, version %s, in %s", len(entries), version, registry_dir)
    return entries
