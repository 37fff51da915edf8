"""Which anatomical plane a series' slices lie in (issue 17: sagittal and coronal series).

A scanner or archive often sends, next to the axial stack, sagittal and coronal reformats of the same acquisition;
a targeted spine reconstruction often comes as a sagittal series alone. ``slice_plane`` names the plane from the
slice normal (LPS). Axial, sagittal and coronal stacks all pass the checks (the loader's affine and every later
stage work in patient coordinates); an oblique stack is rejected. The scheduler screens an axial series when the
study has a usable one and ignores the sagittal and coronal series then (reformats of it); without one it
analyses a sagittal series, else a coronal one (``PLANE_PREFERENCE``).
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
"""Planes of series analysed only when the study has no usable axial series."""
ANALYSED_PLANES = frozenset({SlicePlane.AXIAL, *NON_AXIAL_PLANES})
"""Planes whose stacks pass the checks."""
PLANE_PREFERENCE: dict[SlicePlane, int] = {SlicePlane.AXIAL: 0, SlicePlane.SAGITTAL: 1, SlicePlane.CORONAL: 2}
"""Lower is preferred. Axial first: the studies measured on axial series, and a study's sagittal and coronal series
are mostly reformats of it. Sagittal before coronal: the view of the spine a radiologist reads, and a vertebral
body spans more sagittal slices (its left-right width, 40-50 mm) than coronal ones (its depth, 30-35 mm)."""
_NORMAL_DIRECTION = {SlicePlane.AXIAL: "head-foot", SlicePlane.SAGITTAL: "left-right",
                     SlicePlane.CORONAL: "anterior-posterior"}


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


def oblique_reason() -> str:
    """Why a stack whose slice normal lies along no patient axis is not analysed (the check's reason)."""
    return ("oblique series: the slice normal is not along a patient axis (more than about 37 degrees from "
            "head-foot, left-right and anterior-posterior); only axial, sagittal and coronal stacks are analysed")


def non_axial_note(plane: SlicePlane) -> str:
    """The warning a sagittal or coronal series carries into the result's notes when it is analysed."""
    if plane not in NON_AXIAL_PLANES:
        raise ValueError(f"only sagittal or coronal series get this note, got {plane}")
    return (f"{plane} series: measured on its {plane} slices (slice normal {_NORMAL_DIRECTION[plane]}); the "
            f"node prefers an axial series when the study has a usable one")


def reformat_reason(plane: SlicePlane, axial_series: str) -> str:
    """Why a sagittal or coronal series is left alone while the axial series ``axial_series`` (its number) of the
    same study is screened."""
    if plane not in NON_AXIAL_PLANES:
        raise ValueError(f"only sagittal or coronal series are reformats, got {plane}")
    return f"{plane} reformat; the axial series {axial_series} of the study is screened"


def non_axial_queued_reason(plane: SlicePlane) -> str:
    """The reason recorded with a sagittal or coronal series that gets the study's job."""
    if plane not in NON_AXIAL_PLANES:
        raise ValueError(f"only sagittal or coronal series get this reason, got {plane}")
    return f"{plane} series analysed: no usable axial series in the study"
