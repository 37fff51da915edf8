"""Suspected vertebral fractures in the result objects: coded in the SR (read back), valid for dciodvfy and PixelMed,
in result.json, and written on the key image."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest

from service.domain.levels import VertebraLevel
from service.domain.results import ExclusionReason, FractureStatus, ScreeningResult
from service.offline.demo.result_examples import save_objects
from service.results import codes
from service.results.build import AlgorithmInfo, build_result_objects
from service.results.keyimage import FRACTURE_COLOR, fracture_text, render_key_image
from service.results.validators import dciodvfy, pixelmed_sr
from tests.unit.results.synthetic import HEAD_FIRST_SUPINE, SyntheticCase, synthetic_case

os.environ.setdefault("OMP_NUM_THREADS", "1")

ALGORITHM = AlgorithmInfo(version="0.1.0", model_name="box-model", model_version="0.0.1")
# per level: status, grade, loss (T12 is the hand result's excluded level)
OUTCOMES = {
    VertebraLevel.T12: (FractureStatus.FRACTURED, 2, 0.32),
    VertebraLevel.L1: (FractureStatus.NOT_MEASURABLE, None, None),
    VertebraLevel.L2: (FractureStatus.NOT_FRACTURED, 0, 0.04),
}


def _with_fractures(result: ScreeningResult) -> ScreeningResult:
    vertebrae = []
    for m in result.vertebrae:
        status, grade, loss = OUTCOMES[m.level]
        changes: dict[str, object] = {"fracture_status": status, "genant_grade": grade, "height_loss": loss,
                                      "fracture_detail": f"{status.value} test detail"}
        if status is FractureStatus.FRACTURED:
            changes |= {"evaluable": False, "bmd_mg_cm3": None, "exclusion_reason": ExclusionReason.FRACTURE,
                        "exclusion_detail": "Genant grade 2 (32 % height loss)"}
        vertebrae.append(dataclasses.replace(m, **changes))
    return dataclasses.replace(result, vertebrae=tuple(vertebrae))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[SyntheticCase, ScreeningResult, dict[str, Path]]:
    tmp = tmp_path_factory.mktemp("fracture")
    case = synthetic_case(tmp / "ct", HEAD_FIRST_SUPINE)
    result = _with_fractures(case.result)
    objects = build_result_objects(case.volume, case.segmentation, case.roi_labels, result, ALGORITHM)
    return case, result, save_objects(objects, tmp / "out")


def test_result_json_carries_the_fracture_check(built: tuple[SyntheticCase, ScreeningResult, dict[str, Path]]) -> None:
    _, result, _ = built
    doc = {v["level"]: v for v in result.to_json_dict()["vertebrae"]}
    assert doc["T12"]["fracture_status"] == "fractured" and doc["T12"]["genant_grade"] == 2
    assert doc["T12"]["height_loss"] == 0.32
    assert doc["L1"]["fracture_status"] == "not_measurable" and doc["L1"]["genant_grade"] is None
    assert doc["L2"]["fracture_status"] == "not_fractured" and doc["L2"]["genant_grade"] == 0


def test_sr_reads_back_the_fracture_findings(built: tuple[SyntheticCase, ScreeningResult, dict[str, Path]]) -> None:
    _, _, files = built
    groups = hd.sr.srread(files["sr"]).content.get_volumetric_roi_measurement_groups()
    expected_status = {FractureStatus.FRACTURED: ("373066001", "SCT"),  # SNOMED CT yes
                       FractureStatus.NOT_FRACTURED: ("373067005", "SCT"),  # no
                       FractureStatus.NOT_MEASURABLE: ("82334004", "SCT")}  # indeterminate
    for level, (status, grade, _) in OUTCOMES.items():
        group = next(g for g in groups if g.finding_sites and codes.level_from_code(
            g.finding_sites[0].value.value, g.finding_sites[0].value.scheme_designator) == level)
        fracture = group.get_qualitative_evaluations(name=hd.sr.CodedConcept("125605004", "SCT", "Fracture of bone"))
        assert [(e.value.value, e.value.scheme_designator) for e in fracture] == [expected_status[status]], level
        grades = [e.value.value for e in group.get_qualitative_evaluations(name=codes.GENANT_GRADE)]
        assert grades == ([] if grade is None else [f"GENANT-{grade}"]), level


@pytest.mark.slow  # PixelMed's JVM
def test_sr_with_fracture_findings_is_valid(built: tuple[SyntheticCase, ScreeningResult, dict[str, Path]]) -> None:
    _, _, files = built
    for kind, path in files.items():
        report = dciodvfy(path)
        assert report.ok, (kind, report.errors)
    for path, report in pixelmed_sr([files["sr"]]).items():
        assert "Found Root Template TID_1500" in report.output, report.output[-2000:]
        assert report.ok, (path, report.errors)


def test_key_image_writes_the_suspected_fracture(built: tuple[SyntheticCase, ScreeningResult, dict[str, Path]]) -> None:
    case, result, _ = built
    t12 = next(m for m in result.vertebrae if m.level is VertebraLevel.T12)
    assert fracture_text(t12) == "T12 fracture G2 (32 %)"
    assert all(fracture_text(m) is None for m in result.vertebrae if m.level is not VertebraLevel.T12)

    def fracture_pixels(r: ScreeningResult) -> int:
        image = render_key_image(case.volume, case.segmentation, case.roi_labels, r, ALGORITHM)
        return int(np.count_nonzero(np.all(image == np.array(FRACTURE_COLOR, dtype=np.uint8), axis=-1)))

    assert fracture_pixels(result) > 200  # the status cell and the findings line, in the fracture colour
    assert fracture_pixels(case.result) == 0
