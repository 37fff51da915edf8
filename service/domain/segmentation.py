"""Output of the segmentation + labelling step: labelled vertebral bodies on the CT grid."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from service.domain.levels import VertebraLevel


@dataclass(frozen=True)
class LabelledVertebra:
    level: VertebraLevel
    centroid_lps_mm: tuple[float, float, float]
    """Centroid of the vertebral body mask in DICOM patient coordinates."""
    level_uncertain: bool = False
    """True when labelling could not decide the name (transitional vertebra, 11/13 ribs, short field of view)."""
    uncertainty_reason: str | None = None
    cut_by_fov: bool = False
    """True when the body touches the first or last slice (not fully in the field of view)."""
    level_cues: tuple[str, ...] = ()
    """The labelling cues that agreed on this name (e.g. the T12 rib anchor and the thoracic/lumbar appearance)."""

    def __post_init__(self) -> None:
        if len(self.centroid_lps_mm) != 3:
            raise ValueError(f"centroid_lps_mm must have 3 values, got {self.centroid_lps_mm}")
        if self.level_uncertain and not self.uncertainty_reason:
            raise ValueError("uncertainty_reason is required when level_uncertain is True")


@dataclass(frozen=True, eq=False)
class SpineSegmentation:
    body_labels: npt.NDArray[np.int16]
    """Same shape as CTVolume.hu; value = VertebraLevel value of the vertebral body, 0 elsewhere."""
    posterior_mask: npt.NDArray[np.bool_] | None
    """Posterior elements (all levels), same grid; None when the backend does not provide them."""
    vertebrae: tuple[LabelledVertebra, ...]
    """One entry per label value present in body_labels, cranial to caudal."""
    model_name: str
    model_version: str
    notes: tuple[str, ...] = ()
    """Free-text labelling notes (e.g. 'last rib-bearing vertebra found: T12 anchor')."""

    def __post_init__(self) -> None:
        present: set[int] = set()
        for k in range(0, self.body_labels.shape[2], 64):  # by slabs: np.unique copies and sorts what it gets
            slab = self.body_labels[:, :, k:k + 64]
            present.update(int(v) for v in np.unique(slab[slab != 0]))
        listed = {int(v.level) for v in self.vertebrae}
        if present != listed:
            raise ValueError(f"vertebrae must list exactly the label values present: present={sorted(present)}, "
                             f"listed={sorted(listed)}")
        if self.posterior_mask is not None and self.posterior_mask.shape != self.body_labels.shape:
            raise ValueError("posterior_mask must have the shape of body_labels")

    def mask(self, level: VertebraLevel) -> npt.NDArray[np.bool_]:
        return self.body_labels == int(level)

    def vertebra(self, level: VertebraLevel) -> LabelledVertebra | None:
        for v in self.vertebrae:
            if v.level == level:
                return v
        return None
