"""The study note that says the fracture check is limited at thick slices (fracture_check.thick_slice_limitation)."""

from __future__ import annotations

from service.domain.levels import VertebraLevel as V
from service.measurement.fracture import VertebralHeights
from service.measurement.fracture_check import THICK_SLICE_LIMIT_MM, thick_slice_limitation


def _measured(step_mm: float) -> dict[V, VertebralHeights]:
    return {lv: VertebralHeights(25.0, 24.0, 25.0, resolution_mm=step_mm) for lv in (V.T12, V.L1, V.L2)}


def test_thick_slices_put_a_limitation_note_on_the_study() -> None:
    note = thick_slice_limitation(_measured(5.0))
    assert note is not None and note.startswith("fracture check limited by 5.0 mm slices")
    assert "grade 1" in note and "sagittal" in note


def test_thin_slices_and_no_measured_level_leave_no_note() -> None:
    assert thick_slice_limitation(_measured(1.0)) is None
    assert thick_slice_limitation(_measured(THICK_SLICE_LIMIT_MM)) is None
    assert thick_slice_limitation({}) is None


def test_the_median_step_decides_not_one_tilted_level() -> None:
    heights = _measured(2.5)
    heights[V.T11] = VertebralHeights(20.0, 19.0, 20.0, resolution_mm=3.6)  # one level tilted to the slices
    assert thick_slice_limitation(heights) is None
