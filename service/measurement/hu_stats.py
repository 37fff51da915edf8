"""HU statistics of a trabecular ROI."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class HuStats:
    hu_mean: float | None
    hu_median: float | None
    hu_sd: float | None
    """Sample standard deviation (ddof=1); None with fewer than 2 voxels."""
    voxel_count: int
    roi_volume_mm3: float

    def __post_init__(self) -> None:
        if self.voxel_count < 0:
            raise ValueError(f"voxel_count must be >= 0, got {self.voxel_count}")
        if self.roi_volume_mm3 < 0:
            raise ValueError(f"roi_volume_mm3 must be >= 0, got {self.roi_volume_mm3}")


def hu_stats(values_hu: npt.ArrayLike, voxel_volume_mm3: float) -> HuStats:
    """Mean, median, SD, count and volume of the HU values of an ROI's voxels."""
    if voxel_volume_mm3 <= 0:
        raise ValueError(f"voxel_volume_mm3 must be positive, got {voxel_volume_mm3}")
    x = np.asarray(values_hu, dtype=np.float64).ravel()
    n = int(x.size)
    if n == 0:
        return HuStats(None, None, None, 0, 0.0)
    return HuStats(
        hu_mean=float(x.mean()),
        hu_median=float(np.median(x)),
        hu_sd=float(x.std(ddof=1)) if n > 1 else None,
        voxel_count=n,
        roi_volume_mm3=float(n * voxel_volume_mm3),
    )
