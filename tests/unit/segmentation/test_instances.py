"""Body instances along the column: fused bodies are cut, fragments of one body are joined, off-spine blobs
are dropped."""

from __future__ import annotations

import numpy as np

from service.segmentation.instances import FINE_RULES, _centreline_coordinate, _keep_spine_column, find_bodies


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


# -- fine resolution (1.25 mm): the rules the fine stage uses ------------------------------------------------------

FINE_MM = 1.25


def _fine_column(sections_mm: list[tuple[float, float]], heights_mm: list[float], disc_mm: float,
                 disc_body_prob: float, top_gap_mm: float | None = None,
                 ) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Bodies stacked caudal (first) to cranial (last) at 1.25 mm; discs with a faint body probability (thick slices
    blur a thin disc: the bodies stay connected).  Returns body, disc probabilities and the body centres (z vox)."""
    total = sum(heights_mm) + disc_mm * len(heights_mm) + (top_gap_mm or 0.0) + 20.0
    shape = (64, 64, round(total / FINE_MM))
    body = np.zeros(shape, dtype=np.float32)
    disc = np.zeros(shape, dtype=np.float32)
    z, centres = 8, []
    for i, ((w, d), h) in enumerate(zip(sections_mm, heights_mm, strict=True)):
        hw, hd, hv = round(w / FINE_MM / 2), round(d / FINE_MM / 2), round(h / FINE_MM)
        if top_gap_mm is not None and i == len(heights_mm) - 1:
            z += round(top_gap_mm / FINE_MM)
        body[32 - hw:32 + hw, 32 - hd:32 + hd, z:z + hv] = 0.95
        centres.append(z + hv / 2)
        z += hv
        if i < len(heights_mm) - 1:
            dv = round(disc_mm / FINE_MM)
            body[32 - hw:32 + hw, 32 - hd:32 + hd, z:z + dv] = disc_body_prob
            disc[32 - hw:32 + hw, 32 - hd:32 + hd, z:z + dv] = 1.0 - disc_body_prob
            z += dv
    return body, disc, centres


def test_centreline_follows_a_stepping_spine_without_inflating_lengths() -> None:
    """A lordotic spine steps forward body by body, and the sparse slices at each disc lie off centre (endplate
    rims, osteophytes); the arc length between body centres must stay the true centre distance."""
    hv, dv, step = round(28 / FINE_MM), round(9 / FINE_MM), round(6 / FINE_MM)
    body = np.zeros((90, 100, 5 * (hv + dv) + 8), dtype=bool)
    z, centres = 4, []
    for i in range(5):
        y0 = 20 + i * step
        body[28:60, y0:y0 + 28, z:z + hv] = True
        if i < 4:  # alternating off-centre voxels at the disc level
            side = 5 if i % 2 else 70
            body[side:side + 14, y0:y0 + 14, z + hv:z + hv + dv] = True
        centres.append(z + hv / 2)
        z += hv + dv
    coords = np.argwhere(body)
    t = _centreline_coordinate(coords, FINE_MM)
    which = np.searchsorted(np.array(centres) + 15, coords[:, 2])
    central = (coords[:, 0] >= 28) & (coords[:, 0] < 60)
    t_centre = np.array([t[(which == i) & central].mean() for i in range(5)])
    true_mm = float(np.hypot(hv * FINE_MM + dv * FINE_MM, step * FINE_MM))
    assert np.allclose(np.diff(t_centre), true_mm, rtol=0.06), (np.diff(t_centre), true_mm)


def test_small_upper_thoracic_bodies_with_blurred_discs_are_not_merged() -> None:
    """T1-T4 of a small patient on 5 mm slices: 15 mm bodies, 4 mm discs barely seen.  Pairs of them are as long
    as one mid-thoracic body; the fine rules expect small bodies to be short and keep them apart."""
    body, disc, centres = _fine_column([(28.0, 17.0)] * 5, [15.0] * 5, 4.0, disc_body_prob=0.6)
    share = np.ones_like(body)  # thoracic
    inst = find_bodies(body, disc, FINE_MM, share, FINE_RULES)
    assert len(inst) == 5, [b.height_mm for b in inst]
    found = sorted(b.centroid_vox[2] for b in inst)
    assert np.allclose(found, centres, atol=4.0 / FINE_MM), (found, centres)


def test_small_c7_at_the_top_of_the_scan_is_kept_at_fine_resolution() -> None:
    """A small C7 (1.3 cm3 of mask) separated from T1 by its disc: a body to count, not noise."""
    body, disc, centres = _fine_column([(30.0, 20.0)] * 3 + [(15.0, 10.0)], [17.0, 17.0, 16.0, 8.75], 5.0,
                                       disc_body_prob=0.05)
    c7_mm3 = float((body[..., round(centres[-1] - 3.5):] > 0.5).sum()) * FINE_MM**3
    assert 1000.0 < c7_mm3 < 1500.0  # under the coarse grid's minimum
    inst = find_bodies(body, disc, FINE_MM, np.ones_like(body), FINE_RULES)
    assert len(inst) == 4, [b.volume_mm3 for b in inst]
    assert abs(inst[0].centroid_vox[2] - centres[-1]) < 2.0


def test_small_sacral_fragment_below_s1_is_not_a_body_unless_the_fov_cuts_it() -> None:
    """A segment of S2 taken for body under S1 would be counted as S1 and push every name up a level."""
    sections = [(20.0, 12.0)] + [(50.0, 36.0)] * 3  # caudal first: the fragment, S1, L5, L4
    body, disc, centres = _fine_column(sections, [15.0, 30.0, 30.0, 30.0], 8.0, disc_body_prob=0.05)
    lumbar = np.zeros_like(body)
    inst = find_bodies(body, disc, FINE_MM, lumbar, FINE_RULES)
    assert len(inst) == 3, [b.volume_mm3 for b in inst]
    assert abs(inst[-1].centroid_vox[2] - centres[1]) < 4.0  # the lowest body is S1, not the fragment
    # the same small piece cut by the bottom of the field of view may be what is left of a body: kept
    start = 8 + 2  # the fragment begins at z = 8
    cut = (body[..., start:], disc[..., start:], lumbar[..., start:])
    inst_cut = find_bodies(cut[0], cut[1], FINE_MM, cut[2], FINE_RULES)
    assert len(inst_cut) == 4, [b.volume_mm3 for b in inst_cut]
    assert inst_cut[-1].mask[..., 0].any()


def test_lordotic_l5_stepping_back_joins_the_column_and_an_off_spine_blob_does_not() -> None:
    """A wide L5 sits ~27 mm behind L4 in a marked lordosis; the column must take it (else L5 and S1 are lost and
    the sacrum anchor lands on L4).  A calcified blob beside the spine stays out."""
    shape = (130, 130, 130)
    comps = []
    # caudal first: L5 (56 x 38 mm, 27 mm further posterior), L4, L3 (50 x 36 mm); 30 mm bodies, 9 mm discs
    z = 6
    for w, d, back in [(56.0, 38.0, 27.0), (50.0, 36.0, 0.0), (50.0, 36.0, 0.0)]:
        hw, hd, hv = round(w / FINE_MM / 2), round(d / FINE_MM / 2), round(30 / FINE_MM)
        cy = 50 + round(back / FINE_MM)
        m = np.zeros(shape, dtype=bool)
        m[65 - hw:65 + hw, cy - hd:cy + hd, z:z + hv] = True
        comps.append(m)
        z += hv + round(9 / FINE_MM)
    blob = np.zeros(shape, dtype=bool)
    blob[120:128, 5:13, 60:75] = True  # ~60 mm lateral and anterior of the column
    seed = comps[1] | comps[2]  # the coarse model found L4 and L3 only
    kept = _keep_spine_column([*comps, blob], FINE_MM, seed)
    assert len(kept) == 3
    assert any(k is comps[0] for k in kept)
    assert not any(k is blob for k in kept)
