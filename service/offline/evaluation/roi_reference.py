"""Reference trabecular readings of the real cases in ../shared/data, made without the node's ROI code (roi.py).

Issue 15, point 3. All work is on the canonical grid (+L, +P, +S) of ``service.segmentation.geometry``.

- ``tptbox_l3_crop``: the mean HU of subregion label 50 (vertebral body interior, cancellous bone) inside VerSe
  label 22 (L3): an annotation made outside this project.
- ``ts_abdomen_t11_l2`` (L1, TotalSegmentator id 31): the median of three readings of the labelled vertebra:
  (a) EDT: the anterior 45 % of the vertebra's antero-posterior extent (the body), voxels more than 3 mm from its
      surface (Euclidean distance transform in mm);
  (b) box: that body eroded by a 3 mm box (a cube of 2 * round(3 mm / spacing) + 1 voxels);
  (c) ellipse, Comp2Comp-style: on the axial slice at the body's mid-height, an ellipse centred on the slice's body
      centroid with semi-axes ``ELLIPSE_SEMI_AXIS_FRACTION`` of the body's left-right and antero-posterior extents
      on that slice, intersected with the body.
  L1 of this case holds a dense focus (up to ~770 HU on its 3 mm grid, in the upper anterior body) that all three
  readings include. ``without_dense`` gives the same readings less the voxels within ``DENSE_CLEARANCE_MM`` of a
  voxel of the readings above ``DENSE_RAW_HU`` (raw HU, no smoothing): the reference for an ROI that cuts such a
  focus out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt
from scipy import ndimage

from service.domain.volume import CTVolume
from service.segmentation.geometry import CanonicalFrame, canonical_frame

TPTBOX_L3 = 22
TPTBOX_BODY_INTERIOR = 50
TS_L1 = 31
BODY_ANTERIOR_FRACTION = 0.45
INSET_MM = 3.0
ELLIPSE_SEMI_AXIS_FRACTION = 0.3
"""Semi-axes 30 % of the body's extents: an oval over the central ~60 % of the body, clear of the cortex."""
DENSE_RAW_HU = 500.0
"""Above any trabecular bone (adults rarely exceed 300 HU); bone islands read > 885 HU (Ulano 2016)."""
DENSE_CLEARANCE_MM = 3.0


@dataclass(frozen=True, eq=False)
class ReferenceReading:
    """One reference ROI on the native CT grid and its mean HU."""

    name: str
    mask: npt.NDArray[np.bool_]
    hu_mean: float


@dataclass(frozen=True, eq=False)
class CaseReference:
    """The reference value of a case (one reading, or the median of several) and its readings."""

    case: str
    level_name: str
    hu: float
    readings: tuple[ReferenceReading, ...]
    rule: str


def load_labels(path: Path, volume: CTVolume) -> npt.NDArray[np.int16]:
    """A label file on the CT's grid; the shared cases store labels on the CT's own grid, which is checked."""
    img = nib.load(str(path))
    lab = np.asarray(img.dataobj).astype(np.int16)
    affine_lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(img.affine, dtype=np.float64)
    if lab.shape != volume.shape or not np.allclose(affine_lps, volume.affine_lps, atol=1e-3):
        raise ValueError(f"{path}: labels are not on the CT grid ({lab.shape} vs {volume.shape})")
    return lab


def _reading(name: str, mask_c: npt.NDArray[np.bool_], hu_c: npt.NDArray[np.floating], frame: CanonicalFrame,
             native_shape: tuple[int, int, int]) -> ReferenceReading:
    if not mask_c.any():
        raise ValueError(f"reference reading {name!r} is empty")
    native = np.ascontiguousarray(frame.to_native(mask_c))
    if native.shape != native_shape:
        raise ValueError(f"reading {name!r}: shape {native.shape} differs from the CT {native_shape}")
    return ReferenceReading(name=name, mask=native, hu_mean=float(hu_c[mask_c].mean()))


def tptbox_reference(volume: CTVolume, vertebra_labels: npt.NDArray[np.integer],
                     subregion_labels: npt.NDArray[np.integer]) -> CaseReference:
    frame = canonical_frame(volume.affine_lps, volume.shape)
    interior = frame.to_canonical((subregion_labels == TPTBOX_BODY_INTERIOR) & (vertebra_labels == TPTBOX_L3))
    reading = _reading("subregion 50 in L3", interior, frame.to_canonical(volume.hu), frame, volume.shape)
    return CaseReference("tptbox_l3_crop", "L3", reading.hu_mean, (reading,),
                         "mean HU of subregion 50 (body interior) inside VerSe label 22")


def anterior_body(vertebra_c: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """The anterior ``BODY_ANTERIOR_FRACTION`` of a canonical vertebra mask's antero-posterior (axis 1) extent."""
    ys = np.nonzero(vertebra_c.any(axis=(0, 2)))[0]
    cut = ys.min() + BODY_ANTERIOR_FRACTION * (ys.max() - ys.min() + 1)
    y = np.arange(vertebra_c.shape[1])[None, :, None]
    return vertebra_c & (y < cut)


def _edt_reading(body: npt.NDArray[np.bool_], spacing: tuple[float, float, float]) -> npt.NDArray[np.bool_]:
    edt = ndimage.distance_transform_edt(np.pad(body, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    return body & (edt > INSET_MM)


def _box_reading(body: npt.NDArray[np.bool_], spacing: tuple[float, float, float]) -> npt.NDArray[np.bool_]:
    radii = [round(INSET_MM / s) for s in spacing]
    pad = max(radii) + 1
    box = np.ones([2 * r + 1 for r in radii], dtype=bool)
    eroded = ndimage.binary_erosion(np.pad(body, pad), structure=box)
    return eroded[pad:-pad, pad:-pad, pad:-pad]


def _ellipse_reading(body: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    zs = np.nonzero(body.any(axis=(0, 1)))[0]
    z_mid = round(0.5 * (zs.min() + zs.max()))
    sl = body[:, :, z_mid]
    xs, ys = np.nonzero(sl)
    ax = ELLIPSE_SEMI_AXIS_FRACTION * (xs.max() - xs.min() + 1)
    ay = ELLIPSE_SEMI_AXIS_FRACTION * (ys.max() - ys.min() + 1)
    gx, gy = np.meshgrid(np.arange(sl.shape[0]), np.arange(sl.shape[1]), indexing="ij")
    out = np.zeros_like(body)
    out[:, :, z_mid] = sl & (((gx - xs.mean()) / ax) ** 2 + ((gy - ys.mean()) / ay) ** 2 <= 1.0)
    return out


def totalseg_l1_reference(volume: CTVolume, totalseg_labels: npt.NDArray[np.integer]) -> CaseReference:
    frame = canonical_frame(volume.affine_lps, volume.shape)
    hu_c = frame.to_canonical(volume.hu)
    body = anterior_body(frame.to_canonical(totalseg_labels == TS_L1))
    sp = frame.spacing_mm
    readings = (
        _reading("EDT > 3 mm", _edt_reading(body, sp), hu_c, frame, volume.shape),
        _reading("3 mm box erosion", _box_reading(body, sp), hu_c, frame, volume.shape),
        _reading("mid-height ellipse", _ellipse_reading(body), hu_c, frame, volume.shape),
    )
    return CaseReference("ts_abdomen_t11_l2", "L1", float(np.median([r.hu_mean for r in readings])), readings,
                         "median of EDT > 3 mm, 3 mm box erosion and mid-height ellipse of the anterior 45 % of "
                         "TotalSegmentator L1")


def without_dense(reference: CaseReference, volume: CTVolume) -> CaseReference:
    """The same readings less the voxels within DENSE_CLEARANCE_MM of a voxel of any reading above DENSE_RAW_HU;
    the reference itself when there is none."""
    union = np.logical_or.reduce([r.mask for r in reference.readings])
    dense = union & (volume.hu > DENSE_RAW_HU)
    if not dense.any():
        return reference
    near = ndimage.distance_transform_edt(~dense, sampling=volume.spacing_mm) <= DENSE_CLEARANCE_MM
    readings = []
    for r in reference.readings:
        mask = r.mask & ~near
        if not mask.any():
            raise ValueError(f"reading {r.name!r} is empty without the dense focus")
        readings.append(ReferenceReading(r.name, mask, float(volume.hu[mask].mean())))
    return CaseReference(reference.case, reference.level_name, float(np.median([r.hu_mean for r in readings])),
                         tuple(readings), f"{reference.rule}, less voxels within {DENSE_CLEARANCE_MM:g} mm of "
                                          f"{int(np.count_nonzero(dense))} voxels > {DENSE_RAW_HU:g} HU")
