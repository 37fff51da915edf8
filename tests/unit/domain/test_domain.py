"""Domain value types validate themselves and serialise to the result.json names."""

from __future__ import annotations

import json

import numpy as np
import pytest

from service.domain.levels import TOTALSEG_V2_VERTEBRA_IDS, VertebraLevel
from service.domain.results import (
    CalibrationKind,
    Category,
    CurveFit,
    ExclusionReason,
    LinearCalibration,
    PatientSummary,
    RoiMethod,
    ScreeningResult,
    VertebraMeasurement,
)
from service.domain.segmentation import LabelledVertebra, SpineSegmentation
from service.domain.volume import CTVolume, mm_to_voxels


def test_levels_are_ordered_and_indexed_like_xiong() -> None:
    assert VertebraLevel.T12 < VertebraLevel.L1
    assert VertebraLevel.T5.xiong_index == 1
    assert VertebraLevel.L2.xiong_index == 10
    assert VertebraLevel.L3.xiong_index is None
    assert VertebraLevel.from_name("l1") is VertebraLevel.L1
    assert VertebraLevel.T12.shifted(1) is VertebraLevel.L1
    assert VertebraLevel.C1.shifted(-1) is None
    assert TOTALSEG_V2_VERTEBRA_IDS[31] is VertebraLevel.L1
    with pytest.raises(ValueError, match="unknown vertebra level 'X9'"):
        VertebraLevel.from_name("X9")


def test_volume_rejects_zero_spacing_and_maps_coordinates() -> None:
    affine = np.diag([0.5, 0.5, 2.0, 1.0])
    affine[:3, 3] = [-100, -50, 10]
    volume = CTVolume(hu=np.zeros((4, 5, 6), np.float32), affine_lps=affine)
    assert volume.spacing_mm == (0.5, 0.5, 2.0)
    assert volume.voxel_volume_mm3 == pytest.approx(0.5)
    assert volume.index_to_lps([2, 4, 3]).tolist() == [-99.0, -48.0, 16.0]
    assert volume.lps_to_index([-99.0, -48.0, 16.0]) == pytest.approx([2, 4, 3])
    with pytest.raises(ValueError, match="spacing_mm must be positive"):
        CTVolume(hu=np.zeros((2, 2, 2), np.float32), affine_lps=np.diag([1.0, 1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="one entry per slice"):
        CTVolume(hu=np.zeros((2, 2, 2), np.float32), affine_lps=np.eye(4), sop_instance_uids=("1",))


def test_mm_to_voxels_per_axis() -> None:
    assert mm_to_voxels(3.0, (0.7, 0.7, 2.5)) == (4, 4, 1)
    with pytest.raises(ValueError, match="distance_mm"):
        mm_to_voxels(-1.0, (1.0, 1.0, 1.0))


def test_segmentation_must_list_present_labels() -> None:
    labels = np.zeros((4, 4, 4), np.int16)
    labels[1, 1, 1] = int(VertebraLevel.L1)
    with pytest.raises(ValueError, match="present"):
        SpineSegmentation(labels, None, (), "m", "1")
    seg = SpineSegmentation(labels, None, (LabelledVertebra(VertebraLevel.L1, (0, 0, 0)),), "m", "1")
    assert seg.mask(VertebraLevel.L1).sum() == 1
    with pytest.raises(ValueError, match="uncertainty_reason"):
        LabelledVertebra(VertebraLevel.L1, (0, 0, 0), level_uncertain=True)


def test_measurement_consistency_and_result_json() -> None:
    with pytest.raises(ValueError, match="no exclusion_reason"):
        VertebraMeasurement(VertebraLevel.L1, (0, 0, 0), RoiMethod.EROSION_3MM, None, None, None, 0, 0.0, None, False)
    with pytest.raises(ValueError, match="slope must be positive"):
        LinearCalibration(CalibrationKind.DEFAULT, 0.0, 0.0)
    calibration = LinearCalibration(CalibrationKind.INTERNAL, 0.8, 5.0)
    l1 = VertebraMeasurement(
        VertebraLevel.L1, (1.0, 2.0, 3.0), RoiMethod.EROSION_3MM, 120.0, 119.0, 20.0, 1000, 1500.0,
        calibration.bmd_mg_cm3(120.0), True,
    )
    l2 = VertebraMeasurement(
        VertebraLevel.L2, (1.0, 2.0, -30.0), RoiMethod.EROSION_3MM, 60.0, 61.0, 20.0, 900, 1400.0, None, False,
        ExclusionReason.FRACTURE, "anterior height 70 % of neighbours",
    )
    result = ScreeningResult(
        "1.2.3", "1.2.3.4", (l1, l2),
        PatientSummary(101.0, (VertebraLevel.L1,), Category.OSTEOPENIA, "L1 only", "ACR2018-ISCD"),
        calibration,
        CurveFit(-2.0, 140.0, 0.9, (VertebraLevel.T5, VertebraLevel.T6)),
    )
    doc = json.loads(json.dumps(result.to_json_dict()))
    assert doc["vertebrae"][0]["level"] == "L1"
    assert doc["vertebrae"][0]["bmd_mg_cm3"] == pytest.approx(101.0)
    assert doc["vertebrae"][1]["exclusion_reason"] == "fracture"
    assert doc["summary"]["category"] == "osteopenia"
    assert doc["summary"]["levels_used"] == ["L1"]
    assert doc["calibration"]["kind"] == "internal"
    assert doc["curve_fit"]["levels_used"] == ["T5", "T6"]
    assert CurveFit(-2.0, 140.0, 0.9, ()).hu_at(VertebraLevel.L2) == pytest.approx(120.0)
