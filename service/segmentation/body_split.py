"""Split a whole-vertebra mask (TotalSegmentator / VerSe labels) into the vertebral body and posterior elements.

Rule, on a canonical grid (axis 1 = +P): the vertebral body is the part of the vertebra anterior to the
anterior wall of the spinal canal.  The canal is found as the hole enclosed by the vertebral arch in axial
slices (or from a spinal-cord label when given); its anterior wall is the posterior wall of the body.
The model's own output does not need this (it predicts body and posterior elements as separate classes).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy import ndimage

CORD_TO_CANAL_WALL_MM = 3.0
"""The canal's anterior wall lies ~2-4 mm anterior to the cord surface (epidural space + CSF)."""
MIN_CANAL_AREA_MM2 = 60.0
"""A hole smaller than this is not the spinal canal (canal area ~150-300 mm2)."""


def canal_anterior_wall(vertebra: npt.NDArray[np.bool_], spacing_mm: tuple[float, float, float],
                        cord: npt.NDArray[np.bool_] | None = None) -> float | None:
    """Axis-1 coordinate (voxels) of the canal's anterior wall for this vertebra, or None."""
    walls: list[float] = []
    zs = np.nonzero(vertebra.any(axis=(0, 1)))[0]
    area_px = spacing_mm[0] * spacing_mm[1]
    for z in zs:
        sl = vertebra[:, :, z]
        filled = ndimage.binary_fill_holes(sl)
        holes = filled & ~sl
        if holes.sum() * area_px < MIN_CANAL_AREA_MM2:
            continue
        lab, n = ndimage.label(holes)
        sizes = ndimage.sum_labels(holes, lab, index=np.arange(1, n + 1))
        canal = lab == (int(np.argmax(sizes)) + 1)
        walls.append(float(np.nonzero(canal.any(axis=0))[0].min()))
    if walls:
        return float(np.median(walls))
    if cord is not None:
        sel = cord[:, :, zs.min(): zs.max() + 1] if len(zs) else cord[:, :, :0]
        if sel.any():
            ys = np.nonzero(sel.any(axis=(0, 2)))[0]
            return float(ys.min()) - CORD_TO_CANAL_WALL_MM / spacing_mm[1]
    return None


def split_body(vertebra: npt.NDArray[np.bool_], spacing_mm: tuple[float, float, float],
               cord: npt.NDArray[np.bool_] | None = None) -> npt.NDArray[np.bool_]:
    """Body part of one vertebra's mask (canonical grid)."""
    if not vertebra.any():
        return vertebra.copy()
    wall = canal_anterior_wall(vertebra, spacing_mm, cord)
    if wall is None:
        # fallback: the body is roughly the anterior 55 % of the vertebra's antero-posterior extent at its centre
        ys = np.nonzero(vertebra.any(axis=(0, 2)))[0]
        wall = ys.min() + 0.45 * (ys.max() - ys.min() + 1)
    y = np.arange(vertebra.shape[1])[None, :, None]
    body = vertebra & (y < wall)
    lab, n = ndimage.label(body)
    if n > 1:
        sizes = ndimage.sum_labels(body, lab, index=np.arange(1, n + 1))
        body = lab == (int(np.argmax(sizes)) + 1)
    return body
