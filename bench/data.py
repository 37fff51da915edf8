"""Benchmark inputs, generated once into bench/work/data and reused (a ``ready.json`` marks a finished set).

* ingest studies: ``write_ingest_series`` (300 x 512 x 512, ~0.5 MB per file), one folder per study;
* phantoms: service.offline.phantom (chest 300 x 1 mm, abdomen 5 mm, chest-abdomen 600 x 1 mm), rendered in a child
  process (``python -m bench.data``) so that the benchmark process itself stays small; next to the DICOM files the
  phantom's true vertebral-body labels (``body_labels.npy`` + ``affine_lps.npy``, on the CT grid) are kept for the
  truth fallback of bench.pipeline;
* clones: the same pixels with new Study / Series / SOP Instance UIDs, for runs that need distinct studies.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom import dcmread
from pydicom.uid import generate_uid

from bench import REPO_ROOT
from tests.support.ct_series import CTSeriesHeader, write_ct_series

log = logging.getLogger(__name__)

READY = "ready.json"


@dataclass(frozen=True)
class PhantomRecipe:
    """What to render: PhantomSpec fields plus an optional forced grid (z spacing, slice count)."""

    name: str
    spec: dict[str, Any]
    slices: int | None = None
    """None: the natural field of view of the region at the spec's slice thickness."""

    def key(self) -> str:
        return self.name


CHEST_300 = PhantomRecipe("chest300", {"seed": 3, "region": "chest", "slice_thickness_mm": 1.0}, slices=300)
ABDOMEN_5MM = PhantomRecipe("abdomen5mm", {"seed": 5, "region": "abdomen", "slice_thickness_mm": 5.0})
CHEST_ABDOMEN_600 = PhantomRecipe("chestabd600", {"seed": 6, "region": "chest-abdomen", "slice_thickness_mm": 1.0},
                                  slices=600)
THIN_1500 = PhantomRecipe("thin1500", {"seed": 8, "region": "chest-abdomen", "slice_thickness_mm": 0.5}, slices=1500)
"""0.5 mm over 750 mm (1500 x 512 x 512): the long thin series of issue 17; the anatomy may end before the range."""
QUICK_ABDOMEN = PhantomRecipe("quick_abdomen", {"seed": 5, "region": "abdomen", "slice_thickness_mm": 5.0,
                                                "rows": 128, "columns": 128, "pixel_spacing_mm": 2.8})
QUICK_ABDOMEN_THIN = PhantomRecipe("quick_abdomen_thin", {"seed": 5, "region": "abdomen", "slice_thickness_mm": 2.5,
                                                          "rows": 128, "columns": 128, "pixel_spacing_mm": 2.8})
"""The quick run's second size for the memory fit."""


@dataclass(frozen=True)
class SeriesSet:
    """One CT series on disk."""

    folder: Path
    files: tuple[Path, ...]
    study_instance_uid: str
    series_instance_uid: str
    truth_labels: Path | None = None
    truth_affine: Path | None = None

    @property
    def slices(self) -> int:
        return len(self.files)

    @property
    def size_mb(self) -> float:
        return sum(p.stat().st_size for p in self.files) / 1e6


def _read_ready(folder: Path) -> SeriesSet | None:
    marker = folder / READY
    if not marker.is_file():
        return None
    meta = json.loads(marker.read_text())
    files = tuple(folder / name for name in meta["files"])
    if not all(p.is_file() for p in files):
        return None
    truth = meta.get("truth_labels")
    affine = meta.get("truth_affine")
    return SeriesSet(folder, files, meta["study_instance_uid"], meta["series_instance_uid"],
                     Path(truth) if truth else None, Path(affine) if affine else None)


def _write_ready(folder: Path, files: Sequence[Path], extra: dict[str, Any] | None = None) -> SeriesSet:
    first = dcmread(files[0], stop_before_pixels=True)
    meta = {"files": [str(p.relative_to(folder)) for p in files],
            "study_instance_uid": str(first.StudyInstanceUID), "series_instance_uid": str(first.SeriesInstanceUID),
            **(extra or {})}
    (folder / READY).write_text(json.dumps(meta, indent=1))
    ready = _read_ready(folder)
    if ready is None:
        raise RuntimeError(f"could not read back the series set in {folder}")
    return ready


def ingest_frames(slices: int, size: int) -> Iterator[npt.NDArray[np.uint16]]:
    """Stored pixels (HU + 1024, 12 bits) of a synthetic axial CT: body ellipse with a 'spine' disc, noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    centre = size / 2.0
    body = ((xx - centre) / (0.42 * size)) ** 2 + ((yy - centre) / (0.32 * size)) ** 2 <= 1.0
    spine = (xx - centre) ** 2 + (yy - 0.68 * size) ** 2 <= (0.05 * size) ** 2
    rng = np.random.default_rng(0)
    for _ in range(slices):
        hu = np.full((size, size), -1000.0, dtype=np.float32)
        hu[body] = 40.0
        hu[spine] = 250.0
        hu += rng.normal(0.0, 15.0, size=hu.shape).astype(np.float32)
        yield np.clip(hu + 1024.0, 0, 4095).astype(np.uint16)


def write_ingest_series(directory: Path, slices: int, size: int = 512) -> list[Path]:
    """The receive benchmarks' CT series (``ingest_frames``), one file per slice, 1 mm apart going down."""
    header = CTSeriesHeader(pixel_spacing_mm=(0.68, 0.68), slice_thickness_mm=1.0, bits_stored=12,
                            extra={"PatientName": "Bench^Ingest", "PatientID": "BENCH-0001"})
    return write_ct_series(directory, ingest_frames(slices, size), header, origin_lps_mm=(-175.0, -175.0, 0.0),
                           slice_step_mm=-1.0)


def ingest_studies(data_dir: Path, n_studies: int, slices: int, size: int) -> list[SeriesSet]:
    """``n_studies`` distinct synthetic CT studies for the receive benchmarks (cached)."""
    out = []
    for index in range(n_studies):
        folder = data_dir / f"ingest_{slices}x{size}" / f"study{index}"
        ready = _read_ready(folder)
        if ready is None:
            shutil.rmtree(folder, ignore_errors=True)
            started = time.monotonic()
            files = write_ingest_series(folder, slices, size)
            ready = _write_ready(folder, files)
            log.info("ingest study %d: %d files written in %.1f s", index, len(files), time.monotonic() - started)
        out.append(ready)
    return out


def phantom_series(data_dir: Path, recipe: PhantomRecipe, timeout_s: float = 1800) -> SeriesSet:
    """The rendered phantom of ``recipe`` (cached; rendered in a child process when missing)."""
    folder = data_dir / recipe.key()
    ready = _read_ready(folder)
    if ready is not None:
        return ready
    shutil.rmtree(folder, ignore_errors=True)
    started = time.monotonic()
    cmd = [sys.executable, "-m", "bench.data", str(folder), json.dumps(asdict(recipe))]
    out = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"phantom {recipe.name} could not be rendered: {out.stderr[-3000:]}")
    ready = _read_ready(folder)
    if ready is None:
        raise RuntimeError(f"phantom {recipe.name}: child finished but {folder / READY} is missing")
    log.info("phantom %s: %d slices rendered in %.0f s", recipe.name, ready.slices, time.monotonic() - started)
    return ready


def clone_series(source: SeriesSet, folder: Path, tag: str) -> SeriesSet:
    """The same images as a new study/series (deterministic new UIDs from ``tag``; cached)."""
    ready = _read_ready(folder)
    if ready is not None:
        return ready
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    study = generate_uid(entropy_srcs=["bmd-bench", tag, "study", source.study_instance_uid])
    series = generate_uid(entropy_srcs=["bmd-bench", tag, "series", source.series_instance_uid])
    files = []
    for index, path in enumerate(source.files):
        ds = dcmread(path)
        sop = generate_uid(entropy_srcs=["bmd-bench", tag, "sop", str(index), source.series_instance_uid])
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, sop
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        target = folder / f"{index:04d}.dcm"
        ds.save_as(target, enforce_file_format=True)
        files.append(target)
    extra = {}
    if source.truth_labels is not None and source.truth_affine is not None:
        extra = {"truth_labels": str(source.truth_labels), "truth_affine": str(source.truth_affine)}
    return _write_ready(folder, files, extra)


def write_truth_map(path: Path, sets: Sequence[SeriesSet]) -> Path:
    """series UID -> true body labels, for bench.pipeline's fallback when the model finds no vertebra."""
    mapping: dict[str, dict[str, str]] = {}
    if path.is_file():
        mapping = json.loads(path.read_text())
    for s in sets:
        if s.truth_labels is not None and s.truth_affine is not None:
            mapping[s.series_instance_uid] = {"body_labels": str(s.truth_labels), "affine_lps": str(s.truth_affine)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(mapping, indent=1))
    return path


# --- child process: render one phantom ----------------------------------------------------------------------


def _render(folder: Path, recipe: PhantomRecipe) -> None:
    # the phantom generator (scipy, ~20 MiB) loads only in this child: bench.run and the stage child (a worker's
    # peak RSS) never import it
    from service.offline.phantom.api import PhantomSpec, generate, write_phantom  # noqa: PLC0415
    from service.offline.phantom.labels import body_labels_of  # noqa: PLC0415

    spec = PhantomSpec(**recipe.spec)
    kwargs: dict[str, Any] = {}
    if recipe.slices is not None:
        kwargs = {"spacing_mm": (spec.pixel_spacing_mm, spec.pixel_spacing_mm, spec.slice_thickness_mm),
                  "shape": (spec.columns, spec.rows, recipe.slices)}
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    phantom = generate(spec, **kwargs)
    written = write_phantom(phantom, tmp)
    np.save(tmp / "body_labels.npy", body_labels_of(phantom.labels))
    np.save(tmp / "affine_lps.npy", np.asarray(phantom.volume.affine_lps, dtype=np.float64))
    del phantom
    files = sorted(p for p in written if p.suffix == ".dcm")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    files = [folder / p.relative_to(tmp) for p in files]
    _write_ready(folder, files, {"truth_labels": str(folder / "body_labels.npy"),
                                 "truth_affine": str(folder / "affine_lps.npy"), "recipe": asdict(recipe)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="render one benchmark phantom (child process of bench.run)")
    parser.add_argument("folder", type=Path)
    parser.add_argument("recipe", help="PhantomRecipe as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    raw = json.loads(args.recipe)
    _render(args.folder, PhantomRecipe(name=raw["name"], spec=raw["spec"], slices=raw.get("slices")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
