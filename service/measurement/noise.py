"""Image noise of this scan, measured in homogeneous soft tissue (fat and muscle) around a vertebral body.

Used to judge the dense tail of a trabecular ROI against this scan's own noise (exclusions.py): a sharp kernel or a
low dose widens the HU distribution of every tissue, and a fixed HU threshold then reads noise as "sclerosis".

Method (in the spirit of the automated noise measurement of Christianson et al., Radiology 2015;275:540: noise read
in the patient's own homogeneous soft tissue):
1. a box ``SEARCH_MM`` around the body, limited along the slice axis to ``SLAB_MM`` around the body's middle;
2. the image as the caller will threshold it: Gaussian-smoothed with ``smoothing_mm`` (0: raw voxels), so the SD is
   the SD of the values that are compared (smoothing lowers noise by a kernel-dependent factor that is not known);
3. the residual: that image less its ``BACKGROUND_MM`` Gaussian background (the slowly varying tissue HU);
4. fat (``FAT_RANGE_HU``) and muscle / soft tissue (``MUSCLE_RANGE_HU``), classified on a 3 mm-smoothed copy and
   eroded by ``BACKGROUND_MM``, so that no sample sits at a tissue edge;
5. the noise SD is 1.4826 x the median absolute deviation of the residual there (robust to remaining edges).
A small-window local SD (the usual noise map) misses the low-frequency part of correlated noise, and smoothed noise
is correlated: in a test with known noise it read about half the true SD of the smoothed image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from service.domain.volume import CTVolume, mm_to_voxels
from service.measurement.geometry import CroppedMask
from service.measurement.roi import ellipsoid_structure

SEARCH_MM = 60.0
"""Paraspinal muscles, psoas and retroperitoneal / subcutaneous fat lie within ~60 mm of the vertebral body."""
SLAB_MM = 8.0
"""Half-height of the slab (along the slice axis) around the body's middle that is sampled: noise varies slowly."""
BACKGROUND_MM = 4.0
"""Gaussian sigma of the slowly varying tissue background removed before the spread is taken; also the erosion of
the tissue classes, so that no sample lies within 4 mm of a tissue edge."""
FAT_RANGE_HU = (-200.0, -40.0)
MUSCLE_RANGE_HU = (0.0, 120.0)
CLASSIFY_SMOOTHING_MM = 3.0
"""Heavy enough that a noisy scan (raw SD ~ 200 HU) is still classified into fat and muscle."""
MIN_SAMPLES = 50
MAD_TO_SD = 1.4826
"""SD of a normal distribution per unit median absolute deviation: the MAD ignores the tails of edges and vessels."""


@dataclass(frozen=True)
class NoiseEstimate:
    """Noise SD (HU) of the image smoothed with ``smoothing_mm``, from ``sample_count`` homogeneous voxels."""

    sd_hu: float
    sample_count: int
    smoothing_mm: float

    def __post_init__(self) -> None:
        if not np.isfinite(self.sd_hu) or self.sd_hu < 0:
            raise ValueError(f"sd_hu must be finite and >= 0, got {self.sd_hu}")
        if self.sample_count < 0:
            raise ValueError(f"sample_count must be >= 0, got {self.sample_count}")
        if self.smoothing_mm < 0:
            raise ValueError(f"smoothing_mm must be >= 0, got {self.smoothing_mm}")


def _slab(volume: CTVolume, near: CroppedMask, margin: tuple[int, int, int]) -> tuple[slice, slice, slice]:
    """The search box around ``near``, cut along the slice axis to SLAB_MM around its middle (plus margin)."""
    grown = near.padded(mm_to_voxels(SEARCH_MM, volume.spacing_mm), volume.shape)
    box = list(grown.slices)
    axis, _ = volume.superior_axis()
    mid = near.offset[axis] + near.mask.shape[axis] // 2
    half = mm_to_voxels(SLAB_MM, volume.spacing_mm)[axis] + margin[axis]
    box[axis] = slice(max(0, mid - half), min(volume.shape[axis], mid + half + 1))
    return box[0], box[1], box[2]


def noise_sd(volume: CTVolume, near: CroppedMask, smoothing_mm: float = 0.0) -> NoiseEstimate | None:
    """Noise SD (HU) in fat and muscle around ``near`` (see the module doc); None with too few homogeneous voxels."""
    if smoothing_mm < 0:
        raise ValueError(f"smoothing_mm must be >= 0, got {smoothing_mm}")
    if near.voxel_count == 0:
        return None
    spacing = volume.spacing_mm
    cls_sigma = tuple(CLASSIFY_SMOOTHING_MM / s for s in spacing)
    bg_sigma = tuple(BACKGROUND_MM / s for s in spacing)
    margin = tuple(int(np.ceil(3 * max(a, b))) for a, b in zip(cls_sigma, bg_sigma, strict=True))
    raw = volume.hu[_slab(volume, near, margin)].astype(np.float32)  # type: ignore[arg-type]
    image = raw if smoothing_mm == 0 else ndimage.gaussian_filter(
        raw, sigma=tuple(smoothing_mm / s for s in spacing), mode="nearest")
    residual = image - ndimage.gaussian_filter(image, sigma=bg_sigma, mode="nearest")
    classify = ndimage.gaussian_filter(raw, sigma=cls_sigma, mode="nearest")
    structure = ellipsoid_structure(tuple(max(1, r) for r in mm_to_voxels(BACKGROUND_MM, spacing)))  # type: ignore[arg-type]
    homogeneous = np.zeros(raw.shape, dtype=bool)
    for lo, hi in (FAT_RANGE_HU, MUSCLE_RANGE_HU):
        homogeneous |= ndimage.binary_erosion((classify >= lo) & (classify <= hi), structure=structure)
    # away from the slab's ends, where the filters saw replicated edge slices
    axis, _ = volume.superior_axis()
    ends = [slice(None)] * 3
    ends[axis] = slice(0, margin[axis])
    homogeneous[tuple(ends)] = False
    ends[axis] = slice(max(0, raw.shape[axis] - margin[axis]), None)
    homogeneous[tuple(ends)] = False
    values = residual[homogeneous].astype(np.float64)
    if values.size < MIN_SAMPLES:
        return None
    return NoiseEstimate(sd_hu=robust_sd(values), sample_count=int(values.size), smoothing_mm=smoothing_mm)


def robust_sd(values: npt.NDArray[np.float64]) -> float:
    """MAD_TO_SD x the median absolute deviation of ``values`` (finite, non-empty)."""
    return MAD_TO_SD * float(np.median(np.abs(values - np.median(values))))
