"""Registry: train into a folder, activate (logged), and the node's predictor changes the output."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from service.domain.levels import VertebraLevel
from service.offline.cohort.synthetic import synthetic_rows
from service.offline.phantom.density import bmd_from_hu
from service.site_models.cohort import CohortRow
from service.site_models.feature_models import train_feature_model
from service.site_models.registry import (
    ACTIVATION_LOG,
    REGISTRY_ENV,
    RegistryError,
    activate,
    deactivate,
    list_models,
    load_active_predictor,
    model_folder,
    register_saved_model,
)

SCANNER_OFFSET_HU = 30.0
"""This site's scanner reads 30 HU high: the linear default calibration overestimates BMD, a site model learns it."""


@pytest.fixture(scope="module")
def site_rows() -> list[CohortRow]:
    rows = synthetic_rows(240, seed=21)
    return [replace(r, hu_by_level={lv: hu + SCANNER_OFFSET_HU for lv, hu in r.hu_by_level.items()}) for r in rows]


@pytest.fixture()
def registry(tmp_path: Path, site_rows: list[CohortRow]) -> Path:
    reg = tmp_path / "registry"
    train = [r for r in site_rows if r.split == "train"]
    for region, target, algorithm in (("abdomen", "bmd", "sgd"), ("chest_calibrated", "3class", "lr"),
                                      ("abdomen", "binary", "bdt")):
        model = train_feature_model(region, target, algorithm, train, seed=0, version="20260101T000000Z")
        register_saved_model(reg, model.save(model_folder(reg, model.name, "20260101T000000Z")))
    return reg


def test_nothing_active_means_no_predictor(registry: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_active_predictor(registry) is None
    assert load_active_predictor(tmp_path / "does-not-exist") is None
    monkeypatch.delenv(REGISTRY_ENV, raising=False)
    assert load_active_predictor(None) is None
    assert all(not m["active"] for m in list_models(registry))
    # the registry folder can also come from the environment
    activate(registry, "abdomen-bmd-sgd")
    monkeypatch.setenv(REGISTRY_ENV, str(registry))
    env_predictor = load_active_predictor(None)
    assert env_predictor is not None and env_predictor.name.startswith("abdomen-bmd-sgd@")


def test_activated_model_changes_the_output(registry: Path, site_rows: list[CohortRow]) -> None:
    activate(registry, "abdomen-bmd-sgd")
    predictor = load_active_predictor(registry)
    assert predictor is not None
    assert predictor.name == "abdomen-bmd-sgd@20260101T000000Z"
    test = [r for r in site_rows if r.split == "test" and all(
        lv in r.hu_by_level for lv in (VertebraLevel.T12, VertebraLevel.L1, VertebraLevel.L2))]
    site_err, linear_err = [], []
    for r in test:
        pred = predictor.predict(r.hu_by_level, r.sex, r.age_years)
        assert pred is not None
        assert pred.model_name == predictor.name
        assert pred.bmd_mg_cm3 is not None and pred.category is None  # the node applies its thresholds
        linear = bmd_from_hu(0.5 * (r.hu_by_level[VertebraLevel.L1] + r.hu_by_level[VertebraLevel.L2]))
        site_err.append(abs(pred.bmd_mg_cm3 - r.qct_bmd_mg_cm3))
        linear_err.append(abs(linear - r.qct_bmd_mg_cm3))
    # the linear default is off by ~0.75 * 30 HU; the site model is not
    assert np.mean(linear_err) > 15.0
    assert np.mean(site_err) < 0.6 * np.mean(linear_err)
    log = [json.loads(line) for line in (registry / ACTIVATION_LOG).read_text().splitlines()]
    assert log[-1]["action"] == "activate" and log[-1]["name"] == "abdomen-bmd-sgd"


def test_predictor_returns_none_without_its_levels(registry: Path) -> None:
    activate(registry, "abdomen-bmd-sgd")
    predictor = load_active_predictor(registry)
    assert predictor is not None
    assert predictor.predict({VertebraLevel.L1: 120.0, VertebraLevel.L2: 110.0}, "F", 65.0) is None
    assert predictor.predict({}, "F", 65.0) is None


def test_two_regions_active_fall_back_to_the_calibrated_chest(registry: Path) -> None:
    activate(registry, "abdomen-bmd-sgd")
    activate(registry, "chest_calibrated-3class-lr")
    predictor = load_active_predictor(registry)
    assert predictor is not None and "+" in predictor.name
    chest_only = {VertebraLevel(v): 150.0 - 2 * v for v in range(VertebraLevel.T5, VertebraLevel.T10 + 1)}
    pred = predictor.predict(chest_only, "M", 58.0)
    assert pred is not None and pred.model_name.startswith("chest_calibrated-3class-lr@")
    assert pred.bmd_mg_cm3 is None and pred.category is not None
    lumbar = {**chest_only, VertebraLevel.T12: 120.0, VertebraLevel.L1: 118.0, VertebraLevel.L2: 115.0}
    pred2 = predictor.predict(lumbar, "M", 58.0)
    assert pred2 is not None and pred2.model_name.startswith("abdomen-bmd-sgd@")


def test_deactivate_restores_fallback_and_is_logged(registry: Path) -> None:
    activate(registry, "abdomen-bmd-sgd")
    removed = deactivate(registry, "abdomen-bmd-sgd")
    assert [r["name"] for r in removed] == ["abdomen-bmd-sgd"]
    assert load_active_predictor(registry) is None
    actions = [json.loads(line)["action"] for line in (registry / ACTIVATION_LOG).read_text().splitlines()]
    assert actions[-2:] == ["activate", "deactivate"]
    with pytest.raises(RegistryError, match="not active"):
        deactivate(registry, "abdomen-bmd-sgd")


def test_activation_refuses_unknown_binary_and_tampered(registry: Path) -> None:
    with pytest.raises(RegistryError, match="no model named"):
        activate(registry, "pelvis-bmd-sgd")
    with pytest.raises(RegistryError, match="binary"):
        activate(registry, "abdomen-binary-bdt")
    with pytest.raises(RegistryError, match="no version"):
        activate(registry, "abdomen-bmd-sgd", "1999")
    artefact = model_folder(registry, "abdomen-bmd-sgd", "20260101T000000Z") / "model.joblib"
    artefact.write_bytes(artefact.read_bytes() + b"x")
    with pytest.raises(ValueError, match="sha256"):
        activate(registry, "abdomen-bmd-sgd")
    assert load_active_predictor(registry) is None
