"""The screening recipe's own parts: the load step (real loader), settings mapping, encoding, storage."""

from __future__ import annotations

import os
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from service import __version__
from service.calibration.settings import BmdSettings
from service.config import Config
from service.domain.guidelines import Thresholds
from service.domain.levels import VertebraLevel
from service.domain.results import RoiMethod
from service.pipeline import steps, storage
from service.pipeline.encode import encode_dataset
from service.pipeline.screening import ScreeningRecipe, build_screening_pipeline
from service.pipeline.types import EncodedObject, JobInput, PipelineRejectedError, PreviousResult
from service.series.settings import SeriesSettings
from service.site_models.settings import SiteModelsSettings
from tests.node_support import BASIC_TEXT_SR, write_ct_series


def test_load_series_reads_a_real_series(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path / "ct", n_slices=12, size=16, thickness_mm=2.0)
    series = steps.load_series(list(reversed(paths)), SeriesSettings(min_slices=10))
    volume = series.volume
    assert [str(h.SOPInstanceUID) for h in series.headers] == list(volume.sop_instance_uids)
    assert all("PixelData" not in h for h in series.headers)  # released once decoded
    assert volume.shape == (16, 16, 12)
    assert volume.spacing_mm == pytest.approx((1.0, 1.0, 2.0))
    assert -100 < float(volume.hu.mean()) < 100  # stored 1064 +- 20 with intercept -1024


def test_load_series_rejects_with_reason(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path / "ct", n_slices=12, size=16, thickness_mm=8.0)
    with pytest.raises(PipelineRejectedError, match="series rejected"):
        steps.load_series(paths, SeriesSettings(min_slices=10, max_slice_thickness_mm=5.0))


def test_the_bmd_section_reaches_the_assessment_as_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    config = BmdSettings(roi_method=RoiMethod.ELLIPTICAL_CYLINDER, summary_levels=(VertebraLevel.L1,),
                         threshold_set="ACR2018-ISCD-v1", calibration_store_dir=Path("/x"))
    seen: dict[str, object] = {}

    def fake_assess_bmd(volume: object, segmentation: object, settings: BmdSettings, site_model: object = None, *,
                        algorithm_version: str = "") -> str:
        seen.update(settings=settings, site_model=site_model, algorithm_version=algorithm_version)
        return "assessment"

    monkeypatch.setattr(steps, "assess_bmd", fake_assess_bmd)
    assert steps.assess(object(), object(), config, None) == "assessment"  # type: ignore[arg-type]
    assert seen == {"settings": config, "site_model": None, "algorithm_version": __version__}
    assert seen["settings"] is config  # no copy: Config.bmd is what the assessment takes
    assert config.curve_site_k is None  # per-patient thoracolumbar fit unless a site curve is switched on


def test_bmd_thresholds_and_site_curve_reach_the_assessment() -> None:
    config = BmdSettings(osteoporosis_below_mg_cm3=70.0, normal_above_mg_cm3=110.0, threshold_set="SITE-2026-v2",
                         use_site_curve=True, curve_site_k_hu_per_level=-3.5, erosion_mm=2.0, correct_contrast=False)
    assert config.thresholds == Thresholds("SITE-2026-v2", "v1", 70.0, 110.0)
    assert config.thresholds.identifier.startswith("SITE-2026-v2")
    assert config.curve_site_k == -3.5
    assert config.erosion_mm == 2.0 and config.correct_contrast is False


def test_bmd_thresholds_must_be_ordered() -> None:
    with pytest.raises(ValueError, match=r"bmd\.osteoporosis_below_mg_cm3"):
        BmdSettings(osteoporosis_below_mg_cm3=130.0)


def test_no_site_model_without_registry(tmp_path: Path) -> None:
    assert steps.load_site_model(SiteModelsSettings(registry_dir=tmp_path / "empty")) is None
    assert steps.load_site_model(SiteModelsSettings(registry_dir=tmp_path, enabled=False)) is None


def test_production_recipe_is_the_screening_recipe() -> None:
    recipe = build_screening_pipeline(Config())
    assert isinstance(recipe, ScreeningRecipe)
    assert recipe.segment._segmenter is None  # the model is loaded on the first job, not at construction


def test_recipe_rejects_before_loading_a_model(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path / "ct", n_slices=4, size=16)
    recipe = build_screening_pipeline(Config())
    with pytest.raises(PipelineRejectedError):
        recipe.run(JobInput(1, "1.2", "1.2.3", tuple(paths)))
    assert recipe.segment._segmenter is None


def _sr_dataset() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = BASIC_TEXT_SR
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "SR"
    return ds


def test_encode_and_atomic_store(tmp_path: Path) -> None:
    ds = _sr_dataset()
    obj = encode_dataset("sr", ds)
    assert obj.sop_instance_uid == ds.SOPInstanceUID and obj.data[128:132] == b"DICM"
    path, digest = storage.write_object(tmp_path / "job-1", obj)
    assert pydicom.dcmread(path).SOPInstanceUID == ds.SOPInstanceUID
    assert len(digest) == 64
    assert [p.name for p in (tmp_path / "job-1").iterdir()] == [path.name]  # no temp files left behind


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)  # a full disk cannot be produced here on demand
    with pytest.raises(OSError, match="No space"):
        storage.atomic_write_bytes(tmp_path / "x.dcm", b"data")
    assert list(tmp_path.iterdir()) == []


def test_encoded_object_validates() -> None:
    with pytest.raises(ValueError, match="kind"):
        EncodedObject("pdf", "1", "2", "3", "4", b"x" * 200)
    with pytest.raises(ValueError, match="Part 10"):
        EncodedObject("sr", "1", "2", "3", "4", b"x" * 200)


def test_previous_sr_becomes_predecessor_ref(tmp_path: Path) -> None:
    previous = PreviousResult(3, tmp_path / "sr.dcm", "1.2.3.4", "1.2.840.10008.5.1.4.1.1.88.34", "1.2", "1.2.9")
    ref = steps.predecessor_ref(previous)
    item = ref.to_item()
    assert item.StudyInstanceUID == "1.2"
    assert item.ReferencedSeriesSequence[0].SeriesInstanceUID == "1.2.9"
    assert item.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == "1.2.3.4"
    assert steps.predecessor_ref(None) is None
