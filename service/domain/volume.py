"""CT volume in Hounsfield units on a grid with a DICOM patient-coordinate (LPS) affine.

Array convention used everywhere in the project:
    ``hu[i, j, k]`` with i = column index, j = row index, k = slice index (NIfTI-like order),
    ``affine_lps @ [i, j, k, 1] = [L, P, S, 1]`` in millimetres (DICOM patient coordinates).
Slices are ordered so that k increases along the slice normal (row_dir x col_dir) of the series,
which is ImagePositionPatient order, whatever the patient position (head-first or feet-first).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, eq=False)
class CTVolume:
    hu: npt.NDArray[np.float32]
    """HU values, shape (columns, rows, slices)."""
    affine_lps: npt.NDArray[np.float64]
    """4x4 voxel-index -> LPS mm."""
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    frame_of_reference_uid: str = ""
    sop_instance_uids: tuple[str, ...] = ()
    """SOP Instance UID of the source image for each slice k (empty for non-DICOM input)."""
    source_paths: tuple[Path, ...] = ()
    """File path of each slice k (empty for non-DICOM input)."""
    kvp: float | None = None
    manufacturer: str = ""
    manufacturer_model_name: str = ""
    station_name: str = ""
    convolution_kernel: str = ""
    contrast_bolus_agent: str = ""
    patient_sex: str = ""
    patient_age_years: float | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.hu.ndim != 3:
            raise ValueError(f"hu must be 3-D (columns, rows, slices), got shape {self.hu.shape}")
        if self.affine_lps.shape != (4, 4):
            raise ValueError(f"affine_lps must be 4x4, got {self.affine_lps.shape}")
        if not np.all(np.isfinite(self.affine_lps)):
            raise ValueError("affine_lps must be finite")
        spacing = self.spacing_mm
        if min(spacing) <= 0:
            raise ValueError(f"spacing_mm must be positive, got {spacing}")
        n_slices = self.hu.shape[2]
        if self.sop_instance_uids and len(self.sop_instance_uids) != n_slices:
            raise ValueError(
                f"sop_instance_uids must have one entry per slice ({n_slices}), got {len(self.sop_instance_uids)}"
            )
        if self.source_paths and len(self.source_paths) != n_slices:
            raise ValueError(f"source_paths must have one entry per slice ({n_slices}), got {len(self.source_paths)}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return (int(self.hu.shape[0]), int(self.hu.shape[1]), int(self.hu.shape[2]))

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel size along i (column step), j (row step), k (slice step), in mm."""
        norms = np.linalg.norm(self.affine_lps[:3, :3], axis=0)
        return (float(norms[0]), float(norms[1]), float(norms[2]))

    @property
    def voxel_volume_mm3(self) -> float:
        return float(abs(np.linalg.det(self.affine_lps[:3, :3])))

    def index_to_lps(self, ijk: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Voxel index (..., 3) -> LPS mm (..., 3)."""
        pts = np.asarray(ijk, dtype=np.float64)
        return pts @ self.affine_lps[:3, :3].T + self.affine_lps[:3, 3]

    def lps_to_index(self, lps: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """LPS mm (..., 3) -> fractional voxel index (..., 3)."""
        pts = np.asarray(lps, dtype=np.float64)
        inv = np.linalg.inv(self.affine_lps)
        return pts @ inv[:3, :3].T + inv[:3, 3]

    def superior_axis(self) -> tuple[int, int]:
        """(array axis, sign) whose direction is closest to patient superior (+S).

        sign is +1 when increasing the index moves superiorly, -1 when it moves inferiorly.
        """
        directions = self.affine_lps[:3, :3] / np.linalg.norm(self.affine_lps[:3, :3], axis=0)
        s_component = directions[2, :]
        axis = int(np.argmax(np.abs(s_component)))
        return axis, (1 if s_component[axis] > 0 else -1)


def mm_to_voxels(distance_mm: float, spacing_mm: tuple[float, float, float]) -> tuple[int, int, int]:
    """A distance in mm as a whole number of voxels along each axis (rounded, at least 0).

    The one place where millimetres become voxels.
    """
    if distance_mm < 0:
        raise ValueError(f"distance_mm must be >= 0, got {distance_mm}")
    return tuple(round(distance_mm / s) for s in spacing_mm)  # type: ignore[return-value]
