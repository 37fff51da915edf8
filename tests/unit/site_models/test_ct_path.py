"""Full phantom CT rows: cohort --with-ct -> features through the node's loader and BMD step -> truth.

The trained segmentation model is not part of the unit tests (its bundle is trained separately), so the
segmentation step here is the phantom's own truth label map; the DICOM loader, the ROI / HU measurement
(``assess_bmd``) and this package's extraction are the real ones.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from service.calibration.assess import assess_bmd
from service.calibration.settings import BmdSettings
from service.domain.levels import VertebraLevel
from service.domain.segmentation import LabelledVertebra, SpineSegmentation
from service.offline.cohort.features import extract_features, hu_from_screening_result, series_files
from service.offline.cohort.synthetic import SYNTHETIC_CT_SOURCE, synthetic_rows, write_synthetic_cohort
from service.offline.phantom import labels as phantom_labels
from service.series.volume_loader import load_series
from service.site_models.cohort import load_cohort
from service.site_models.feature_models import train_feature_model
from service.site_models.registry import activate, load_active_predictor, model_folder, register_saved_model


def _load_with_truth_segmentation(folder: Path) -> tuple[Any, SpineSegmentation]:
    volume = load_series(series_files(folder))
    labels_img = nib.load(str(folder.parent / "labels.nii.gz"))
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ labels_img.affine
    if not np.allclose(lps, volume.affine_lps, atol=1e-3):
        raise AssertionError("phantom labels and the loaded CT are on different grids")
    body = phantom_labels.body_labels_of(np.asarray(labels_img.dataobj).astype(np.int16))
    present = {int(v) for v in np.unique(body) if v}
    truth = json.loads((folder.parent / "truth.json").read_text())
    vertebrae = tuple(
        LabelledVertebra(level=VertebraLevel.from_name(t["level"]), centroid_lps_mm=tuple(t["centroid_lps_mm"]),
                         cut_by_fov=bool(t["cut_by_fov"]))
        for t in truth["vertebrae"] if int(VertebraLevel.from_name(t["level"])) in present)
    seg = SpineSegmentation(body_labels=body, posterior_mask=None, vertebrae=vertebrae, model_name="phantom-truth",
                            model_version="1")
    return volume, seg


def _truth_pipeline(folder: Path) -> dict[VertebraLevel, float]:
    volume, seg = _load_with_truth_segmentation(folder)
    return hu_from_screening_result(assess_bmd(volume, seg, BmdSettings()))


@pytest.fixture(scope="module")
def cohort_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_cohort(tmp_path_factory.mktemp("ct") / "cohort", 6, seed=2, with_ct=1)


@pytest.mark.slow
def test_phantom_ct_row_features_match_the_phantom_truth(cohort_csv: Path) -> None:
    cohort = load_cohort(cohort_csv)
    ct_row = cohort.rows[0]
    assert ct_row.source == SYNTHETIC_CT_SOURCE and ct_row.ct_series_dir is not None and not ct_row.hu_by_level
    assert all(r.hu_by_level for r in cohort.rows[1:])
    extracted = extract_features(cohort, ct_pipeline=_truth_pipeline)
    hu = extracted.rows[0].hu_by_level
    document = json.loads((ct_row.ct_series_dir.parent / "truth.json").read_text())
    truth, line = document["patient"], document["hu_to_bmd"]  # the physics line of this very acquisition
    assert {VertebraLevel.T5, VertebraLevel.L1, VertebraLevel.L2} <= set(hu)
    for level, value in hu.items():
        expected_hu = (truth["bmd_by_level_mg_cm3"][level.name] - line["intercept"]) / line["slope"]
        assert value == pytest.approx(expected_hu, abs=15.0), level.name
    # the QCT reference of the CT row is the phantom's L1-L2 truth plus QCT noise
    assert ct_row.qct_bmd_mg_cm3 == pytest.approx(truth["l1_l2_bmd_mg_cm3"], rel=0.2)
    # rows that already carry HU columns are untouched
    assert extracted.rows[1].hu_by_level == cohort.rows[1].hu_by_level


@pytest.mark.slow
def test_activated_site_model_changes_the_nodes_result(cohort_csv: Path, tmp_path: Path) -> None:
    """assess_bmd with the registry's active predictor: another BMD, and the method names the model."""
    # a site whose scanner reads 25 HU high: its model maps the same HU to a lower BMD than the linear default
    rows = [replace(r, hu_by_level={lv: hu + 25.0 for lv, hu in r.hu_by_level.items()})
            for r in synthetic_rows(200, seed=8) if r.split == "train"]
    model = train_feature_model("abdomen", "bmd", "sgd", rows, seed=0, version="v1")
    registry = tmp_path / "registry"
    register_saved_model(registry, model.save(model_folder(registry, model.name, "v1")))
    activate(registry, model.name)
    predictor = load_active_predictor(registry)
    assert predictor is not None

    ct_dir = load_cohort(cohort_csv).rows[0].ct_series_dir
    assert ct_dir is not None
    volume, seg = _load_with_truth_segmentation(ct_dir)
    baseline = assess_bmd(volume, seg, BmdSettings()).result.summary
    with_model = assess_bmd(volume, seg, BmdSettings(), site_model=predictor).result.summary
    assert baseline.bmd_mg_cm3 is not None and with_model.bmd_mg_cm3 is not None
    assert with_model.bmd_mg_cm3 < baseline.bmd_mg_cm3 - 5.0
    assert predictor.name in with_model.method and "abdomen-bmd-sgd@v1" in with_model.method
    assert predictor.name not in baseline.method
