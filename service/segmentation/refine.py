"""Native-resolution body masks from the coarse per-body probability.

Each body owns the coarse voxels nearest to it (so neighbours do not overlap); its body probability is
interpolated trilinearly at the native voxels of its bounding box and thresholded at 0.5, then cleaned (largest
component, holes filled).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from service.segmentation.geometry import CoarseGrid, upsample_region

NATIVE_THRESHOLD = 0.5
"""Threshold of the interpolated body-likeness at native resolution."""


def ownership(instance_masks: list[npt.NDArray[np.bool_]]) -> npt.NDArray[np.int32]:
    """Coarse map: index+1 of the nearest body instance for every voxel (0 when there is none)."""
    if not instance_masks:
        raise ValueError("instance_masks must not be empty")
    lab = np.zeros(instance_masks[0].shape, dtype=np.int32)
    for i, m in enumerate(instance_masks, start=1):
        lab[m] = i
    _, idx = ndimage.distance_transform_edt(lab == 0, return_indices=True)
    return lab[tuple(idx)]


def native_body_mask(soft: npt.NDArray[np.float32], grid: CoarseGrid, instance: npt.NDArray[np.bool_],
                     margin_vox: int = 2) -> tuple[tuple[slice, slice, slice], npt.NDArray[np.bool_]] | None:
    """(canonical-native bbox, mask in bbox) for one body, or None when nothing survives."""
    coords = np.argwhere(instance)
    lo = np.maximum(coords.min(axis=0) - margin_vox, 0)
    hi = np.minimum(coords.max(axis=0) + margin_vox + 1, np.array(grid.shape))
    bbox = []
    for a in range(3):
        n, m = grid.canonical_shape[a], grid.shape[a]
        start = max(0, int(np.floor(lo[a] * n / m)))
        stop = min(n, int(np.ceil(hi[a] * n / m)))
        bbox.append(slice(start, stop))
    region = upsample_region(soft, grid, tuple(bbox))  # type: ignore[arg-type]
    mask = region > NATIVE_THRESHOLD
    if not mask.any():
        return None
    lab, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum_labels(mask, lab, index=np.arange(1, n + 1))
        mask = lab == (int(np.argmax(sizes)) + 1)
    mask = ndimage.binary_fill_holes(mask)
    return tuple(bbox), mask  # type: ignore[return-value]
