"""Where the reconstructed field sits: the spine stays in it whatever pulls the field towards the rods, and a body
the field's edge cuts in plane is recorded as not fully visible."""

from __future__ import annotations

import os

import numpy as np

from service.domain.levels import VertebraLevel
from service.offline.phantom import labels as lab
from service.offline.phantom.api import PhantomSpec, generate

os.environ.setdefault("OMP_NUM_THREADS", "1")
V = VertebraLevel
# 96 x 2.75 mm = 264 mm: the small display field of s18 case_13 (obese abdomen, rods under the patient).
SMALL_FIELD = {"rows": 96, "columns": 96, "pixel_spacing_mm": 2.75, "slice_thickness_mm": 3.0}


def _in_circle_fraction(labels: np.ndarray, value_set: tuple[int, ...]) -> tuple[int, int]:
    """(voxels of these labels, of them within 1.5 voxels of the reconstruction circle's edge)."""
    nx, ny = labels.shape[0], labels.shape[1]
    mask = np.isin(labels, value_set)
    i, j, _ = np.nonzero(mask)
    r = min(nx, ny) / 2
    edge = ((i - (nx - 1) / 2) ** 2 + (j - (ny - 1) / 2) ** 2) > (r - 1.5) ** 2
    return int(mask.sum()), int(edge.sum())


def test_an_obese_abdomen_under_a_small_field_with_rods_keeps_its_vertebral_bodies_in_the_field() -> None:
    p = generate(PhantomSpec(seed=2669, region="abdomen", habitus="obese", calibration_phantom="k2hpo4",
                             fov_offset_mm=(39.0, -18.0), **SMALL_FIELD))  # type: ignore[arg-type]
    levels = [VertebraLevel[v["level"]] for v in p.truth["vertebrae"] if not v["cut_by_fov"]]
    assert {V.L1, V.L2} <= set(levels)
    for lv in levels:
        n, at_edge = _in_circle_fraction(p.labels, (lab.body_shell(lv), lab.body_core(lv)))
        assert n > 0 and at_edge == 0, (lv, n, at_edge)


def test_a_body_the_field_cuts_in_plane_is_recorded_as_cut() -> None:
    # a 140 mm field 70 mm to the side of the spine: the bodies reach its circle
    p = generate(PhantomSpec(seed=7, region="abdomen", rows=56, columns=56, pixel_spacing_mm=2.5,
                             slice_thickness_mm=3.0, fov_offset_mm=(70.0, 0.0)))
    checked = 0
    for v in p.truth["vertebrae"]:
        lv = VertebraLevel[v["level"]]
        _, at_edge = _in_circle_fraction(p.labels, (lab.body_shell(lv), lab.body_core(lv)))
        if at_edge:
            assert v["cut_by_fov"], v["level"]
            checked += 1
    assert checked >= 3
