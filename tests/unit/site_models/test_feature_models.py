"""Xiong 2025 feature models: schema, curve, determinism, saved artefacts."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import sklearn

from service.domain.levels import VertebraLevel
from service.offline.cohort.synthetic import synthetic_rows
from service.site_models.cohort import CohortRow, rows_hash
from service.site_models.feature_models import (
    FeatureSpec,
    calibrated_hu,
    fit_feature_spec,
    fit_site_curve_k,
    load_feature_model,
    train_feature_model,
)

T = VertebraLevel


@pytest.fixture(scope="module")
def train_rows() -> list[CohortRow]:
    return [r for r in synthetic_rows(260, seed=11) if r.split != "test"]


def _row(i: int, hu: dict[VertebraLevel, float]) -> CohortRow:
    return CohortRow(row=i, patient_ref=f"p{i}", sex="F", age_years=60.0, qct_bmd_mg_cm3=100.0,
                     qct_category="osteopenia", split="train", hu_by_level=hu)


def test_site_curve_slope_recovers_a_known_gradient() -> None:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(40):
        base = rng.uniform(100, 250)  # patients differ in level, share the slope
        rows.append(_row(i, {lv: base - 4.0 * lv.xiong_index + rng.normal(0, 2)
                             for lv in T if lv.xiong_index is not None}))
    k, used = fit_site_curve_k(rows)
    assert used == 40
    assert k == pytest.approx(-4.0, abs=0.2)


def test_calibrated_features_use_the_curve_and_tolerate_missing_levels() -> None:
    hu = {T.T5: 200.0, T.T6: 195.0, T.T7: 190.0, T.T8: 185.0, T.T9: 180.0, T.T10: 175.0}  # exactly -5 per level
    cal = calibrated_hu(hu, mode="site", k_hu_per_level=-5.0)
    assert cal is not None
    # intercept 205: L1 (n = 9) -> 160, L2 (n = 10) -> 155; every level moved to n = 9.5 -> 157.5
    assert cal["hu_cal_L1"] == pytest.approx(160.0)
    assert cal["hu_cal_L2"] == pytest.approx(155.0)
    assert cal["hu_eq_T5"] == pytest.approx(157.5)
    partial = {T.T6: 195.0, T.T8: 185.0, T.T10: 175.0}
    cal_p = calibrated_hu(partial, mode="site", k_hu_per_level=-5.0)
    assert cal_p is not None and cal_p["hu_cal_L1"] == pytest.approx(160.0)
    assert cal_p["hu_eq_T7"] == pytest.approx(157.5)  # missing level takes the curve's value
    assert calibrated_hu({T.T6: 195.0, T.T8: 185.0}, mode="site", k_hu_per_level=-5.0) is None
    per_patient = calibrated_hu(hu, mode="per_patient", k_hu_per_level=None)
    assert per_patient is not None and per_patient["hu_cal_L2"] == pytest.approx(155.0)


def test_feature_vectors_need_their_levels() -> None:
    chest = FeatureSpec("chest")
    full = {lv: 150.0 for lv in chest.input_levels}
    v = chest.vector(full, "F", 60.0)
    assert v is not None and list(chest.names) == ["sex_female", "age_years", "hu_T5", "hu_T6", "hu_T7", "hu_T8",
                                                   "hu_T9", "hu_T10"]
    assert v[0] == 1.0 and v[1] == 60.0
    missing = dict(full)
    del missing[T.T7]
    assert chest.vector(missing, "F", 60.0) is None
    assert chest.vector(full, "F", None) is None
    assert FeatureSpec("abdomen").vector({T.L1: 100.0, T.L2: 90.0}, "M", 70.0) is None
    with pytest.raises(ValueError, match="region"):
        FeatureSpec("pelvis")


@pytest.mark.parametrize(("region", "target", "algorithm"),
                         [("abdomen", "3class", "bdt"), ("chest_calibrated", "bmd", "sgd"), ("chest", "binary", "rf")])
def test_training_is_deterministic_for_a_seed(train_rows: list[CohortRow], region: str, target: str,
                                              algorithm: str) -> None:
    a = train_feature_model(region, target, algorithm, train_rows, seed=3)
    b = train_feature_model(region, target, algorithm, train_rows, seed=3)
    pa, kept_a = a.predict_rows(train_rows)
    pb, kept_b = b.predict_rows(train_rows)
    assert kept_a == kept_b
    np.testing.assert_array_equal(pa, pb)
    assert a.meta["training_data_sha256"] == b.meta["training_data_sha256"]
    if algorithm != "sgd":
        c = train_feature_model(region, target, algorithm, train_rows, seed=4)
        assert not np.array_equal(pa, c.predict_rows(train_rows)[0])


def test_saved_model_carries_schema_versions_and_hashes(tmp_path: Path, train_rows: list[CohortRow]) -> None:
    spec = fit_feature_spec("chest_calibrated", train_rows)
    model = train_feature_model("chest_calibrated", "3class", "bdt", train_rows, seed=0, spec=spec, version="v1")
    folder = model.save(tmp_path / "m")
    meta = json.loads((folder / "model.json").read_text())
    assert meta["feature_schema"]["names"] == list(spec.names)
    assert meta["feature_schema"]["curve"]["k_hu_per_level"] == pytest.approx(spec.curve_k_hu_per_level)
    assert meta["feature_schema"]["curve"]["k_hu_per_level"] < 0  # thoracic levels read higher than lumbar
    assert meta["versions"]["sklearn"] == sklearn.__version__ and meta["versions"]["numpy"] == np.__version__
    used = [r for r in train_rows if spec.vector(r.hu_by_level, r.sex, r.age_years) is not None]
    assert meta["training_data_sha256"] == rows_hash(used)
    changed = [replace(used[0], qct_bmd_mg_cm3=used[0].qct_bmd_mg_cm3 + 1.0), *used[1:]]
    assert rows_hash(changed) != meta["training_data_sha256"]
    assert meta["labels"] == ["normal", "osteopenia", "osteoporosis"]
    loaded = load_feature_model(folder)
    np.testing.assert_array_equal(loaded.predict_rows(train_rows)[0], model.predict_rows(train_rows)[0])
    # a modified artefact is refused
    with (folder / "model.joblib").open("ab") as fh:
        fh.write(b"tampered")
    with pytest.raises(ValueError, match="sha256"):
        load_feature_model(folder)
