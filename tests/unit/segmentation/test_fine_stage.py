"""Geometry of the fine stage: the spine tube box, its 1.25 mm grid, and the maps between fine and coarse grids."""

from __future__ import annotations

import numpy as np

from service.segmentation.fine_classes import FINE_DISC, FINE_NUM_CLASSES
from service.segmentation.fine_stage import (
    FineField,
    box_frame,
    coarse_on_fine,
    disc_below_mm,
    fine_to_coarse_masks,
    rests_on_disc,
    tube_box,
)
from service.segmentation.geometry import canonical_frame, coarse_grid


def _setup() -> tuple:
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    affine[:3, 3] = [-40.0, -60.0, 100.0]
    frame = canonical_frame(affine, (100, 110, 40))
    coarse = coarse_grid(frame, 3.0)
    box = (slice(20, 80), slice(30, 90), slice(5, 35))
    grid = coarse_grid(box_frame(frame, box), 1.25)
    field = FineField(box, grid, np.zeros((FINE_NUM_CLASSES, *grid.shape), dtype=np.float32))
    return frame, coarse, field


def _mm(affine: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return affine[:3, :3] @ idx + affine[:3, 3]


def test_fine_grid_and_native_coordinates_agree_in_mm() -> None:
    frame, _, field = _setup()
    assert np.allclose(field.grid.spacing_mm, 1.25, atol=0.05)
    idx = np.array([3, 7, 11])
    native = np.array([field.native_coordinates(a)[idx[a]] for a in range(3)])
    assert np.allclose(_mm(field.grid.affine_lps, idx), _mm(frame.affine_lps, native), atol=1e-6)


def test_fine_instance_lands_on_the_coarse_grid_at_the_same_place() -> None:
    _, coarse, field = _setup()
    fine = np.zeros(field.grid.shape, dtype=bool)
    fine[10:30, 12:28, 8:40] = True
    (cm,) = fine_to_coarse_masks([fine], field, coarse)
    c_fine = _mm(field.grid.affine_lps, np.argwhere(fine).mean(axis=0))
    c_coarse = _mm(coarse.affine_lps, np.argwhere(cm).mean(axis=0))
    assert np.linalg.norm(c_fine - c_coarse) < 2.0
    # a tiny instance still gets its centroid voxel
    tiny = np.zeros_like(fine)
    tiny[20, 20, 20] = True
    (tm,) = fine_to_coarse_masks([tiny], field, coarse)
    assert tm.sum() >= 1


def test_coarse_values_interpolated_at_fine_voxels() -> None:
    _, coarse, field = _setup()
    ramp = np.broadcast_to(np.arange(coarse.shape[2], dtype=np.float32)[None, None, :], coarse.shape).copy()
    sampled = coarse_on_fine(ramp, field, coarse)
    expected = coarse.coarse_coordinate(2, field.native_coordinates(2))
    inside = (expected > 0) & (expected < coarse.shape[2] - 1)
    assert np.allclose(sampled[5, 5, inside], expected[inside], atol=1e-4)


def test_tube_box_covers_the_instances_with_margin() -> None:
    frame, coarse, _ = _setup()
    m = np.zeros(coarse.shape, dtype=bool)
    m[10:14, 12:16, 10:20] = True
    box = tube_box([m], coarse, frame.shape)
    lo_mm = _mm(frame.affine_lps, np.array([b.start for b in box], dtype=float))
    inst_lo_mm = _mm(coarse.affine_lps, np.array([10, 12, 10], dtype=float))
    assert np.all(lo_mm <= inst_lo_mm - 10.0) or any(b.start == 0 for b in box)
    assert all(0 <= b.start < b.stop <= n for b, n in zip(box, frame.shape, strict=True))
    assert (box[2].start, box[2].stop) == (0, frame.shape[2])  # the whole scan length


def test_a_disc_under_the_lowest_body_shows_l5_not_a_fused_s1() -> None:
    _, _, field = _setup()
    nz = field.grid.shape[2]
    body = np.zeros(field.grid.shape, dtype=bool)
    body[10:30, 12:28, 12:nz] = True  # the lowest body; below it the sacrum, which the model did not call body
    assert not rests_on_disc(body, field)  # fused: bone continues into the sacrum, no disc class in between
    field.probs[FINE_DISC, 10:30, 12:28, 7:12] = 0.9  # a 6 mm disc (5 fine slices) under it
    assert 5.0 <= disc_below_mm(body, field) <= 7.5
    assert rests_on_disc(body, field)
    # a disc somewhere else (beside the body, outside its footprint) is not under it
    field.probs[FINE_DISC] = 0.0
    field.probs[FINE_DISC, 40:, 40:, 7:12] = 0.9
    assert not rests_on_disc(body, field)
