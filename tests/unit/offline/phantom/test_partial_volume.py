"""The vertebral body's partial volume along the slice: a thin endplate at thick slices shows in every column, as a
scanner integrating the slice shows it, and not in some columns only (sampled at slice centres, a 1.5 mm shell on a
3 mm grid is hit by about half the columns)."""

from __future__ import annotations

import numpy as np

from service.domain.levels import VertebraLevel as V
from service.offline.phantom.api import PhantomSpec, body_mask, generate


def test_the_upper_endplate_shows_in_every_column_at_3_mm_slices() -> None:
    spec = PhantomSpec(seed=17, region="abdomen", slice_thickness_mm=3.0, noise_free=True, fov_top_level=V.T12,
                       fov_bottom_level=V.L2)
    p = generate(spec, spacing_mm=(1.0, 1.0, 3.0))
    l1 = next(v for v in p.truth["vertebrae"] if v["level"] == "L1")
    trabecular = l1["trabecular_hu"]
    body = body_mask(p.labels, V.L1)
    ii, jj = np.nonzero(body.sum(axis=2) >= 5)  # columns through the body's full height
    centre = np.array([ii.mean(), jj.mean()])
    keep = np.hypot(ii - centre[0], jj - centre[1]) <= 8.0  # the central columns, away from the walls
    peaks = []
    for i, j in zip(ii[keep], jj[keep], strict=True):
        top = int(np.nonzero(body[i, j])[0].max())
        peaks.append(float(p.volume.hu[i, j, max(0, top - 1):top + 2].max()))
    assert len(peaks) > 50
    shows = np.asarray(peaks) >= trabecular + 40.0
    assert shows.mean() >= 0.95, f"endplate seen in {100 * shows.mean():.0f} % of the columns"
