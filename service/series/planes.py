"""Which anatomical plane a series' slices lie in (issue 17: sagittal and coronal series).

A scanner or archive often sends, next to the axial stack, sagittal and coronal reformats of the same acquisition.
The node analyses axial stacks only; ``slice_plane`` names the plane from the slice normal (LPS) so that the checks
can give a clear reason and the scheduler can tell a reformat of a screened study from a study without an axial
series. Analysing sagittal or coronal series themselves is future work.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

import numpy as np

DOMINANT_COMPONENT_MIN = 0.8
"""A slice normal lies along an axis when its component there is at least this (about 37 degrees off at most);
the axial check has used the same bound on the head-foot component."""


class SlicePlane(StrEnum):
    AXIAL = "axial"
    """Slice normal mostly head-foot (S)."""
    SAGITTAL = "sagittal"
    """Slice normal mostly left-right (L)."""
    CORONAL = "coronal"
    """Slice normal mostly anterior-posterior (P)."""
    OBLIQUE = "oblique"
    """No axis dominates."""


NON_AXIAL_PLANES = frozenset({SlicePlane.SAGITTAL, SlicePlane.CORONAL})
"""Planes of reformats the node recognises but does not analyse yet."""


def slice_plane(normal: Sequence[float] | np.ndarray) -> SlicePlane:
    """The plane of slices with this unit normal (LPS: x left, y posterior, z superior)."""
    values = np.abs(np.asarray(normal, dtype=np.float64))
    if values.shape != (3,) or not np.all(np.isfinite(values)):
        raise ValueError(f"normal must be 3 finite values, got {normal!r}")
    length = float(np.linalg.norm(values))
    if length <= 0:
        raise ValueError("normal must not be zero")
    lr, ap, hf = values / length
    if hf >= DOMINANT_COMPONENT_MIN:
        return SlicePlane.AXIAL
    if lr >= DOMINANT_COMPONENT_MIN:
        return SlicePlane.SAGITTAL
    if ap >= DOMINANT_COMPONENT_MIN:
        return SlicePlane.CORONAL
    return SlicePlane.OBLIQUE


def non_axial_reason(plane: SlicePlane) -> str:
    """Why a series in this plane is not analysed (the check's reason; it names 'not an axial stack')."""
    if plane in NON_AXIAL_PLANES:
        return (f"{plane} series: analysis of non-axial series is not supported yet (not an axial stack: slice "
                f"normal is {'left-right' if plane == SlicePlane.SAGITTAL else 'anterior-posterior'})")
    if plane == SlicePlane.OBLIQUE:
        return "not an axial stack (slice normal is not head-foot)"
    raise ValueError(f"{plane} is axial")


def reformat_reason(plane: SlicePlane, axial_series: str) -> str:
    """Why a sagittal or coronal series is left alone while the axial series ``axial_series`` (its number) of the
    same study is screened."""
    if plane not in NON_AXIAL_PLANES:
        raise ValueError(f"only sagittal or coronal series are reformats, got {plane}")
    return f"{plane} reformat; the axial series {axial_series} of the study is screened"
