"""The cut_top set's crop: a chest phantom whose field top is moved into T1 keeps no C7 and only the lower part of T1,
and T1 touches the field's top slice (the reference reads it as cut by the field of view)."""

from __future__ import annotations

import numpy as np

from service.domain.levels import VertebraLevel as V
from service.offline.evaluation.cut_top import cut_through
from service.offline.phantom.api import generate, random_spec
from service.segmentation import classes as cls


def test_the_top_of_the_field_is_moved_into_t1() -> None:
    spec = random_spec(np.random.default_rng(5), region="chest", fov_top_level=V.C7, rib_pairs=12,
                       lumbar_variant="normal", feet_first=False, fracture_levels=())
    phantom = generate(spec, spacing_mm=(3.0, 3.0, 2.0))
    before = cls.phantom_body_levels(phantom.labels)
    cut = cut_through(phantom, V.T1, 0.5)
    after = cls.phantom_body_levels(cut.labels)
    assert (before == int(V.C7)).any() and not (after == int(V.C7)).any()
    superior_up = cut.volume.affine_lps[2, 2] > 0
    top_slice = after[:, :, -1] if superior_up else after[:, :, 0]
    assert (top_slice == int(V.T1)).any()
    t1_before = np.nonzero((before == int(V.T1)).any(axis=(0, 1)))[0]
    t1_after = np.nonzero((after == int(V.T1)).any(axis=(0, 1)))[0]
    assert 0.3 <= t1_after.size / t1_before.size <= 0.7
    assert cut.volume.hu.shape == cut.labels.shape
    # the slices kept are the phantom's own: the same HU at the same patient position
    k_old = 0 if superior_up else phantom.volume.hu.shape[2] - cut.volume.hu.shape[2]
    np.testing.assert_array_equal(cut.volume.hu[:, :, 0], phantom.volume.hu[:, :, k_old])
    np.testing.assert_allclose(cut.volume.affine_lps[:3, 3], phantom.volume.affine_lps[:3, :3] @ [0, 0, k_old]
                               + phantom.volume.affine_lps[:3, 3])
