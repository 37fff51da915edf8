"""Checks that make a level non-evaluable from its HU: metal / cement, sclerosis / bone island, ROI too small.

Sclerosis / bone island: after 1 mm Gaussian smoothing, ROI voxels above 500 HU are dense; the level is excluded
when they are more than 5 % of the ROI, or when one connected dense focus measures >= 30 mm3.

Fracture (heights) lives in fracture.py; level uncertainty and field-of-view cuts come from the segmentation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from service.domain.results import ExclusionReason
from service.domain.volume import CTVolume, mm_to_voxels
from service.measurement.geometry import CroppedMask
from service.measurement.roi import ellipsoid_structure

METAL_HU = 2000.0
"""Cortical bone stays below ~1800 HU even with sharp kernels; pedicle screws, cement (PMMA with barium or
zirconia) and other metal exceed ~2000-3000 HU. Voxels above this in or near the body mean metal or cement."""
METAL_MARGIN_MM = 3.0
"""How far around the body mask metal still counts (cement leaks, screw tips at the cortex)."""
METAL_MIN_VOLUME_MM3 = 5.0
"""At least this much metal-dense material (so an isolated noisy voxel does not exclude a level)."""
SCLEROSIS_HU = 500.0
"""Trabecular bone of adults rarely exceeds 300 HU; bone islands (enostoses) have mean attenuation > 885 HU
(Ulano et al., AJR 2016) and sclerotic metastases several hundred HU.
500 HU after 1 mm smoothing marks a dense focus."""
SCLEROSIS_SMOOTHING_MM = 1.0
"""Gaussian sigma applied before the tail count, so voxel noise of low-dose sharp-kernel scans is not counted."""
SCLEROSIS_MAX_FRACTION = 0.05
"""More than 5 % of the ROI above SCLEROSIS_HU (smoothed) makes the mean unrepresentative of trabecular bone."""
SCLEROSIS_MIN_FOCUS_MM3 = 30.0
"""A single connected dense focus of at least this volume (a sphere of ~3.9 mm diameter) is a bone island or sclerotic
lesion; the studies excluded such levels (Xiong 2025: "localized vertebral density alterations from bone islands")
and QCT places its VOI around them. Noise or trabecular texture does not form such a focus after smoothing."""
DEFAULT_MIN_ROI_VOLUME_MM3 = 500.0
"""A QCT trabecular VOI is typically 1-3 cm3 (Pan 2020's 9 mm cylinder is ~3 cm3); below 0.5 cm3 the mean is
dominated by partial volume and noise."""
MIN_ROI_VOXELS = 20


@dataclass(frozen=True)
class Exclusion:
    reason: ExclusionReason
    detail: str


def metal_volume_mm3(volume: CTVolume, body: CroppedMask, margin_mm: float = METAL_MARGIN_MM,
                     threshold_hu: float = METAL_HU) -> float:
    """Volume of voxels above ``threshold_hu`` inside the body dilated by ``margin_mm``."""
    radii = mm_to_voxels(margin_mm, volume.spacing_mm)
    grown = body.padded(radii, volume.shape)
    mask = grown.mask
    if max(radii) > 0:
        mask = ndimage.binary_dilation(mask, structure=ellipsoid_structure(radii))
    values = volume.hu[grown.slices][mask]
    return float(np.count_nonzero(values > threshold_hu)) * volume.voxel_volume_mm3


def sclerosis_fraction(volume: CTVolume, roi: CroppedMask, threshold_hu: float = SCLEROSIS_HU,
                       smoothing_mm: float = SCLEROSIS_SMOOTHING_MM) -> float:
    """Fraction of ROI voxels whose Gaussian-smoothed HU exceeds ``threshold_hu`` (0 for an empty ROI)."""
    return dense_focus(volume, roi, threshold_hu, smoothing_mm)[0]


def dense_focus(volume: CTVolume, roi: CroppedMask, threshold_hu: float = SCLEROSIS_HU,
                smoothing_mm: float = SCLEROSIS_SMOOTHING_MM) -> tuple[float, float, float]:
    """(fraction of ROI voxels above ``threshold_hu`` after smoothing, volume mm3 of the largest connected dense
    focus, the shift of the ROI mean HU all dense voxels cause)."""
    n = roi.voxel_count
    if n == 0:
        return 0.0, 0.0, 0.0
    # sigma in voxels per axis (a float filter width, not a voxel count, so mm_to_voxels' rounding is not wanted).
    sigma = tuple(smoothing_mm / s for s in volume.spacing_mm)
    margin = tuple(int(np.ceil(3 * s)) for s in sigma)
    grown = roi.padded(margin, volume.shape)  # type: ignore[arg-type]
    raw = volume.hu[grown.slices].astype(np.float32)
    smoothed = ndimage.gaussian_filter(raw, sigma=sigma, mode="nearest")
    dense_grid = (smoothed > threshold_hu) & grown.mask
    dense = dense_grid[grown.mask]
    k = int(np.count_nonzero(dense))
    values = raw[grown.mask]
    shift = float(values.mean() - values[~dense].mean()) if 0 < k < n else 0.0
    largest = 0
    if k:
        lab, count = ndimage.label(dense_grid, structure=np.ones((3, 3, 3), dtype=bool))
        largest = int(np.max(np.bincount(lab.ravel())[1:])) if count else 0
    return k / n, largest * volume.voxel_volume_mm3, shift


def hu_exclusion(
    volume: CTVolume,
    body: CroppedMask,
    roi: CroppedMask,
    min_roi_volume_mm3: float = DEFAULT_MIN_ROI_VOLUME_MM3,
    metal_hu: float = METAL_HU,
    sclerosis_hu: float = SCLEROSIS_HU,
    sclerosis_max_fraction: float = SCLEROSIS_MAX_FRACTION,
) -> Exclusion | None:
    """The first applicable of metal, ROI too small, sclerosis; None when the ROI is usable."""
    metal = metal_volume_mm3(volume, body, threshold_hu=metal_hu)
    if metal >= METAL_MIN_VOLUME_MM3:
        return Exclusion(ExclusionReason.METAL, f"{metal:.0f} mm3 above {metal_hu:.0f} HU in or within "
                                                f"{METAL_MARGIN_MM:g} mm of the body (metal or cement)")
    roi_volume = roi.voxel_count * volume.voxel_volume_mm3
    if roi_volume < min_roi_volume_mm3 or roi.voxel_count < MIN_ROI_VOXELS:
        return Exclusion(ExclusionReason.ROI_TOO_SMALL, f"trabecular ROI {roi_volume:.0f} mm3 ({roi.voxel_count} "
                                                        f"voxels) < {min_roi_volume_mm3:.0f} mm3")
    frac, focus_mm3, shift = dense_focus(volume, roi, threshold_hu=sclerosis_hu)
    if frac > sclerosis_max_fraction or focus_mm3 >= SCLEROSIS_MIN_FOCUS_MM3:
        return Exclusion(ExclusionReason.SCLEROSIS, f"{100 * frac:.1f} % of the ROI above {sclerosis_hu:.0f} HU, "
                                                    f"largest dense focus {focus_mm3:.0f} mm3, raising the mean by "
                                                    f"{shift:.1f} HU (sclerosis or bone island)")
    return None
