"""Cohort manifest parsing / validation, synthetic cohort, feature sources."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from service.domain.levels import VertebraLevel
from service.domain.results import (
    CalibrationKind,
    Category,
    ExclusionReason,
    LinearCalibration,
    PatientSummary,
    RoiMethod,
    ScreeningResult,
    VertebraMeasurement,
)
from service.offline.cohort.features import FeatureExtractionError, extract_features, hu_from_result_json
from service.offline.cohort.synthetic import synthetic_rows, write_synthetic_cohort
from service.site_models.cohort import CohortError, assign_splits, load_cohort, write_cohort

HEADER = "patient_ref,sex,age,qct_bmd_mg_cm3,qct_category,split,hu_T12,hu_L1,hu_L2\n"


def _write(tmp_path: Path, body: str, header: str = HEADER) -> Path:
    p = tmp_path / "cohort.csv"
    p.write_text(header + body, encoding="utf-8")
    return p


def test_valid_manifest_parses(tmp_path: Path) -> None:
    p = _write(tmp_path, "a,F,61,95.5,,train,120,118,110\nb,male,70,70,,test,90,,85\n")
    c = load_cohort(p)
    a, b = c.rows
    assert a.sex == "F" and a.qct_category == "osteopenia" and a.split == "train"
    assert a.hu_by_level == {VertebraLevel.T12: 120.0, VertebraLevel.L1: 118.0, VertebraLevel.L2: 110.0}
    assert b.sex == "M" and b.qct_category == "osteoporosis"
    assert VertebraLevel.L1 not in b.hu_by_level  # empty cell = level not evaluable
    assert not c.synthetic


@pytest.mark.parametrize(
    ("body", "row", "column"),
    [
        ("a,X,61,95,,train,120,118,110\n", 1, "sex"),
        ("a,F,61,95,,train,120,118,110\nb,F,12,95,,train,120,118,110\n", 2, "age"),
        ("a,F,61,abc,,train,120,118,110\n", 1, "qct_bmd_mg_cm3"),
        ("a,F,61,95,,train,120,118,110\nb,F,61,95,,train,1e5,118,110\n", 2, "hu_T12"),
        ("a,F,61,95,,train,120,118,110\nb,F,61,95,,train,120,x,110\n", 2, "hu_L1"),
        ("a,F,61,95,,training,120,118,110\n", 1, "split"),
        ("a,F,61,95,weak,train,120,118,110\n", 1, "qct_category"),
        ("a,F,61,95,,train,120,118,110\na,F,61,95,,train,120,118,110\n", 2, "patient_ref"),
        ("a,F,61,95,,train,,,\n", 1, "hu_T5..hu_L2/result_json/ct_series_dir"),
    ],
)
def test_validation_errors_name_row_and_column(tmp_path: Path, body: str, row: int, column: str) -> None:
    p = _write(tmp_path, body)
    with pytest.raises(CohortError) as exc:
        load_cohort(p)
    assert any(f"row {row}, column {column!r}" in line for line in exc.value.problems), exc.value.problems


def test_missing_required_column_and_all_errors_reported(tmp_path: Path) -> None:
    p = _write(tmp_path, "a,F,95\n", header="patient_ref,sex,qct_bmd_mg_cm3\n")
    with pytest.raises(CohortError, match="age"):
        load_cohort(p)
    p = _write(tmp_path, "a,X,61,95,,train,120,118,110\nb,F,200,95,,train,120,118,110\n")
    with pytest.raises(CohortError) as exc:
        load_cohort(p)
    assert len(exc.value.problems) == 2


def test_missing_feature_file_is_named(tmp_path: Path) -> None:
    p = _write(tmp_path, "a,F,61,95,,train,nope.json\n",
               header="patient_ref,sex,age,qct_bmd_mg_cm3,qct_category,split,result_json\n")
    with pytest.raises(CohortError, match=r"row 1, column 'result_json': file not found"):
        load_cohort(p)


def test_assigned_splits_follow_xiong_proportions() -> None:
    cats = list(np.random.default_rng(0).choice(["normal", "osteopenia", "osteoporosis"], 702, p=[.22, .42, .36]))
    splits = assign_splits(702, 1, cats)
    assert Counter(splits) == {"train": 426, "validation": 106, "test": 170}
    test_mix = Counter(c for c, s in zip(cats, splits, strict=True) if s == "test")
    assert abs(test_mix["osteoporosis"] / 170 - cats.count("osteoporosis") / 702) < 0.03


def test_synthetic_cohort_is_deterministic_realistic_and_marked(tmp_path: Path) -> None:
    a = synthetic_rows(300, seed=4)
    b = synthetic_rows(300, seed=4)
    assert [r.hu_by_level for r in a] == [r.hu_by_level for r in b]
    assert [r.qct_bmd_mg_cm3 for r in a] == [r.qct_bmd_mg_cm3 for r in b]
    assert all(r.synthetic for r in a)
    mix = Counter(r.qct_category for r in a)
    assert all(mix[c] > 30 for c in ("normal", "osteopenia", "osteoporosis"))
    # not trivially separable: L1 HU of osteoporosis and osteopenia patients overlap
    l1 = {c: [r.hu_by_level[VertebraLevel.L1] for r in a
              if r.qct_category == c and VertebraLevel.L1 in r.hu_by_level] for c in ("osteopenia", "osteoporosis")}
    assert max(l1["osteoporosis"]) > min(l1["osteopenia"])
    # thoracic levels read higher than lumbar (the thoracolumbar gradient of the density model)
    t5 = np.mean([r.hu_by_level[VertebraLevel.T5] for r in a if VertebraLevel.T5 in r.hu_by_level])
    l2 = np.mean([r.hu_by_level[VertebraLevel.L2] for r in a if VertebraLevel.L2 in r.hu_by_level])
    assert t5 > l2
    path = write_synthetic_cohort(tmp_path / "syn", 50, seed=1)
    c = load_cohort(path)
    assert c.synthetic and len(c.rows) == 50
    assert Counter(r.split for r in c.rows) == {"train": 30, "validation": 8, "test": 12}


def test_write_then_load_round_trip(tmp_path: Path) -> None:
    rows = synthetic_rows(20, seed=2)
    c = load_cohort(write_cohort(tmp_path / "c.csv", rows))
    assert [r.patient_ref for r in c.rows] == [r.patient_ref for r in rows]
    assert [r.split for r in c.rows] == [r.split for r in rows]
    for orig, back in zip(rows, c.rows, strict=True):
        assert set(orig.hu_by_level) == set(back.hu_by_level)
        for lv, hu in orig.hu_by_level.items():
            assert back.hu_by_level[lv] == pytest.approx(hu, abs=0.006)


def _measurement(level: VertebraLevel, hu: float | None, evaluable: bool = True) -> VertebraMeasurement:
    return VertebraMeasurement(
        level=level, centroid_lps_mm=(0.0, 0.0, float(level)), roi_method=RoiMethod.EROSION_3MM,
        trabecular_hu_mean=hu, trabecular_hu_median=hu, trabecular_hu_sd=30.0, voxel_count=1000,
        roi_volume_mm3=1000.0, bmd_mg_cm3=None if hu is None else 0.75 * hu + 5, evaluable=evaluable,
        exclusion_reason=None if evaluable else ExclusionReason.FRACTURE,
    )


def test_features_from_the_nodes_result_json(tmp_path: Path) -> None:
    result = ScreeningResult(
        study_instance_uid="1.2.3", series_instance_uid="1.2.3.4",
        vertebrae=(_measurement(VertebraLevel.T12, 130.0), _measurement(VertebraLevel.L1, 125.0),
                   _measurement(VertebraLevel.L2, 90.0, evaluable=False), _measurement(VertebraLevel.L3, 100.0)),
        summary=PatientSummary(bmd_mg_cm3=98.0, levels_used=(VertebraLevel.L1,), category=Category.OSTEOPENIA,
                               method="test", threshold_set="ACR2018-ISCD-v1"),
        calibration=LinearCalibration(kind=CalibrationKind.DEFAULT, slope=0.75, intercept=5.0),
    )
    (tmp_path / "result.json").write_text(json.dumps(result.to_json_dict()), encoding="utf-8")
    hu = hu_from_result_json(tmp_path / "result.json")
    # fractured L2 and out-of-range L3 are not features
    assert hu == {VertebraLevel.T12: 130.0, VertebraLevel.L1: 125.0}
    p = _write(tmp_path, "a,F,61,95,,train,result.json\n",
               header="patient_ref,sex,age,qct_bmd_mg_cm3,qct_category,split,result_json\n")
    c = extract_features(load_cohort(p))
    assert c.rows[0].hu_by_level == hu


def test_a_failing_feature_source_names_the_row_or_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text("{not json", encoding="utf-8")
    p = _write(tmp_path, "a,F,61,95,,train,120,118,110,\nb,M,70,70,,test,,,,broken.json\n",
               header=HEADER.rstrip("\n") + ",result_json\n")
    cohort = load_cohort(p)
    with pytest.raises(FeatureExtractionError, match=r"row 2 \(b\)"):
        extract_features(cohort)
    skipped = extract_features(cohort, on_error="skip")
    assert skipped.rows[0].hu_by_level == cohort.rows[0].hu_by_level
    assert skipped.rows[1].hu_by_level == {}
