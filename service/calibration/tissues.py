"""Automatic sampling of the patient's reference tissues on a few axial slices through the labelled vertebrae.

On each sampled slice (the slice through a vertebral centroid, up to ``MAX_SLICES``):
- the body outline: Gaussian-smoothed HU (sigma 1.5 mm) > -500, holes (lungs, bowel gas) filled, largest part;
- air: raw HU of voxels 5-30 mm outside the skin, above -1024 and up to -500 (reconstruction padding, clipped
  values and most of the table excluded); the estimate is the histogram mode (clipping at -1024 biases a mean);
- subcutaneous fat: smoothed HU of voxels 2-25 mm inside the skin, within -250..-30, keeping the flattest 30 %
  (lowest gradient: away from the partial-volume edges of thin layers); the estimate is the mode;
- paraspinal muscle: smoothed HU in a box 30-80 mm posterior and 8-50 mm lateral of the vertebral centroid, away
  from bone labels, within -10..110, the flattest 30 %; the mode;
- aorta / blood: the most homogeneous 6 mm-radius disc (lowest local SD of raw HU) in the region anterior and left
  of the vertebral body, away from bone: with a local mean in 0..100 HU it is the unenhanced blood sample
  (in non-contrast CT aorta, heart and crura all measure 35-55 HU and cannot be told apart by HU; the sample is
  the homogeneous soft tissue where the aorta lies), with a mean in 130..700 HU an iodine-enhanced vessel.
Per-slice values are combined by the median over slices.

Padding outside the reconstruction circle (-2000, -3024 HU and the like: anything below ``PADDING_BELOW_HU``, which
no tissue and no air reads) is not a measurement: it is read as air (-1000) before smoothing, so its extreme value
cannot drag the smoothed body edge, and where the circle cuts the body (padding within ``AIR_DISTANCE_MM[0]`` of the
outline) the cut is not skin: the fat ring leaves out ``FAT_DEPTH_MM[1]`` around it, muscle and aorta
``PADDING_CLEARANCE_MM``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from service.domain.segmentation import SpineSegmentation
from service.domain.volume import CTVolume

logger = logging.getLogger(__name__)

MAX_SLICES = 12
SMOOTHING_MM = 1.5
BODY_THRESHOLD_HU = -500.0
AIR_DISTANCE_MM = (5.0, 30.0)
AIR_RANGE_HU = (-1023.5, -500.0)
"""Exclusive lower end: -1024 is the padding outside the reconstruction circle and the clipping value of the
common 12-bit storage (RescaleIntercept -1024), not a measurement."""
FAT_DEPTH_MM = (2.0, 25.0)
FAT_RANGE_HU = (-250.0, -30.0)
PLATEAU_FRACTION = 0.3
MUSCLE_POSTERIOR_MM = (30.0, 80.0)
MUSCLE_LATERAL_MM = (8.0, 50.0)
MUSCLE_RANGE_HU = (-10.0, 110.0)
AORTA_ANTERIOR_MM = (0.0, 60.0)
AORTA_LEFT_MM = (-5.0, 50.0)
"""Relative to the vertebral centroid: the descending and abdominal aorta run anterior and to the left of the
vertebral bodies; the box leaves out the liver, IVC and right crus on the right."""
AORTA_DISC_RADIUS_MM = 6.0
BONE_CLEARANCE_MM = 4.0
BLOOD_RANGE_HU = (0.0, 100.0)
ENHANCED_RANGE_HU = (130.0, 700.0)
BONE_SMOOTHED_HU = 350.0
PADDING_BELOW_HU = -1100.0
"""Below air by far more than noise: reconstruction padding (or a vendor's fill value), never a tissue sample."""
PADDING_FILL_HU = -1000.0
PADDING_CLEARANCE_MM = 5.0
MIN_SAMPLES = 30


@dataclass(frozen=True)
class TissueSurvey:
    """Estimated HU of the reference tissues (None when not found) and what was seen of the aorta."""

    air_hu: float | None
    fat_hu: float | None
    muscle_hu: float | None
    blood_hu: float | None
    """Unenhanced blood / homogeneous soft tissue at the aorta's position."""
    enhanced_vessel_hu: float | None
    """Median local mean of an iodine-bright homogeneous disc, on the slices where one was found."""
    enhanced_fraction: float
    """Fraction of sampled slices with an iodine-bright homogeneous disc near the aorta's position."""
    n_slices: int
    notes: tuple[str, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, float | None]:
        return {"air": self.air_hu, "fat": self.fat_hu, "muscle": self.muscle_hu, "blood": self.blood_hu}


def _mode(values: npt.NDArray[np.float64], lo: float, hi: float) -> float | None:
    if values.size < MIN_SAMPLES:
        return None
    bins = np.arange(lo, hi + 1.0, 1.0)
    hist, edges = np.histogram(values, bins=bins)
    smooth = ndimage.gaussian_filter1d(hist.astype(np.float64), sigma=3.0)
    k = int(np.argmax(smooth))
    # refine: mean of the values within +-10 HU of the peak (sub-bin precision, less sensitive to binning)
    centre = 0.5 * (edges[k] + edges[k + 1])
    near = values[np.abs(values - centre) <= 10.0]
    return float(near.mean()) if near.size else float(centre)


def _slice_indices(volume: CTVolume, segmentation: SpineSegmentation, axis: int) -> list[tuple[int, np.ndarray]]:
    """(slice index along ``axis``, vertebral centroid LPS) for up to MAX_SLICES vertebrae, spread evenly."""
    items = []
    for v in segmentation.vertebrae:
        idx = volume.lps_to_index(np.asarray(v.centroid_lps_mm))
        k = round(float(idx[axis]))
        if 0 <= k < volume.shape[axis]:
            items.append((k, np.asarray(v.centroid_lps_mm, dtype=np.float64)))
    if len(items) > MAX_SLICES:
        pick = np.linspace(0, len(items) - 1, MAX_SLICES).round().astype(int)
        items = [items[i] for i in sorted(set(pick.tolist()))]
    return items


def _largest_component(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    lab, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = ndimage.sum_labels(mask, lab, index=np.arange(1, n + 1))
    return lab == (int(np.argmax(sizes)) + 1)


@dataclass(frozen=True, eq=False)
class _SliceGeometry:
    """The sampled slices' plane: axis across it, in-plane spacing, smoothing and filter sizes, LPS of slice 0."""

    axis: int
    sp2: tuple[float, float]
    sigma: tuple[float, float]
    lps0: npt.NDArray[np.float64]
    """LPS of the in-plane grid at slice 0; other slices differ by a constant offset along the slice direction."""
    slice_step: npt.NDArray[np.float64]
    disc_px: tuple[int, int]
    clearance_px: tuple[int, int]

    @staticmethod
    def of(volume: CTVolume) -> _SliceGeometry:
        axis, _ = volume.superior_axis()
        in_plane = [a for a in range(3) if a != axis]
        spacing = volume.spacing_mm
        sp2 = (spacing[in_plane[0]], spacing[in_plane[1]])
        n0, n1 = volume.shape[in_plane[0]], volume.shape[in_plane[1]]
        g0, g1 = np.meshgrid(np.arange(n0), np.arange(n1), indexing="ij")
        grid = np.zeros((n0, n1, 3))
        grid[..., in_plane[0]] = g0
        grid[..., in_plane[1]] = g1
        return _SliceGeometry(
            axis=axis, sp2=sp2, sigma=(SMOOTHING_MM / sp2[0], SMOOTHING_MM / sp2[1]),
            lps0=volume.index_to_lps(grid), slice_step=volume.affine_lps[:3, axis],
            disc_px=(max(1, round(2 * AORTA_DISC_RADIUS_MM / sp2[0])),
                     max(1, round(2 * AORTA_DISC_RADIUS_MM / sp2[1]))),
            clearance_px=(max(1, round((AORTA_DISC_RADIUS_MM + BONE_CLEARANCE_MM) / sp2[0])),
                          max(1, round((AORTA_DISC_RADIUS_MM + BONE_CLEARANCE_MM) / sp2[1]))),
        )


@dataclass(frozen=True, eq=False)
class _SliceSample:
    """What one slice gave: candidate HU of air, fat and muscle, and the aorta discs' local means (or None)."""

    air: npt.NDArray[np.float64]
    fat: npt.NDArray[np.float64]
    muscle: npt.NDArray[np.float64]
    blood: float | None
    bright: float | None


def survey_tissues(volume: CTVolume, segmentation: SpineSegmentation) -> TissueSurvey:
    """Sample air, fat, muscle and aorta (see module doc)."""
    geo = _SliceGeometry.of(volume)
    slices = _slice_indices(volume, segmentation, geo.axis)
    samples = [s for s in (_sample_slice(volume, segmentation, geo, k, c) for k, c in slices) if s is not None]
    air_vals = [s.air for s in samples]
    fat_vals = [s.fat for s in samples]
    muscle_vals = [s.muscle for s in samples]
    blood_vals = [s.blood for s in samples if s.blood is not None]
    bright_vals = [s.bright for s in samples if s.bright is not None]
    n = len(slices)
    fat_all = np.concatenate(fat_vals) if fat_vals else np.zeros(0)
    muscle_all = np.concatenate(muscle_vals) if muscle_vals else np.zeros(0)
    survey = TissueSurvey(
        air_hu=_mode(np.concatenate(air_vals) if air_vals else np.zeros(0), -1024.0, AIR_RANGE_HU[1]),
        fat_hu=_mode(fat_all, *FAT_RANGE_HU),
        muscle_hu=_mode(muscle_all, *MUSCLE_RANGE_HU),
        blood_hu=float(np.median(blood_vals)) if blood_vals else None,
        enhanced_vessel_hu=float(np.median(bright_vals)) if bright_vals else None,
        enhanced_fraction=(len(bright_vals) / n) if n else 0.0,
        n_slices=n,
    )
    logger.debug("tissue survey: %s", survey)
    return survey


def _sample_slice(volume: CTVolume, segmentation: SpineSegmentation, geo: _SliceGeometry, k: int,
                  centroid: npt.NDArray[np.float64]) -> _SliceSample | None:
    """Samples of slice ``k`` through a vertebral centroid; None when the body outline is too small."""
    raw = np.take(volume.hu, k, axis=geo.axis).astype(np.float32)
    padding = raw < PADDING_BELOW_HU
    if np.any(padding):
        raw = np.where(padding, np.float32(PADDING_FILL_HU), raw)
    smooth = ndimage.gaussian_filter(raw, sigma=geo.sigma, mode="nearest")
    body = _largest_component(ndimage.binary_fill_holes(smooth > BODY_THRESHOLD_HU))
    if body.sum() < 100:
        return None
    d_in = ndimage.distance_transform_edt(body, sampling=geo.sp2)
    d_out = ndimage.distance_transform_edt(~body, sampling=geo.sp2)
    ring_out = (d_out >= AIR_DISTANCE_MM[0]) & (d_out <= AIR_DISTANCE_MM[1]) & ~padding
    air = raw[ring_out & (raw > AIR_RANGE_HU[0]) & (raw <= AIR_RANGE_HU[1])]
    ring_in = (d_in >= FAT_DEPTH_MM[0]) & (d_in <= FAT_DEPTH_MM[1])
    near_padding = np.zeros_like(padding)
    if np.any(padding):
        to_padding = ndimage.distance_transform_edt(~padding, sampling=geo.sp2)
        near_padding = to_padding <= PADDING_CLEARANCE_MM
        cut = padding & (d_out <= AIR_DISTANCE_MM[0])
        if np.any(cut):  # the circle cuts the body: its edge there is no skin
            ring_in &= ndimage.distance_transform_edt(~cut, sampling=geo.sp2) > FAT_DEPTH_MM[1]
    fat_sel = ring_in & (smooth >= FAT_RANGE_HU[0]) & (smooth <= FAT_RANGE_HU[1])
    if np.count_nonzero(fat_sel) >= MIN_SAMPLES:
        # plateau only: the flattest PLATEAU_FRACTION of the candidates (thin layers are blurred with skin and
        # muscle at their edges, which would pull the estimate towards soft tissue)
        grad = np.hypot(*np.gradient(smooth, *geo.sp2))
        g = grad[fat_sel]
        fat_sel &= grad <= np.quantile(g, PLATEAU_FRACTION)

    lps = geo.lps0 + k * geo.slice_step
    posterior_mm = lps[..., 1] - centroid[1]  # +P
    left_mm = lps[..., 0] - centroid[0]  # +L
    labels2d = np.take(segmentation.body_labels, k, axis=geo.axis) > 0
    if segmentation.posterior_mask is not None:
        labels2d |= np.take(segmentation.posterior_mask, k, axis=geo.axis)
    bone = labels2d | (smooth > BONE_SMOOTHED_HU)
    near_bone = ndimage.binary_dilation(
        bone, structure=np.ones((2 * geo.clearance_px[0] + 1, 2 * geo.clearance_px[1] + 1), dtype=bool))
    muscle_box = ((posterior_mm >= MUSCLE_POSTERIOR_MM[0]) & (posterior_mm <= MUSCLE_POSTERIOR_MM[1])
                  & (np.abs(left_mm) >= MUSCLE_LATERAL_MM[0]) & (np.abs(left_mm) <= MUSCLE_LATERAL_MM[1]))
    sel = muscle_box & body & (d_in > 5.0) & ~near_bone & ~near_padding
    sel &= (smooth >= MUSCLE_RANGE_HU[0]) & (smooth <= MUSCLE_RANGE_HU[1])
    if np.count_nonzero(sel) >= MIN_SAMPLES:
        grad = np.hypot(*np.gradient(smooth, *geo.sp2))
        sel &= grad <= np.quantile(grad[sel], PLATEAU_FRACTION)
    aorta_box = ((-posterior_mm >= AORTA_ANTERIOR_MM[0]) & (-posterior_mm <= AORTA_ANTERIOR_MM[1])
                 & (left_mm >= AORTA_LEFT_MM[0]) & (left_mm <= AORTA_LEFT_MM[1]))
    cand = aorta_box & body & (d_in > AORTA_DISC_RADIUS_MM + 5.0) & ~near_bone & ~near_padding
    blood, bright = _aorta_discs(raw, cand, geo.disc_px)
    return _SliceSample(air=air.astype(np.float64), fat=smooth[fat_sel].astype(np.float64),
                        muscle=smooth[sel].astype(np.float64), blood=blood, bright=bright)


def _aorta_discs(raw: npt.NDArray[np.float32], cand: npt.NDArray[np.bool_],
                 disc_px: tuple[int, int]) -> tuple[float | None, float | None]:
    """Local means of the most homogeneous candidate disc in the blood range and in the iodine range (the latter
    only when about as homogeneous as the soft one); None where there is none."""
    mean = ndimage.uniform_filter(raw.astype(np.float64), size=disc_px, mode="nearest")
    sq = ndimage.uniform_filter(raw.astype(np.float64) ** 2, size=disc_px, mode="nearest")
    sd = np.sqrt(np.maximum(sq - mean**2, 0.0))
    soft = cand & (mean >= BLOOD_RANGE_HU[0]) & (mean <= BLOOD_RANGE_HU[1])
    blood = None
    soft_sd = None
    if np.any(soft):
        i = np.argmin(np.where(soft, sd, np.inf))
        blood = float(mean.flat[i])
        soft_sd = float(sd.flat[i])
    bright = cand & (mean >= ENHANCED_RANGE_HU[0]) & (mean <= ENHANCED_RANGE_HU[1])
    if np.any(bright):
        i = np.argmin(np.where(bright, sd, np.inf))
        limit = max(40.0, 1.5 * soft_sd) if soft_sd is not None else 40.0
        if sd.flat[i] <= limit:
            return blood, float(mean.flat[i])
    return blood, None
