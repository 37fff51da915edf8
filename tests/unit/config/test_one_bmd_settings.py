"""One BmdSettings: the TOML [bmd] section is the object the assessment takes (no second class, no copy)."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path
from typing import get_type_hints

import pytest

from service.calibration import contrast
from service.calibration.assess import assess_bmd
from service.calibration.settings import BmdSettings
from service.config import Config, load_config
from service.config_loader import ConfigError, toml_keys
from service.domain import guidelines
from service.measurement import exclusions, fracture
from service.pipeline import steps

SERVICE = Path(__file__).resolve().parents[3] / "service"

BMD_TOML_KEYS = ["roi_method", "erosion_mm", "summary_levels", "threshold_set", "osteoporosis_below_mg_cm3",
                 "normal_above_mg_cm3", "calibration_store_dir", "detect_synchronous_phantom", "correct_contrast",
                 "fracture_height_loss", "use_site_curve", "curve_site_k_hu_per_level", "precision_percent"]
"""The [bmd] keys sites' files and BMD_NODE_BMD__* variables use: they must keep working."""


def test_exactly_one_class_named_bmd_settings_in_service() -> None:
    homes = [path.relative_to(SERVICE.parent).as_posix()
             for path in sorted(SERVICE.rglob("*.py"))
             for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
             if isinstance(node, ast.ClassDef) and node.name == "BmdSettings"]
    assert homes == ["service/calibration/settings.py"]


def test_config_bmd_is_what_the_assessment_takes() -> None:
    assert isinstance(Config().bmd, BmdSettings)
    assert isinstance(load_config(env={}).bmd, BmdSettings)
    assert get_type_hints(assess_bmd)["settings"] is BmdSettings
    assert get_type_hints(steps.assess)["settings"] is BmdSettings
    assert get_type_hints(Config)["bmd"] is BmdSettings


def test_toml_keys_are_unchanged_and_the_assessment_knobs_are_not_keys() -> None:
    assert toml_keys(BmdSettings) == BMD_TOML_KEYS
    internal = {f.name for f in dataclasses.fields(BmdSettings)} - set(BMD_TOML_KEYS)
    assert internal == {"threshold_version", "synchronous_phantom_definition", "use_internal_calibration",
                        "contrast_aorta_hu", "min_roi_volume_mm3", "sclerosis_hu", "sclerosis_max_fraction",
                        "metal_hu"}


@pytest.mark.parametrize(("toml", "env", "key"), [
    ("[bmd]\nmetal_hu = 3000.0\n", {}, "bmd.metal_hu"),
    ("", {"BMD_NODE_BMD__THRESHOLD_VERSION": "v2"}, "bmd.threshold_version"),
    ("", {"BMD_NODE_BMD__CURVE_SITE_K": "1.5"}, "bmd.curve_site_k"),
    ("", {"BMD_NODE_BMD__ALGORITHM_VERSION": "9"}, "bmd.algorithm_version"),
    ("[bmd]\nosteoporosis_below_mg_cm3 = 130.0\n", {}, "bmd.osteoporosis_below_mg_cm3"),
    ("[bmd]\nerosion_mm = -1.0\n", {}, "bmd.erosion_mm"),
    ('[bmd]\ncalibration_store_dir = ""\n', {}, "bmd.calibration_store_dir"),
    ("[bmd]\ncalibration_store_dir = 3\n", {}, "bmd.calibration_store_dir"),
    ("[series]\nmin_slices = 0\n", {}, "series.min_slices"),
    ('[segmentation]\ndevice = "tpu"\n', {}, "segmentation.device"),
    ('[logging]\nlevel = "LOUD"\n', {}, "logging.level"),
])
def test_errors_from_the_stage_sections_name_the_key(tmp_path: Path, toml: str, env: dict[str, str],
                                                     key: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env)
    assert str(info.value).startswith(key), str(info.value)


def test_env_variables_of_the_bmd_section_keep_working() -> None:
    config = load_config(env={"BMD_NODE_BMD__CALIBRATION_STORE_DIR": "/srv/calibration",
                              "BMD_NODE_BMD__USE_SITE_CURVE": "true", "BMD_NODE_BMD__CURVE_SITE_K_HU_PER_LEVEL": "-3.5",
                              "BMD_NODE_BMD__THRESHOLD_SET": "SITE-2026-v2"})
    assert config.bmd.calibration_store_dir == Path("/srv/calibration")
    assert config.bmd.curve_site_k == -3.5
    assert config.bmd.threshold_set == "SITE-2026-v2"


def test_defaults_read_the_guidelines_and_match_the_measurement_constants() -> None:
    bmd = BmdSettings()
    assert bmd.thresholds == guidelines.Thresholds(
        f"{guidelines.DEFAULT_THRESHOLD_SET}-{guidelines.DEFAULT_THRESHOLD_VERSION}",
        guidelines.DEFAULT_THRESHOLD_VERSION, guidelines.OSTEOPOROSIS_BELOW_MG_CM3, guidelines.NORMAL_ABOVE_MG_CM3)
    # the identifier recorded in results is the same as before the two classes became one
    assert bmd.thresholds.identifier == guidelines.Thresholds().identifier
    assert bmd.thresholds.identifier == "ACR2018-ISCD-v1 (<80 / 80-120 / >120 mg/cm3)"
    assert bmd.fracture_height_loss == fracture.GENANT_HEIGHT_LOSS
    assert bmd.metal_hu == exclusions.METAL_HU
    assert bmd.sclerosis_hu == exclusions.SCLEROSIS_HU
    assert bmd.sclerosis_max_fraction == exclusions.SCLEROSIS_MAX_FRACTION
    assert bmd.min_roi_volume_mm3 == exclusions.DEFAULT_MIN_ROI_VOLUME_MM3
    assert bmd.contrast_aorta_hu == contrast.CONTRAST_AORTA_HU
    assert bmd.calibration_store_dir == Path("var/calibration")  # the node's store, as the [bmd] default
    assert bmd.curve_site_k is None  # the per-patient fit unless use_site_curve


def test_the_redacted_start_up_view_lists_the_keys_only() -> None:
    assert list(Config().redacted()["bmd"]) == BMD_TOML_KEYS
