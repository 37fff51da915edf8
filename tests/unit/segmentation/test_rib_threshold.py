"""Rib-bearing decision from predicted rib voxels: absolute minimum plus a fraction of the scan's own rib heads."""

from __future__ import annotations

import numpy as np

from service.segmentation.features import MIN_RIB_ATTACH_MM3, RIB_RELATIVE_FRACTION, features_from_masks

SPACING = (3.0, 3.0, 3.0)


def _column(n_bodies: int, rib_voxels_per_side: list[int]) -> tuple[list[np.ndarray], np.ndarray]:
    """Bodies stacked along z (8 voxels apart) with the given number of rib voxels 7 voxels left and right."""
    shape = (40, 40, 8 * n_bodies + 2)
    bodies, ribs = [], np.zeros(shape, dtype=bool)
    for i in range(n_bodies):
        z0 = shape[2] - 8 * (i + 1)  # cranial first
        m = np.zeros(shape, dtype=bool)
        m[16:24, 14:20, z0:z0 + 6] = True
        bodies.append(m)
        k = rib_voxels_per_side[i]
        for x in (20 + 7, 20 - 8):
            flat = np.zeros(6 * 6 * 6, dtype=bool)
            flat[:k] = True
            ribs[x - 3:x + 3, 17:23, z0:z0 + 6] |= flat.reshape(6, 6, 6)
    return bodies, ribs


def test_small_rib_like_volume_below_thoracic_ribs_is_not_rib_bearing() -> None:
    # three thoracic bodies with ~3000 mm3 of rib per side, then one with ~730 mm3 (above the absolute minimum,
    # below the relative one: a transverse process or a floating rib tip read as rib)
    per_side = [112, 112, 112, 27]
    bodies, ribs = _column(4, per_side)
    feats, _ = features_from_masks(bodies, ribs, np.zeros_like(ribs), SPACING)
    vols = [f.rib_left_mm3 for f in feats]
    assert vols[3] >= MIN_RIB_ATTACH_MM3
    assert vols[3] < RIB_RELATIVE_FRACTION * vols[0]
    assert [f.rib_bearing for f in feats] == [True, True, True, False]


def test_absolute_minimum_alone_when_few_rib_bearing_bodies() -> None:
    bodies, ribs = _column(2, [112, 27])
    feats, _ = features_from_masks(bodies, ribs, np.zeros_like(ribs), SPACING)
    assert [f.rib_bearing for f in feats] == [True, True]
