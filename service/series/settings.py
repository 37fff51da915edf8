"""The [series] section: when a series is complete and usable."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SeriesSettings:
    min_slices: int = 10
    """Fewer slices cannot hold a vertebral body at 5 mm (same default as service.series.checks)."""
    max_slice_thickness_mm: float = 5.0
    """Thicker series are rejected (Xiong 2025 / Pan 2020 used <= 5 mm reconstructions)."""
    scheduler_poll_seconds: float = 1.0

    def __post_init__(self) -> None:
        if self.min_slices < 1:
            raise ValueError(f"series.min_slices: must be >= 1, got {self.min_slices}")
        if self.max_slice_thickness_mm <= 0:
            raise ValueError(f"series.max_slice_thickness_mm: must be > 0, got {self.max_slice_thickness_mm}")
        if self.scheduler_poll_seconds <= 0:
            raise ValueError(f"series.scheduler_poll_seconds: must be > 0, got {self.scheduler_poll_seconds}")
