"""Stage 2: vertebral bodies, discs, posterior elements and rib heads at 1.25 mm in a tube around the spine.

The tube is the axial bounding box of the spine found by the coarse model (plus ``INFERENCE_TUBE_MARGIN_MM``) along
the whole scan.  The CT inside it is resampled to 1.25 mm (area averaging where the scan is finer, linear
interpolation along thick slices), the fine model runs over it with a sliding window, and the body probability is
cut into instances along the spine (``instances.find_bodies``: at this resolution a thoracic disc is several voxels
thick, so the cut planes sit on the discs).  The rib class gives the rib-bearing check of the labelling.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from scipy import ndimage

from service.segmentation.bundle import LoadedBundle, softmax_sliding_window
from service.segmentation.fine_classes import FINE_BODY, FINE_DISC, FINE_POSTERIOR, FINE_RIB
from service.segmentation.geometry import CanonicalFrame, CoarseGrid, coarse_grid, resample_to_coarse

INFERENCE_TUBE_MARGIN_MM = 28.0
"""Axial margin around the coarse bodies: covers the pedicles, the rib heads and necks (12-45 mm from a body's
centre) and a body the coarse model placed a little off."""


@dataclass(frozen=True)
class FineField:
    """The fine model's output in a canonical-native box."""

    box: tuple[slice, slice, slice]
    """Canonical-native bounding box of the tube."""
    grid: CoarseGrid
    """1.25 mm grid over the box (its 'canonical' indices are relative to box starts)."""
    probs: npt.NDArray[np.float32]
    """(classes, x, y, z) softmax on the fine grid."""

    @property
    def body(self) -> npt.NDArray[np.float32]:
        return self.probs[FINE_BODY]

    @property
    def disc(self) -> npt.NDArray[np.float32]:
        return self.probs[FINE_DISC]

    @property
    def posterior(self) -> npt.NDArray[np.float32]:
        return self.probs[FINE_POSTERIOR]

    @property
    def rib(self) -> npt.NDArray[np.float32] | None:
        """Rib probability (None for a fine model without the rib class)."""
        return self.probs[FINE_RIB] if self.probs.shape[0] > FINE_RIB else None

    def native_coordinates(self, axis: int) -> npt.NDArray[np.float64]:
        """Canonical-native (fractional) index of every fine voxel centre along ``axis``."""
        n, m = self.grid.canonical_shape[axis], self.grid.shape[axis]
        return (np.arange(m) + 0.5) * n / m - 0.5 + self.box[axis].start


def tube_box(instance_masks: list[npt.NDArray[np.bool_]], coarse: CoarseGrid,
             canonical_shape: tuple[int, int, int]) -> tuple[slice, slice, slice]:
    """Canonical-native box around the coarse body instances (axial margin INFERENCE_TUBE_MARGIN_MM) over the whole scan
    length: the spine runs through every chest / abdomen scan, and bodies the coarse model missed at the ends of
    the column are found by the fine stage."""
    union = np.logical_or.reduce(instance_masks)
    coords = np.argwhere(union)
    lo, hi = coords.min(axis=0), coords.max(axis=0) + 1
    box = []
    for a in range(3):
        n, m = coarse.canonical_shape[a], coarse.shape[a]
        native_mm = float(np.linalg.norm(coarse.affine_lps[:3, a])) * m / n
        if a == 2:
            box.append(slice(0, canonical_shape[2]))
            continue
        margin = INFERENCE_TUBE_MARGIN_MM / native_mm
        start = max(0, int(np.floor(lo[a] * n / m - margin)))
        stop = min(canonical_shape[a], int(np.ceil(hi[a] * n / m + margin)))
        box.append(slice(start, stop))
    return tuple(box)  # type: ignore[return-value]


def box_frame(frame: CanonicalFrame, box: tuple[slice, slice, slice]) -> CanonicalFrame:
    """A canonical frame for the sub-array ``canonical[box]`` (identity permutation, shifted origin)."""
    shift = np.eye(4)
    shift[:3, 3] = [s.start for s in box]
    shape = tuple(s.stop - s.start for s in box)
    return CanonicalFrame(shape, (0, 1, 2), (False, False, False), frame.affine_lps @ shift)  # type: ignore[arg-type]


def predict_fine(bundle: LoadedBundle, device: torch.device, canonical_hu: npt.NDArray[np.floating],
                 frame: CanonicalFrame, box: tuple[slice, slice, slice]) -> FineField:
    if bundle.fine_spacing_mm is None:
        raise ValueError(f"bundle {bundle.name} is not a fine bundle (no fine_spacing_mm in inference.json)")
    sub = box_frame(frame, box)
    grid = coarse_grid(sub, bundle.fine_spacing_mm)
    hu = resample_to_coarse(np.asarray(canonical_hu[box], dtype=np.float32), grid)
    return FineField(box, grid, softmax_sliding_window(bundle, device, hu, bundle.roi_size))


def fine_to_coarse_masks(fine_masks: list[npt.NDArray[np.bool_]], field: FineField,
                         coarse: CoarseGrid) -> list[npt.NDArray[np.bool_]]:
    """Each fine instance on the coarse grid (coarse voxels whose centre falls in it; at least its centroid voxel)."""
    lab = np.zeros(field.grid.shape, dtype=np.int32)
    for i, m in enumerate(fine_masks, start=1):
        lab[m] = i
    idx = []
    inside = []
    for a in range(3):
        n, m = coarse.canonical_shape[a], coarse.shape[a]
        native = (np.arange(m) + 0.5) * n / m - 0.5 - field.box[a].start
        fn, fm = field.grid.canonical_shape[a], field.grid.shape[a]
        f = np.rint((native + 0.5) * fm / fn - 0.5).astype(np.intp)
        inside.append((f >= 0) & (f < fm))
        idx.append(np.clip(f, 0, fm - 1))
    sampled = lab[np.ix_(*idx)]
    sampled = np.where(inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, None, :], sampled, 0)
    out = []
    for i, m in enumerate(fine_masks, start=1):
        cm = sampled == i
        if not cm.any():
            c = np.argwhere(m).mean(axis=0)
            ci = []
            for a in range(3):
                n, mm = coarse.canonical_shape[a], coarse.shape[a]
                fn, fm = field.grid.canonical_shape[a], field.grid.shape[a]
                native = (c[a] + 0.5) * fn / fm - 0.5 + field.box[a].start
                ci.append(int(np.clip(np.rint((native + 0.5) * mm / n - 0.5), 0, mm - 1)))
            cm[tuple(ci)] = True
        out.append(cm)
    return out


def coarse_on_fine(coarse_array: npt.NDArray[np.float32], field: FineField, coarse: CoarseGrid,
                   ) -> npt.NDArray[np.float32]:
    """Trilinear interpolation of a coarse-grid array at the fine voxel centres."""
    axes = [coarse.coarse_coordinate(a, field.native_coordinates(a)) for a in range(3)]
    ci, cj, ck = np.meshgrid(*axes, indexing="ij")
    return ndimage.map_coordinates(coarse_array.astype(np.float32), np.stack([ci, cj, ck]), order=1,
                                   mode="nearest").astype(np.float32)


DISC_BELOW_WINDOW_MM = (8.0, 3.0)
"""Where a disc under a body is looked for: from this far below the body's lowest slice to this far above it."""
DISC_UNDER_L5_MM = 2.0
"""Disc thickness (disc voxels under the body's footprint / its mean cross-section) above which the lowest body
rests on a disc: it is L5, not S1 fused with the sacrum.  Measured on 16 phantom scans: 0-0.5 mm under S1 (fused),
4.5-12 mm under L5."""


def disc_below_mm(body: npt.NDArray[np.bool_], field: FineField) -> float:
    """Equivalent thickness (mm) of the fine disc class just under a fine body mask, within its footprint."""
    zs = np.nonzero(body.any(axis=(0, 1)))[0]
    if len(zs) == 0:
        return 0.0
    sp = field.grid.spacing_mm[2]
    z0 = int(zs.min())
    lo = max(0, z0 - round(DISC_BELOW_WINDOW_MM[0] / sp))
    hi = z0 + round(DISC_BELOW_WINDOW_MM[1] / sp)
    footprint = ndimage.binary_dilation(body.any(axis=2), iterations=3)
    disc = (field.disc[:, :, lo:hi] > 0.5) & footprint[:, :, None]
    mean_section = float(body.sum()) / len(zs)
    return float(disc.sum()) / max(mean_section, 1.0) * sp


def rests_on_disc(body: npt.NDArray[np.bool_], field: FineField) -> bool:
    return disc_below_mm(body, field) >= DISC_UNDER_L5_MM
