"""Our result objects in OHIF, on a phantom study analysed by ``bmd-node analyze`` (the real pipeline, CPU).

Issue 14: the SEG must load over DICOMweb and show its overlay on the CT; the SR must make OHIF's measurement
panel list each measured level with the BMD of result.json (within 0.5 mg/cm3). The truth is result.json, which
the pipeline wrote; what is checked is what OHIF shows of the DICOM objects.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from service.domain.levels import VertebraLevel
from service.offline.phantom.api import PhantomSpec, generate, write_phantom
from service.offline.viewer.ohif import OhifPage
from service.offline.viewer.readings import SEG_MIN_NEW_PIXELS, SrReading, read_seg, read_sr, track_sr
from service.offline.viewer.site import ViewerSite
from tests.viewer.conftest import console_report

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.viewer]

BMD_TOLERANCE_MG_CM3 = 0.5
ANALYZE_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def analysed(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], Path, dict[str, Any]]:
    """A small abdominal phantom (T11..L3, 256 x 256, 2.5 mm) and the objects ``bmd-node analyze`` made of it."""
    work = tmp_path_factory.mktemp("phantom_viewer")
    spec = PhantomSpec(seed=11, region="abdomen", rows=256, columns=256, pixel_spacing_mm=1.4,
                       slice_thickness_mm=2.5, fov_top_level=VertebraLevel.T11, fov_bottom_level=VertebraLevel.L3)
    ct = sorted(p for p in write_phantom(generate(spec), work / "phantom") if p.suffix == ".dcm")
    out = work / "analysis"
    done = subprocess.run([sys.executable, "-m", "service", "analyze", str(ct[0].parent), "--out", str(out)],
                          capture_output=True, text=True, timeout=ANALYZE_TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return ct, out, json.loads((out / "result.json").read_text())


@pytest.fixture(scope="module")
def opened(site: ViewerSite, page: OhifPage,
           analysed: tuple[list[Path], Path, dict[str, Any]]) -> Iterator[tuple[OhifPage, Path, dict[str, Any]]]:
    ct, out, result = analysed
    objects = [out / "seg.dcm", out / "sr.dcm", out / "key_image.dcm"]
    site.orthanc.upload_all([*ct, *objects])
    page.open_study(str(pydicom.dcmread(ct[0], stop_before_pixels=True).StudyInstanceUID))
    yield page, out, result


def _measured_levels(result: dict[str, Any]) -> dict[str, float]:
    return {v["level"]: float(v["bmd_mg_cm3"]) for v in result["vertebrae"] if v.get("bmd_mg_cm3") is not None}


def test_our_seg_overlay_appears(opened: tuple[OhifPage, Path, dict[str, Any]]) -> None:
    page, out, _ = opened
    seg = read_seg(page)
    assert seg.description == pydicom.dcmread(out / "seg.dcm", stop_before_pixels=True).SeriesDescription
    assert seg.coloured_before < SEG_MIN_NEW_PIXELS, "the bare CT must render grey"
    assert seg.overlay_shown, (seg, console_report(page))


def test_our_sr_draws_each_level_with_its_name_hu_and_bmd(opened: tuple[OhifPage, Path, dict[str, Any]]) -> None:
    """OHIF draws each level's ROI ellipse from the SR and labels it with the level's name, mean HU and BMD; the
    values must be result.json's (BMD within 0.5 mg/cm3, HU within 0.01)."""
    page, _, result = opened
    expected = _measured_levels(result)
    assert expected, "the phantom must give at least one measured level"
    sr: SrReading = read_sr(page, max_measurements=len(result["vertebrae"]) + 2)
    drawn = sr.annotation_bmd(list(expected))
    missing = {level: bmd for level, bmd in expected.items()
               if not any(abs(value - bmd) <= BMD_TOLERANCE_MG_CM3 for value in drawn[level])}
    assert not missing, (f"OHIF's SR labels lack these levels/BMD: {missing}; on-image SR labels: "
                         f"{sr.annotation_texts}; console: {sr.console[-20:]}; {console_report(page, 10)}")
    for vertebra in result["vertebrae"]:
        if vertebra.get("bmd_mg_cm3") is None:
            continue
        label = next(t for t in sr.annotation_texts if re.search(rf"\b{vertebra['level']}\b", t))
        assert f"{vertebra['trabecular_hu_mean']:.2f} [hnsf'U]" in label, label


def test_our_sr_tracked_lists_each_level_with_its_bmd_in_the_panel(
        opened: tuple[OhifPage, Path, dict[str, Any]]) -> None:
    """What a reader does to get the SR into OHIF's measurement panel: open the study, open the SR, answer Yes to
    "Do you want to continue tracking measurements for this study?". The panel must then list each measured level
    by name with the BMD of result.json (within 0.5 mg/cm3), and no other BMD for that level."""
    page, out, result = opened
    expected = _measured_levels(result)
    study = str(pydicom.dcmread(out / "sr.dcm", stop_before_pixels=True).StudyInstanceUID)
    tracked = track_sr(page, study, expected_measurements=len(expected))
    assert tracked.prompt_answered, ("OHIF did not offer to track the SR's measurements", tracked.console[-20:],
                                     console_report(page, 20))
    listed = tracked.panel_bmd(list(expected))
    wrong = {level: (bmd, listed[level]) for level, bmd in expected.items()
             if not listed[level] or any(abs(value - bmd) > BMD_TOLERANCE_MG_CM3 for value in listed[level])}
    assert not wrong, (f"panel BMD (expected, listed) per level: {wrong}; panel: {tracked.panel_text!r}; "
                       f"console: {tracked.console[-20:]}")
    assert tracked.panel_count >= len(expected), tracked.panel_text
