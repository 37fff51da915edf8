"""The segmentation model's start-up check (issue 19 pt 6) on copies of the shipped bundles, damaged on purpose:
every failure names the file at fault; an intact bundle loads and passes the warm-up forward pass."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest

from service.domain.paths import PROJECT_ROOT
from service.segmentation.preflight import (
    ModelPreflightError,
    check_model_files,
    load_checked_segmenter,
    required_model_files,
)
from service.segmentation.settings import SegmentationSettings

SHIPPED = PROJECT_ROOT / "models"


@pytest.fixture
def bundles(tmp_path: Path) -> SegmentationSettings:
    """Copies of the two shipped bundles, configured as the node would be (CPU)."""
    for name in ("vertebra_seg", "vertebra_body_fine"):
        if not (SHIPPED / name / "models" / "model.pt").is_file():
            pytest.fail(f"shipped bundle {name} missing under {SHIPPED}")
        shutil.copytree(SHIPPED / name, tmp_path / name)
    return SegmentationSettings(bundle_dir=tmp_path / "vertebra_seg", fine_bundle_dir=tmp_path / "vertebra_body_fine",
                                device="cpu")


def _problem(settings: SegmentationSettings) -> ModelPreflightError:
    with pytest.raises(ModelPreflightError) as caught:
        check_model_files(settings)
    return caught.value


def test_required_files_follow_the_configuration(bundles: SegmentationSettings) -> None:
    both = required_model_files(bundles)
    assert len(both) == 6 and bundles.bundle_dir / "models" / "model.pt" in both
    coarse_only = required_model_files(SegmentationSettings(bundle_dir=bundles.bundle_dir, fine_stage=False))
    assert {p.parent.parent for p in coarse_only} == {bundles.bundle_dir}
    assert required_model_files(SegmentationSettings(backend="totalsegmentator")) == ()
    assert check_model_files(bundles) == both


def test_missing_weights_are_named(bundles: SegmentationSettings) -> None:
    weights = bundles.fine_bundle_dir / "models" / "model.pt"
    weights.unlink()
    error = _problem(bundles)
    assert error.path == weights and str(weights) in str(error) and "missing" in str(error)


def test_missing_bundle_folder_names_its_first_file(tmp_path: Path) -> None:
    error = _problem(SegmentationSettings(bundle_dir=tmp_path / "nowhere", fine_stage=False))
    assert error.path == tmp_path / "nowhere" / "configs" / "metadata.json"


@pytest.mark.parametrize("damage", ["truncated", "crc", "empty"])
def test_damaged_weights_are_named_without_torch(bundles: SegmentationSettings, damage: str) -> None:
    weights = bundles.bundle_dir / "models" / "model.pt"
    data = bytearray(weights.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "crc":  # one byte inside the largest member's stored data: the archive reads, its CRC fails
        with zipfile.ZipFile(weights) as archive:
            member = max(archive.infolist(), key=lambda info: info.file_size)
        start = member.header_offset + 30 + len(member.filename.encode()) + len(member.extra)
        data[start + member.compress_size // 2] ^= 0xFF
    else:
        data = bytearray()
    weights.write_bytes(bytes(data))
    error = _problem(bundles)
    assert error.path == weights, error
    assert {"truncated": "truncated or damaged", "crc": "CRC", "empty": "empty"}[damage] in str(error)


def test_invalid_json_config_is_named(bundles: SegmentationSettings) -> None:
    config = bundles.bundle_dir / "configs" / "inference.json"
    config.write_text(config.read_text()[:-20])
    error = _problem(bundles)
    assert error.path == config and "not valid JSON" in str(error)


def test_intact_bundles_load_and_warm(bundles: SegmentationSettings) -> None:
    segmenter = load_checked_segmenter(bundles)
    assert segmenter.fine_bundle is not None
    assert json.loads((bundles.bundle_dir / "configs" / "metadata.json").read_text())["name"] in segmenter.name


def test_weights_of_another_network_are_named(bundles: SegmentationSettings) -> None:
    """A whole, readable torch file that does not fit the bundle's network (here: the fine model's weights in the
    coarse bundle) passes the file check and fails the load, naming the file."""
    weights = bundles.bundle_dir / "models" / "model.pt"
    shutil.copyfile(bundles.fine_bundle_dir / "models" / "model.pt", weights)
    check_model_files(bundles)
    with pytest.raises(ModelPreflightError) as caught:
        load_checked_segmenter(bundles)
    assert str(weights) in str(caught.value) and caught.value.path == bundles.bundle_dir
