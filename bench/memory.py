"""The memory section of ``make bench``: a worker's peak RSS on series of growing size, up to the 0.5 mm series of
1500 x 512 x 512 of issue 17, and the calibration of the worker's admission estimate (service/pipeline/memory.py).

Each study runs in a fresh child that is what a worker is (bench.stages: model loaded once, then read_series ->
segmentation -> measurement -> result objects, as the worker's recipe), without a PACS. Its ru_maxrss is the peak.
The line peak = base + bytes_per_voxel * voxels is fitted (least squares) over the studies and compared with the
constants of service/pipeline/memory.py; every study's estimate is set against its measured peak.

    .venv/bin/python -m bench.run --only memory --merge     # this section only, the other sections' figures kept
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.data import PhantomRecipe, SeriesSet
from bench.stages import run_stages
from service.pipeline import memory

log = logging.getLogger(__name__)

MIB = 1024 * 1024


@dataclass(frozen=True)
class MemoryRun:
    name: str
    rows: int
    columns: int
    slices: int
    peak_mib: float
    estimate_mib: float
    pipeline_s: float
    wall_s: float
    rss_after_stage_mib: dict[str, float]
    truth_fallback: bool = False

    @property
    def voxels(self) -> int:
        return self.rows * self.columns * self.slices


@dataclass(frozen=True)
class LineFit:
    """peak MiB = base_mib + bytes_per_voxel * voxels / MiB."""

    base_mib: float
    bytes_per_voxel: float

    def __post_init__(self) -> None:
        if not (np.isfinite(self.base_mib) and np.isfinite(self.bytes_per_voxel)):
            raise ValueError(f"fit must be finite, got base_mib={self.base_mib}, bytes_per_voxel="
                             f"{self.bytes_per_voxel}")

    def peak_mib(self, voxels: int) -> float:
        return self.base_mib + self.bytes_per_voxel * voxels / MIB


def fit_line(voxels: Sequence[int], peaks_mib: Sequence[float]) -> LineFit:
    """Least-squares line through (voxels, peak MiB); needs two or more distinct voxel counts."""
    if len(voxels) != len(peaks_mib):
        raise ValueError(f"voxels and peaks_mib must pair up, got {len(voxels)} and {len(peaks_mib)}")
    if len(set(voxels)) < 2:
        raise ValueError(f"voxels must hold at least two distinct sizes, got {sorted(set(voxels))}")
    x = np.asarray(voxels, dtype=np.float64) / MIB
    slope, base = np.polyfit(x, np.asarray(peaks_mib, dtype=np.float64), 1)
    return LineFit(float(base), float(slope))


def measure(series: SeriesSet, recipe: PhantomRecipe, folder: Path, *, bundle_dir: Path,
            truth_map: Path) -> MemoryRun:
    """One study in a fresh worker-like child (bench.stages, no PACS)."""
    result = run_stages(series, folder / recipe.name, bundle_dir=bundle_dir, repeats=1, truth_map=truth_map,
                        threads=None, pacs=False)
    record = result["records"][0]
    columns, rows, slices = (int(v) for v in record["shape"])  # CTVolume: hu[column, row, slice]
    return MemoryRun(recipe.name, rows, columns, slices, float(result["max_rss_mib"]),
                     float(record["memory_estimate_mib"]), float(record["pipeline_s"]), float(record["total_s"]),
                     dict(record.get("max_rss_after_mib", {})), bool(record.get("truth_fallback")))


FigureMaker = Callable[..., dict[str, Any]]


def memory_figures(runs: Sequence[MemoryRun], figure: FigureMaker) -> tuple[list[dict[str, Any]], list[str]]:
    """Figures and notes of the memory section from its runs (``figure`` = bench.run._figure)."""
    figures: list[dict[str, Any]] = []
    notes: list[str] = []
    for r in runs:
        label = f"{r.name} ({r.slices} x {r.rows} x {r.columns})"
        figures.append(figure(f"memory.worker_peak.{r.name}", f"worker peak RSS, {label}", "MiB", [r.peak_mib],
                              "whole worker process incl. torch + model"))
        figures.append(figure(f"memory.estimate.{r.name}", f"admission estimate (service/pipeline/memory.py), {label}",
                              "MiB", [r.estimate_mib], f"estimate / measured = {r.estimate_mib / r.peak_mib:.2f}"))
        figures.append(figure(f"stages.{r.name}.pipeline", f"{label}: pipeline time (read -> objects)", "s",
                              [r.pipeline_s]))
        figures.append(figure(f"stages.{r.name}.wall", f"{label}: job wall time (incl. writing the results)", "s",
                              [r.wall_s]))
        if r.rss_after_stage_mib:
            notes.append(f"{r.name}: worker peak RSS after each stage: " + ", ".join(
                f"{k.removesuffix('_s')} {v:.0f} MiB" for k, v in r.rss_after_stage_mib.items()))
        if r.truth_fallback:
            notes.append(f"{r.name}: later stages on the phantom's true labels (no trained model)")
        if r.estimate_mib < r.peak_mib:
            notes.append(f"{r.name}: the admission estimate ({r.estimate_mib:.0f} MiB) is below the measured peak "
                         f"({r.peak_mib:.0f} MiB): refit the constants of service/pipeline/memory.py")
    if len({r.voxels for r in runs}) >= 2:
        fit = fit_line([r.voxels for r in runs], [r.peak_mib for r in runs])
        figures.append(figure("memory.fit.base_mib", "fitted fixed part (peak at 0 voxels)", "MiB", [fit.base_mib],
                              f"service/pipeline/memory.py WORKER_BASE_MIB = {memory.WORKER_BASE_MIB:g}"))
        figures.append(figure("memory.fit.bytes_per_voxel", "fitted peak bytes per native CT voxel", "B",
                              [fit.bytes_per_voxel],
                              f"service/pipeline/memory.py BYTES_PER_VOXEL = {memory.BYTES_PER_VOXEL:g}"))
        worst = max(abs(fit.peak_mib(r.voxels) - r.peak_mib) for r in runs)
        notes.append(f"line fit over {len(runs)} studies: peak = {fit.base_mib:.0f} MiB + {fit.bytes_per_voxel:.2f} "
                     f"B x voxels (largest residual {worst:.0f} MiB); the admission estimate is "
                     f"{memory.SAFETY_FACTOR:g} x ({memory.WORKER_BASE_MIB:g} MiB + {memory.BYTES_PER_VOXEL:g} B x "
                     "voxels)")
    return figures, notes
