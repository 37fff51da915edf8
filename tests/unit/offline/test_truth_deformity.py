"""The visible deformity of a phantom fracture, read from its truth heights against its neighbours."""

from __future__ import annotations

import pytest

from service.offline.evaluation.truth_deformity import visible_loss


def _body(level: str, a: float, m: float, p: float, **extra: object) -> dict[str, object]:
    return {"level": level, "heights_mm": {"anterior": a, "middle": m, "posterior": p}, **extra}


def test_a_wedge_reads_its_anterior_loss_against_the_neighbours() -> None:
    vertebrae = {v["level"]: v for v in (_body("T12", 24.0, 23.0, 24.0), _body("L1", 18.0, 21.0, 24.0, fractured=True),
                                         _body("L2", 26.0, 25.0, 26.0))}
    # anterior 18 against (24 + 26) / 2 = 25: 28 %; anterior/posterior 0.75 against 1.0: 25 %
    assert visible_loss(vertebrae, "L1") == pytest.approx(0.28)


def test_taller_neighbours_make_a_crush_look_larger_and_cut_or_fractured_ones_are_skipped() -> None:
    vertebrae = {v["level"]: v for v in (
        _body("L1", 10.0, 10.0, 10.0, cut_by_fov=True), _body("L2", 28.0, 27.0, 28.0),
        _body("L3", 22.0, 21.0, 22.0, fractured=True), _body("L4", 20.0, 12.0, 20.0, fractured=True),
        _body("L5", 28.0, 27.0, 28.0))}
    # L3's neighbours: L2 above, L5 below (L4 fractured): 22 against 28 anterior and posterior (21 %), 21 against 27
    # in the middle (22 %, the largest); its ratios equal theirs
    assert visible_loss(vertebrae, "L3") == pytest.approx(1 - 21.0 / 27.0)


def test_no_neighbour_no_reading() -> None:
    vertebrae = {"L1": _body("L1", 18.0, 21.0, 24.0, fractured=True)}
    assert visible_loss(vertebrae, "L1") is None
