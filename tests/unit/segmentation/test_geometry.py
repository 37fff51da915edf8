"""Canonical orientation: exact round trip for head-first/feet-first and permuted grids."""

from __future__ import annotations

import numpy as np
import pytest

from service.segmentation.geometry import canonical_frame, coarse_grid, resample_to_coarse


def _affine(directions: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = directions * np.asarray(spacing)[None, :]
    a[:3, 3] = (10.0, -20.0, 30.0)
    return a


CASES = {
    "head_first_axial": np.eye(3),
    "feet_first_axial": np.array([[-1.0, 0, 0], [0, 1.0, 0], [0, 0, -1.0]]),
    "prone": np.array([[-1.0, 0, 0], [0, -1.0, 0], [0, 0, 1.0]]),
    "sagittal_stack": np.array([[0.0, 0, 1.0], [1.0, 0, 0], [0, -1.0, 0]]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_round_trip_and_canonical_axes(name: str) -> None:
    rng = np.random.default_rng(0)
    shape = (7, 9, 11)
    spacing = (0.7, 0.8, 2.5)
    affine = _affine(CASES[name], spacing)
    data = rng.normal(size=shape).astype(np.float32)
    frame = canonical_frame(affine, shape)
    can = frame.to_canonical(data)
    np.testing.assert_array_equal(frame.to_native(can), data)
    # canonical axes point to +L, +P, +S
    d = frame.affine_lps[:3, :3]
    assert np.all(np.diag(d) > 0), d
    assert np.allclose(d - np.diag(np.diag(d)), 0)
    # every canonical voxel maps to the same LPS point as its native voxel
    idx_can = np.array([1, 2, 3])
    value = can[tuple(idx_can)]
    lps = frame.affine_lps @ np.r_[idx_can, 1.0]
    native_idx = np.linalg.solve(affine, lps)[:3]
    assert data[tuple(np.rint(native_idx).astype(int))] == value


def test_native_slices_match_canonical_bbox() -> None:
    affine = _affine(CASES["feet_first_axial"], (1.0, 1.0, 2.0))
    shape = (10, 12, 14)
    frame = canonical_frame(affine, shape)
    data = np.arange(np.prod(shape)).reshape(shape)
    can = frame.to_canonical(data)
    bbox = (slice(2, 5), slice(3, 9), slice(1, 4))
    native = data[frame.native_slices(bbox)]
    assert sorted(native.ravel()) == sorted(can[bbox].ravel())


def test_coarse_grid_maps_centres() -> None:
    affine = _affine(np.eye(3), (1.0, 1.0, 1.5))
    frame = canonical_frame(affine, (90, 60, 40))
    grid = coarse_grid(frame, 3.0)
    assert grid.shape == (30, 20, 20)
    # the coarse voxel 0 centre is the mean of native voxels 0..2 along axis 0
    assert grid.affine_lps[0, 3] == pytest.approx(affine[0, 3] + 1.0)
    ramp = np.broadcast_to(np.arange(90, dtype=np.float32)[:, None, None], (90, 60, 40))
    coarse = resample_to_coarse(np.ascontiguousarray(ramp), grid)
    assert coarse[0, 0, 0] == pytest.approx(1.0)
