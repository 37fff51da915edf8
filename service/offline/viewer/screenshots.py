"""Our results as a radiologist sees them in OHIF: analyse a CT, store it with the results, screenshot the viewer.

    python -m service.offline.viewer.screenshots --input ../shared/data/cptac_lscc_chest --out docs/viewer

1. ``bmd-node analyze INPUT`` (the production recipe, CPU or GPU as configured) writes result.json, seg.dcm,
   sr.dcm and key_image.dcm into a work folder;
2. Orthanc with its DICOMweb plugin and OHIF on one origin (``service.offline.viewer.site``) receive the CT and the
   three objects (REST upload);
3. headless Chromium opens the study: ``ct.png``; loads the SEG over the CT: ``seg_overlay.png``; loads the SR and
   steps through its measurements: ``sr_roi_NN.png``; opens the study again, opens the SR and answers Yes to
   OHIF's "track measurements" prompt: ``sr_panel.png`` (the measurement panel listing the levels);
4. ``viewer_readings.json`` in OUT: what OHIF showed (coloured overlay pixels, SR labels, panel text, console lines
   about SEG/SR/SCOORD) beside the per-level BMD of result.json.

Software WebGL is slow; a 99-slice chest CT takes a few minutes. Outside ``make test`` on purpose.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pydicom

from service.offline.viewer.browser import chromium, save_png
from service.offline.viewer.ohif import OhifPage
from service.offline.viewer.readings import read_seg, read_sr, readings_json, track_sr
from service.offline.viewer.site import viewer_site

ANALYZE_TIMEOUT_S = 1800
RESULT_OBJECTS = ("seg.dcm", "sr.dcm", "key_image.dcm")


def analyze(input_dir: Path, out_dir: Path, config: Path | None) -> dict[str, Any]:
    command = [sys.executable, "-m", "service", "analyze", str(input_dir), "--out", str(out_dir)]
    if config is not None:
        command += ["--config", str(config)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=ANALYZE_TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"bmd-node analyze failed ({done.returncode}): {done.stderr[-3000:]}")
    print(done.stdout)
    return dict(json.loads((out_dir / "result.json").read_text()))


def ct_files(input_dir: Path) -> list[Path]:
    files = sorted(p for p in input_dir.rglob("*") if p.is_file() and p.suffix.lower() in (".dcm", ""))
    if not files:
        raise ValueError(f"input {input_dir} holds no DICOM files")
    return files


def planar_groups(sr_path: Path) -> int:
    """How many measurement groups of the SR carry an image region (what OHIF can track and list in its panel)."""
    report = pydicom.dcmread(sr_path)
    return sum(1 for item in report.ContentSequence if item.ValueType == "CONTAINER"
               for group in item.get("ContentSequence", [])
               if any(child.ValueType == "SCOORD" for child in group.get("ContentSequence", [])))


def capture(input_dir: Path, out_dir: Path, work_dir: Path, config: Path | None = None) -> dict[str, Any]:
    """Run the whole sequence; returns (and writes) the readings."""
    out_dir.mkdir(parents=True, exist_ok=True)
    analysis = work_dir / "analysis"
    result = analyze(input_dir, analysis, config)
    ct = ct_files(input_dir)
    study = str(pydicom.dcmread(ct[0], stop_before_pixels=True).StudyInstanceUID)
    with viewer_site(work_dir) as site, chromium() as driver:
        site.orthanc.upload_all([*ct, *(analysis / name for name in RESULT_OBJECTS)])
        page = OhifPage(driver, site.server.origin)
        page.open_study(study, timeout_s=300.0)
        save_png(page.viewport_rgb(), out_dir / "ct.png")
        seg = read_seg(page, screenshot=out_dir / "seg_overlay.png", timeout_s=300.0)
        sr = read_sr(page, max_measurements=len(result["vertebrae"]) + 2, screenshot_dir=out_dir)
        driver.save_screenshot(str(out_dir / "viewer_window.png"))
        tracked = track_sr(page, study, expected_measurements=planar_groups(analysis / "sr.dcm"),
                           screenshot=out_dir / "sr_panel.png", timeout_s=300.0)
    levels = [v["level"] for v in result["vertebrae"]]
    readings = readings_json(
        input=str(input_dir), study_instance_uid=study, seg=seg, sr=sr, tracked=tracked,
        result_json_bmd_mg_cm3={v["level"]: v.get("bmd_mg_cm3") for v in result["vertebrae"]},
        panel_bmd_mg_cm3=tracked.panel_bmd(levels), on_image_bmd_mg_cm3=sr.annotation_bmd(levels),
    )
    (out_dir / "viewer_readings.json").write_text(json.dumps(readings, indent=2) + "\n")
    return readings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.offline.viewer.screenshots", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, required=True, help="folder of one CT series (DICOM files)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the screenshots and the readings JSON")
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--config", type=Path, default=None, help="bmd-node TOML configuration for analyze")
    args = parser.parse_args(argv)
    if args.work is not None:
        readings = capture(args.input, args.out, args.work, args.config)
    else:
        with tempfile.TemporaryDirectory(prefix="bmd-viewer-") as work:
            readings = capture(args.input, args.out, Path(work), args.config)
    seg, sr, tracked = readings["seg"], readings["sr"], readings["tracked"]
    print(f"SEG overlay shown: {seg['overlay_shown']} ({seg['coloured_before']} -> {seg['coloured_after']} px)")
    print(f"SR labels on the image: {len(sr['annotation_texts'])}; panel: {tracked['panel_count']} measurements, "
          f"BMD {readings['panel_bmd_mg_cm3']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
