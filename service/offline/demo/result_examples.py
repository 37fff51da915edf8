"""Example result objects for the documentation: dsrdump of the SR, the key image as PNG, validator summary.

    python -m service.offline.demo.result_examples --out docs/results  # phantom + ../shared/data/cptac_lscc_chest

``write_docs`` is the reusable part: give it any volume, segmentation, ROI labels and result (e.g. from the real
segmentation model) and it writes the same files. The two built-in cases use the phantom's true vertebral bodies
and, for the real chest CT, hand-placed cylinders along the spine (no model needed).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

from service.calibration.assess import assess_bmd
from service.calibration.settings import BmdSettings
from service.domain.levels import VertebraLevel
from service.domain.results import ScreeningResult
from service.domain.segmentation import LabelledVertebra, SpineSegmentation
from service.domain.volume import CTVolume
from service.offline.phantom import labels as phantom_labels
from service.offline.phantom.api import PhantomSpec, generate, write_phantom
from service.results.build import ResultObjects, build_result_objects
from service.results.common import AlgorithmInfo
from service.results.validators import dcentvfy, dciodvfy, pixelmed_sr
from service.segmentation.settings import SegmentationSettings
from service.series.volume_loader import load_series, load_series_folder

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[3]  # service/offline/demo/ -> the repository
CPTAC_CHEST = REPO_ROOT.parent / "shared" / "data" / "cptac_lscc_chest"


@dataclass(frozen=True, eq=False)
class DemoCase:
    volume: CTVolume
    segmentation: SpineSegmentation
    roi_labels: npt.NDArray[np.int16]
    result: ScreeningResult


def write_docs(volume: CTVolume, segmentation: SpineSegmentation, roi_labels: npt.NDArray[np.integer],
               result: ScreeningResult, out_dir: Path, name: str = "case",
               algorithm: AlgorithmInfo | None = None) -> dict[str, Path]:
    """Build the result objects and write ``{name}_sr_dsrdump.txt``, ``{name}_key_image.png``,
    ``{name}_result.json`` and ``{name}_validation.txt`` into ``out_dir``. Returns the written paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if algorithm is None:
        algorithm = AlgorithmInfo(version=result.algorithm_version or "dev", model_name=segmentation.model_name,
                                  model_version=segmentation.model_version)
    objects = build_result_objects(volume, segmentation, np.asarray(roi_labels, dtype=np.int16), result, algorithm)
    written: dict[str, Path] = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = save_objects(objects, Path(tmp))
        dump = subprocess.run(["dsrdump", "+Pl", "+Pc", "+Pu", str(files["sr"])], capture_output=True, text=True,
                              check=True).stdout
        written["dsrdump"] = out_dir / f"{name}_sr_dsrdump.txt"
        written["dsrdump"].write_text(dump)
        written["validation"] = out_dir / f"{name}_validation.txt"
        written["validation"].write_text(validation_summary(volume, files))
    written["key_image"] = out_dir / f"{name}_key_image.png"
    Image.fromarray(objects.key_image.pixel_array).save(written["key_image"], optimize=True)
    written["result_json"] = out_dir / f"{name}_result.json"
    written["result_json"].write_text(json.dumps(result.to_json_dict(), indent=2) + "\n")
    return written


def save_objects(objects: ResultObjects, folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for kind, ds in (("seg", objects.seg), ("sr", objects.sr), ("key_image", objects.key_image)):
        files[kind] = folder / f"{kind}.dcm"
        ds.save_as(files[kind], enforce_file_format=True)
    return files


def validation_summary(volume: CTVolume, files: dict[str, Path]) -> str:
    lines = ["Validator results (error lines; warnings about the private scheme 99BMDNODE are expected)", ""]
    for kind, path in files.items():
        report = dciodvfy(path)
        lines.append(f"dciodvfy -new {kind}: {len(report.errors)} errors, {len(report.warnings)} warnings")
        lines += [f"  {e}" for e in report.errors]
    for report in pixelmed_sr([files["sr"]]).values():
        lines.append(f"PixelMed DicomSRValidator sr: {len(report.errors)} errors, {len(report.warnings)} warnings")
        lines += [f"  {e}" for e in report.errors]
    entity = dcentvfy([*volume.source_paths, *files.values()])
    lines.append(f"dcentvfy CT series + SEG + SR + key image: {len(entity.errors)} errors, "
                 f"{len(entity.warnings)} warnings")
    lines += [f"  {e}" for e in entity.errors]
    return "\n".join(lines) + "\n"


def _segmentation(volume: CTVolume, body: npt.NDArray[np.int16], model_name: str, model_version: str
                  ) -> SpineSegmentation:
    vertebrae = []
    for value in sorted(int(v) for v in np.unique(body) if v != 0):
        mask = body == value
        centroid = volume.index_to_lps(np.argwhere(mask).mean(axis=0))
        touches = bool(mask[:, :, 0].any() or mask[:, :, -1].any())
        vertebrae.append(LabelledVertebra(VertebraLevel(value), tuple(float(c) for c in centroid),
                                          cut_by_fov=touches))
    return SpineSegmentation(body, None, tuple(vertebrae), model_name, model_version)


def _assess(volume: CTVolume, segmentation: SpineSegmentation) -> DemoCase:
    # no stored phantom calibrations: the examples show the calibration chosen from the scan itself
    assessment = assess_bmd(volume, segmentation, BmdSettings(calibration_store_dir=None), algorithm_version="demo")
    return DemoCase(volume, segmentation, assessment.roi_labels, assessment.result)


def phantom_case(folder: Path, seed: int = 11, feet_first: bool = False) -> DemoCase:
    """An abdominal phantom (3 mm, 256 x 256) written as DICOM, its true vertebral bodies, the real assessment."""
    spec = PhantomSpec(seed=seed, region="abdomen", slice_thickness_mm=3.0, rows=256, columns=256,
                       pixel_spacing_mm=1.5, feet_first=feet_first)
    phantom = generate(spec)
    paths = sorted(p for p in write_phantom(phantom, folder) if p.suffix == ".dcm")
    volume = load_series(paths)
    if volume.shape != phantom.labels.shape:
        raise RuntimeError(f"loaded phantom {volume.shape} differs from its labels {phantom.labels.shape}")
    body = phantom_labels.body_labels_of(phantom.labels)
    body[(body < VertebraLevel.T1) | (body > VertebraLevel.L5)] = 0
    return _assess(volume, _segmentation(volume, body, "phantom-truth", "1"))


# Hand-placed masks for the real chest CT: a cylinder (body) tracked along the spine slice by slice.
CPTAC_SEED_SLICE = 50
CPTAC_SEED_COLUMN_ROW = (225, 345)  # centre of the vertebral body on slice 50 (read off the image)
CPTAC_BODY_RADIUS_MM = 14.0
CPTAC_LEVELS = tuple(VertebraLevel(v) for v in range(VertebraLevel.T1, VertebraLevel.L1 + 1))  # README: ~T1..L1


def cptac_case(folder: Path = CPTAC_CHEST, *, hand_placed: bool = False) -> DemoCase:
    """The real chest CT segmented by the node's own model (the production segmenter), then the real assessment.

    ``hand_placed=True`` uses discs tracked along the spine instead (not anatomy; for debugging the writers
    without a model).
    """
    if not folder.exists():
        raise FileNotFoundError(f"real CT case missing: {folder}")
    volume = load_series_folder(folder)
    if hand_placed:
        body = hand_placed_bodies(volume, CPTAC_SEED_SLICE, CPTAC_SEED_COLUMN_ROW, CPTAC_LEVELS)
        return _assess(volume, _segmentation(volume, body, "hand-placed", "1"))
    # torch and MONAI (seconds to import) only for the case that runs the real model
    from service.segmentation.inference import load_segmenter  # noqa: PLC0415

    segmentation = load_segmenter(SegmentationSettings()).segment(volume)
    return _assess(volume, segmentation)


def hand_placed_bodies(volume: CTVolume, seed_slice: int, seed_column_row: tuple[int, int],
                       levels: tuple[VertebraLevel, ...], radius_mm: float = CPTAC_BODY_RADIUS_MM
                       ) -> npt.NDArray[np.int16]:
    """Discs of ``radius_mm`` following the brightest disc-shaped bone from ``seed_slice`` up and down, split into
    ``levels`` of equal height (cranial first) with a one-slice gap as the disc space."""
    sx, sy, _ = volume.spacing_mm
    ri, rj = radius_mm / sx, radius_mm / sy
    cols, rows, n = volume.shape
    ii, jj = np.mgrid[0:cols, 0:rows]
    centres: dict[int, tuple[float, float]] = {seed_slice: (float(seed_column_row[0]), float(seed_column_row[1]))}

    def best(k: int, start: tuple[float, float]) -> tuple[float, float]:
        # Local window only (speed); clipped HU so a bright cortex edge or contrast vessel does not pull the disc.
        pad = int(max(ri, rj)) + 6
        i0, j0 = max(0, int(start[0]) - pad), max(0, int(start[1]) - pad)
        window = np.clip(volume.hu[i0 : int(start[0]) + pad, j0 : int(start[1]) + pad, k], 0, 400)
        wi, wj = np.mgrid[0 : window.shape[0], 0 : window.shape[1]]
        best_score, best_c = -np.inf, start
        for di in range(-3, 4):
            for dj in range(-3, 4):
                ci, cj = start[0] + di, start[1] + dj
                disc = ((wi + i0 - ci) / ri) ** 2 + ((wj + j0 - cj) / rj) ** 2 <= 1.0
                score = float(window[disc].mean()) - 2.0 * (abs(di) + abs(dj))
                if score > best_score:
                    best_score, best_c = score, (ci, cj)
        return best_c

    for step in (1, -1):
        k, c = seed_slice + step, centres[seed_slice]
        while 0 <= k < n:
            c = best(k, c)
            centres[k] = c
            k += step
    # cranial end first
    _, sign = volume.superior_axis()
    order = list(range(n))[::-1] if sign > 0 else list(range(n))
    per_level = n / len(levels)
    body = np.zeros(volume.shape, dtype=np.int16)
    for position, k in enumerate(order):
        index = int(position // per_level)
        if position - index * per_level < 1.0:  # first slice of each level: disc space
            continue
        ci, cj = centres[k]
        disc = ((ii - ci) / ri) ** 2 + ((jj - cj) / rj) ** 2 <= 1.0
        body[:, :, k][disc] = int(levels[min(index, len(levels) - 1)])
    return body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="write example SR dumps and key images for the documentation")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "results")
    parser.add_argument("--cases", nargs="+", default=["phantom", "cptac_lscc_chest"],
                        choices=["phantom", "cptac_lscc_chest"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.cases:
            case = phantom_case(Path(tmp) / "phantom") if name == "phantom" else cptac_case()
            written = write_docs(case.volume, case.segmentation, case.roi_labels, case.result, args.out, name)
            for kind, path in written.items():
                print(f"{name} {kind}: {path}")
    if shutil.which("dsrdump") is None:
        print("dsrdump missing")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
