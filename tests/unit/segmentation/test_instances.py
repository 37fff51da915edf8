"""Body instances along the column: fused bodies are cut, fragments of one body are joined, off-spine blobs
are dropped."""

from __future__ import annotations

import numpy as np

from service.segmentation.instances import find_bodies


def _column(n_bodies: int, height_vox: int, disc_vox: int, bridge: bool) -> tuple[np.ndarray, np.ndarray]:
    shape = (40, 40, n_bodies * (height_vox + disc_vox) + 6)
    body = np.zeros(shape, dtype=np.float32)
    disc = np.zeros(shape, dtype=np.float32)
    z = 3
    for _ in range(n_bodies):
        body[14:26, 14:24, z:z + height_vox] = 0.95
        disc[14:26, 14:24, z + height_vox:z + height_vox + disc_vox] = 0.9
        if bridge:  # an osteophyte bridging the disc: the bodies touch
            body[14:16, 14:16, z + height_vox:z + height_vox + disc_vox] = 0.95
        z += height_vox + disc_vox
    return body, disc


def test_fused_lumbar_bodies_are_cut_at_the_discs() -> None:
    body, disc = _column(4, 9, 3, bridge=True)  # 27 mm bodies, 9 mm discs at 3 mm
    share = np.zeros_like(body)  # lumbar group
    inst = find_bodies(body, disc, 3.0, share)
    assert len(inst) == 4, [b.height_mm for b in inst]
    # 27 mm bodies; a piece may also hold the bridge through one 9 mm disc
    assert all(24.0 <= b.height_mm <= 36.0 for b in inst), [b.height_mm for b in inst]


def test_fragmented_body_is_joined_and_off_spine_blob_dropped() -> None:
    body, disc = _column(3, 9, 3, bridge=False)
    # split the middle body into two fragments by a thin unpredicted band
    zmid = 3 + 12 + 4
    body[:, :, zmid] = 0.0
    # a blob 60 mm lateral of the spine (e.g. a calcified node)
    body[34:39, 14:20, 10:16] = 0.95
    share = np.zeros_like(body)
    inst = find_bodies(body, disc, 3.0, share)
    assert len(inst) == 3, [(b.centroid_vox, b.height_mm) for b in inst]
    assert all(abs(b.centroid_vox[0] - 19.5) < 3 for b in inst)
