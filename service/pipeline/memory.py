"""Peak memory of one screening job, estimated before the series is decoded, and the ``[worker] memory_limit_mb``
check built on it.

The worker process holds the segmentation model and the Python stack (a fixed part) and, while it screens a series,
arrays on the native CT grid: the HU volume (float32), the body labels and ROI labels (int16), the masks and the
working copies of resampling and labelling. Those grow with the voxel count, so the estimate is

    peak MiB = WORKER_BASE_MIB + BYTES_PER_VOXEL * rows * columns * slices / 2**20

times SAFETY_FACTOR, with the constants measured by ``make bench`` (bench/memory.py, section "memory": the whole
worker process's peak RSS on synthetic series of 300 to 1500 slices, 512 x 512; docs/PERFORMANCE.md sets every
study's estimate against its measured peak).

``memory_limit_mb`` is read as MiB (2**20 bytes), the unit of the RSS figures and of most container limits.
A series whose estimate exceeds it is rejected before any pixel is decoded (``check_job_fits``), with a reason that
names the series size, the estimate and the limit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from service.pipeline.types import PipelineRejectedError

MIB = 1024 * 1024

WORKER_BASE_MIB = 1440.0
"""Fixed part, MiB: the worker process with torch and the segmentation model loaded (~450 MiB), a job's fixed costs
(highdicom, result writers, coarse-grid networks) and the work that follows the anatomy's length rather than the
voxel count (the 1.25 mm fine stage along the spine). See BYTES_PER_VOXEL for the measurements."""
BYTES_PER_VOXEL = 5.5
"""Peak bytes per native CT voxel on top of the fixed part: the HU volume (float32, 4 B), the body labels (int16),
the posterior mask and the transient copies of labelling and result building. Line through the worker peaks
measured by ``make bench`` (bench/memory.py): 2256 MiB at 600 x 512 x 512 (1 mm) and 3484 MiB at 1500 x 512 x 512
(0.5 mm, with the slab-wise label check of SpineSegmentation; 4094 MiB without it). 300 x 512 x 512 peaked at
1275 MiB, below the line: per voxel alone the 1 mm series cost more than the 0.5 mm one."""
SAFETY_FACTOR = 1.05
"""Margin over the line: allocator fragmentation, other anatomy than the phantom's, a worker process that imports
more than the benchmark's child. 1500 x 512 x 512 is estimated at ~3.6 GiB and admitted under the default 4096;
up to about 1790 slices of 512 x 512 fit."""


@dataclass(frozen=True)
class MemoryEstimate:
    """The estimated peak of one job."""

    rows: int
    columns: int
    slices: int
    peak_mib: float

    def __post_init__(self) -> None:
        for name in ("rows", "columns", "slices"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not math.isfinite(self.peak_mib) or self.peak_mib <= 0:
            raise ValueError(f"peak_mib must be a positive number, got {self.peak_mib!r}")

    @property
    def peak_gb(self) -> float:
        """Decimal gigabytes, for people."""
        return self.peak_mib * MIB / 1e9

    def fits(self, limit_mb: float) -> bool:
        return self.peak_mib <= limit_mb

    def rejection_reason(self, limit_mb: float) -> str:
        return (f"series of {self.slices} x {self.rows} x {self.columns} needs about {self.peak_gb:.1f} GB "
                f"({self.peak_mib:.0f} MiB) of worker memory; [worker] memory_limit_mb is {limit_mb:g}")


def estimate_job_peak(rows: int, columns: int, slices: int) -> MemoryEstimate:
    """Estimated peak RSS (MiB) of a worker process that screens a series of ``slices`` images of ``rows`` x
    ``columns`` pixels (pure function of the three numbers; see the module doc for the model and its constants)."""
    for name, value in (("rows", rows), ("columns", columns), ("slices", slices)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    voxels = rows * columns * slices
    peak = SAFETY_FACTOR * (WORKER_BASE_MIB + BYTES_PER_VOXEL * voxels / MIB)
    return MemoryEstimate(rows, columns, slices, peak)


def series_dimensions(paths: Sequence[Path]) -> tuple[int, int, int]:
    """(rows, columns, slices) of a stored series from its first file's header: slices = files x NumberOfFrames
    (single-frame CT: the file count; an Enhanced CT multi-frame file: its frames). Reads no pixel data.

    PipelineRejectedError when the first file is no readable DICOM image (the loader would reject it too).
    """
    if not paths:
        raise PipelineRejectedError("the series has no stored instances")
    try:
        ds = pydicom.dcmread(paths[0], stop_before_pixels=True,
                             specific_tags=["Rows", "Columns", "NumberOfFrames"])
        rows, columns = int(ds.Rows), int(ds.Columns)
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    except (OSError, InvalidDicomError, AttributeError, TypeError, ValueError) as exc:
        raise PipelineRejectedError(f"cannot read the image size of {paths[0].name}: {exc}") from exc
    if rows < 1 or columns < 1:
        raise PipelineRejectedError(f"{paths[0].name}: Rows {rows} x Columns {columns} is no image")
    return rows, columns, len(paths) * max(frames, 1)


def check_job_fits(paths: Sequence[Path], memory_limit_mb: float) -> MemoryEstimate:
    """The estimate of the series in ``paths``; PipelineRejectedError (a permanent failure with the estimate and the
    limit as its reason) when it exceeds ``memory_limit_mb``."""
    estimate = estimate_job_peak(*series_dimensions(paths))
    if not estimate.fits(memory_limit_mb):
        raise PipelineRejectedError(estimate.rejection_reason(memory_limit_mb))
    return estimate
