"""Per-body features the labelling step reads (``labelling.BodyFeatures``), measured on masks on a canonical grid
(+L, +P, +S): rib attachment per side, height, cut by the field of view, how far the field reaches, whether the
lowest body sits on (or is fused with) the sacrum.  Shared by inference on predictions and tests on phantom truth.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from service.segmentation.geometry import field_extent_mm
from service.segmentation.labelling import BodyFeatures
from service.segmentation.ribs import rib_attachment

S1_FUSION_CONTACT_VOXELS = 20
"""Face-adjacent voxels between the lowest body and the sacrum class for the body to count as fused (S1): a
disc (>= 1 voxel at 3 mm) separates L5 from the sacrum."""
S1_FUSION_SACRUM_MM3 = 30000.0
"""Sacrum-class volume (coarse 3 mm voxels, 27 mm3) below the body's middle required to call it S1."""
MIN_RIB_ATTACH_MM3 = 700.0
"""Rib volume in the ring on one side for that side to count as rib-bearing (~26 voxels at 3 mm; the tail of
the rib above or a transverse process read as rib gives ~5-20 voxels at L1; true ribs give > 40)."""
RIB_RELATIVE_FRACTION = 0.3
"""A side also needs this fraction of the typical rib volume of the scan's rib-bearing bodies (median of their
larger side): at 5 mm or low dose a lumbar transverse process or the tip of a floating rib read as rib reaches
the absolute minimum, but stays far below the rib heads of the thoracic bodies of the same scan."""
MIN_BODIES_FOR_RELATIVE = 3
SACRUM_SEARCH_MM = 30.0
"""The sacrum must start within this distance below the lowest body's centroid-to-bottom edge."""
MIN_SACRUM_VOLUME_MM3 = 8000.0
"""Sacrum-class volume required just below the lowest body (the S1 segment alone is > 30 cm3; stray voxels of
a misread lumbar body are far less)."""


def fused_with_sacrum(body: npt.NDArray[np.bool_], sacrum_mask: npt.NDArray[np.bool_]) -> bool:
    """True when the body touches the sacrum without a disc in between (it is S1, not L5)."""
    if not sacrum_mask.any():
        return False
    ring = ndimage.binary_dilation(body, structure=np.ones((3, 3, 3))) & ~body
    if int(np.count_nonzero(ring & sacrum_mask)) < S1_FUSION_CONTACT_VOXELS:
        return False
    # and a real sacrum below it (stray sacrum-class voxels next to a lumbar body on an unfamiliar scan are not)
    zs = np.nonzero(body.any(axis=(0, 1)))[0]
    below = sacrum_mask[:, :, : max(1, int(zs.mean()))]
    return int(np.count_nonzero(below)) * 27 >= S1_FUSION_SACRUM_MM3


def sacrum_below(lowest_body: npt.NDArray[np.bool_], sacrum_mask: npt.NDArray[np.bool_],
                 spacing_mm: tuple[float, float, float]) -> bool:
    if not sacrum_mask.any() or not lowest_body.any():
        return False
    sp = np.asarray(spacing_mm)
    body_pts = np.argwhere(lowest_body) * sp
    cx, cy = body_pts[:, 0].mean(), body_pts[:, 1].mean()
    z_bottom = body_pts[:, 2].min()
    pts = np.argwhere(sacrum_mask) * sp
    near = (np.hypot(pts[:, 0] - cx, pts[:, 1] - cy) < 50.0) & (pts[:, 2] < z_bottom + 5.0) & (
        pts[:, 2] > z_bottom - SACRUM_SEARCH_MM)
    return bool(near.sum() * float(np.prod(sp)) >= MIN_SACRUM_VOLUME_MM3)


def features_from_masks(instance_masks: list[npt.NDArray[np.bool_]], rib_mask: npt.NDArray[np.bool_],
                        sacrum_mask: npt.NDArray[np.bool_], spacing_mm: tuple[float, float, float],
                        thoracic_votes: list[float] | None = None,
                        rib_volumes_mm3: list[tuple[float, float]] | None = None,
                        in_field: npt.NDArray[np.bool_] | None = None,
                        ) -> tuple[list[BodyFeatures], bool]:
    """(features, sacrum below the lowest body) from masks on a canonical grid
    (instances ordered cranial -> caudal).  ``rib_volumes_mm3``: (left, right) per body when measured elsewhere
    (the fine stage), else from ``rib_mask``.  ``in_field``: voxels inside the reconstructed field of view on the
    same grid (default: the whole grid), for how far the field reaches around each body."""
    sp = np.asarray(spacing_mm, dtype=np.float64)
    ribs = rib_volumes_mm3 if rib_volumes_mm3 is not None else rib_attachment(instance_masks, rib_mask, spacing_mm)
    bearing = [max(left, right) for left, right in ribs if max(left, right) >= MIN_RIB_ATTACH_MM3]
    min_rib_mm3 = MIN_RIB_ATTACH_MM3
    if len(bearing) >= MIN_BODIES_FOR_RELATIVE:
        min_rib_mm3 = max(MIN_RIB_ATTACH_MM3, RIB_RELATIVE_FRACTION * float(np.median(bearing)))
    feats = []
    shape = instance_masks[0].shape if instance_masks else (1, 1, 1)
    whole = in_field if in_field is not None else np.ones(shape, dtype=bool)
    for i, (m, (left, right)) in enumerate(zip(instance_masks, ribs, strict=True)):
        coords = np.argwhere(m)
        zs = coords[:, 2]
        cut_bottom, cut_top = bool(zs.min() == 0), bool(zs.max() == m.shape[2] - 1)
        cut = cut_bottom or cut_top
        field = field_extent_mm(whole, coords.mean(axis=0), spacing_mm)
        centre_z_mm = float(coords[:, 2].mean() * sp[2])
        feats.append(BodyFeatures(
            centroid_mm=tuple(float(v) for v in coords.mean(axis=0) * sp),  # type: ignore[arg-type]
            height_mm=float((zs.max() - zs.min() + 1) * sp[2]), rib_left=left >= min_rib_mm3,
            rib_right=right >= min_rib_mm3, rib_left_mm3=left, rib_right_mm3=right, rib_threshold_mm3=min_rib_mm3,
            thoracic_vote=0.5 if thoracic_votes is None else thoracic_votes[i], cut_by_fov=cut, cut_top=cut_top,
            cut_bottom=cut_bottom, field_left_mm=field[0], field_right_mm=field[1], field_posterior_mm=field[2],
            field_above_mm=(m.shape[2] - 0.5) * sp[2] - centre_z_mm, field_below_mm=centre_z_mm + 0.5 * sp[2]))
    sac = sacrum_below(instance_masks[-1], sacrum_mask, spacing_mm) if instance_masks else False
    return feats, sac
