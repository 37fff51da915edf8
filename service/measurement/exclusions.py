"""Checks that make a level non-evaluable from its HU (metal / cement, diffuse sclerosis, ROI too small), and the
removal of a focal dense island from the trabecular ROI.

Dense voxels: after 1 mm Gaussian smoothing, ROI voxels above ``max(sclerosis_hu, ROI median + k * noise SD)``, the
noise SD being this scan's, measured in fat and muscle near the body on the same smoothed image (noise.py), and
``k = SCLEROSIS_NOISE_K``. Connected dense parts of at least ``ISLAND_MIN_MM3`` are foci:
- focal (at most ``MAX_ISLANDS`` foci, scattered dense voxels outside them <= ``sclerosis_max_fraction`` of the ROI):
  the foci, grown by ``ISLAND_MARGIN_MM`` (at least one voxel), are cut out of the ROI and the rest is measured,
  when what remains is at least the minimum ROI volume and ``MIN_REMAINING_FRACTION`` of the ROI; the cut is recorded
  ("bone island 45 mm3 removed from ROI"; a focus whose dense region runs on outside the ROI, mostly outside it or
  to the body's outer voxel layer, is "continuous with the cortex or endplate": a blocky mask's cortex remnant or
  an endplate; it is kept in the ROI, not cut and not counted as scattered, as the reference readings of issue 15
  keep it);
- otherwise the level is excluded as sclerosis (diffuse or multifocal dense bone, or too little ROI left).
``check_roi`` returns the (possibly trimmed) ROI; ``hu_exclusion`` (the older entry point, which cannot hand a
trimmed ROI back) excludes a level whenever ``check_roi`` would have cut a focus.

Fracture (heights) lives in fracture.py; level uncertainty and field-of-view cuts come from the segmentation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from service.domain.results import ExclusionReason
from service.domain.volume import CTVolume, mm_to_voxels
from service.measurement.geometry import CroppedMask
from service.measurement.noise import NoiseEstimate, noise_sd
from service.measurement.roi import ellipsoid_structure

METAL_HU = 2000.0
"""Cortical bone stays below ~1800 HU even with sharp kernels; pedicle screws, cement (PMMA with barium or
zirconia) and other metal exceed ~2000-3000 HU. Voxels above this in or near the body mean metal or cement."""
METAL_MARGIN_MM = 3.0
"""How far around the body mask metal still counts (cement leaks, screw tips at the cortex)."""
METAL_MIN_VOLUME_MM3 = 5.0
"""At least this much metal-dense material (so an isolated noisy voxel does not exclude a level)."""
SCLEROSIS_HU = 500.0
"""Trabecular bone of adults rarely exceeds 300 HU; bone islands (enostoses) have mean attenuation > 885 HU
(Ulano et al., AJR 2016) and sclerotic metastases several hundred HU.
500 HU after 1 mm smoothing marks a dense focus."""
SCLEROSIS_SMOOTHING_MM = 1.0
"""Gaussian sigma applied before the tail count, so voxel noise of low-dose sharp-kernel scans is not counted."""
SCLEROSIS_MAX_FRACTION = 0.05
"""More than 5 % of the ROI above SCLEROSIS_HU (smoothed) makes the mean unrepresentative of trabecular bone."""
SCLEROSIS_MIN_FOCUS_MM3 = 30.0
"""The former rule's focus size (a ~3.9 mm sphere), kept for ``dense_focus`` users; no longer a cut-off."""
SCLEROSIS_NOISE_K = 5.0
"""Dense = more than 5 noise SDs above the ROI's median (Rose criterion: a feature needs a contrast-to-noise ratio of
about 5 to be seen reliably). Gaussian noise exceeds 5 SD in 3e-7 of voxels, so on a sharp-kernel or low-dose scan
noise alone cannot make the dense tail, while a bone island (> 885 HU, Ulano 2016) stays far above it."""
ISLAND_MIN_MM3 = 10.0
"""A connected dense part of at least this volume (a ~2.7 mm sphere) is a focus and is cut out: a 10 mm3 focus of
1000 HU in a 1000 mm3 ROI raises its mean by ~9 HU. Smaller dense specks are counted as scattered density."""
MAX_ISLANDS = 3
"""More separate foci than this is a multifocal (sclerotic, metastatic) pattern, not an incidental bone island."""
ISLAND_MARGIN_MM = 2.0
"""The cut grows each focus by 2 mm (at least one voxel per axis): its partial-volume and smoothing halo."""
SURFACE_REACH_MM = 6.0
"""How far beyond the ROI a focus's dense region is followed to see whether it joins the body's surface (the ROI
lies 3 mm plus up to one slice inside the body)."""
MIN_REMAINING_FRACTION = 0.5
"""A cut that leaves less than half the ROI leaves a sample of an unrepresentative part of the body: excluded."""
DEFAULT_MIN_ROI_VOLUME_MM3 = 500.0
"""A QCT trabecular VOI is typically 1-3 cm3 (Pan 2020's 9 mm cylinder is ~3 cm3); below 0.5 cm3 the mean is
dominated by partial volume and noise."""
MIN_ROI_VOXELS = 20


@dataclass(frozen=True)
class Exclusion:
    reason: ExclusionReason
    detail: str


def metal_volume_mm3(volume: CTVolume, body: CroppedMask, margin_mm: float = METAL_MARGIN_MM,
                     threshold_hu: float = METAL_HU) -> float:
    """Volume of voxels above ``threshold_hu`` inside the body dilated by ``margin_mm``."""
    radii = mm_to_voxels(margin_mm, volume.spacing_mm)
    grown = body.padded(radii, volume.shape)
    mask = grown.mask
    if max(radii) > 0:
        mask = ndimage.binary_dilation(mask, structure=ellipsoid_structure(radii))
    values = volume.hu[grown.slices][mask]
    return float(np.count_nonzero(values > threshold_hu)) * volume.voxel_volume_mm3


def sclerosis_fraction(volume: CTVolume, roi: CroppedMask, threshold_hu: float = SCLEROSIS_HU,
                       smoothing_mm: float = SCLEROSIS_SMOOTHING_MM) -> float:
    """Fraction of ROI voxels whose Gaussian-smoothed HU exceeds ``threshold_hu`` (0 for an empty ROI)."""
    return dense_focus(volume, roi, threshold_hu, smoothing_mm)[0]


def dense_focus(volume: CTVolume, roi: CroppedMask, threshold_hu: float = SCLEROSIS_HU,
                smoothing_mm: float = SCLEROSIS_SMOOTHING_MM) -> tuple[float, float, float]:
    """(fraction of ROI voxels above ``threshold_hu`` after smoothing, volume mm3 of the largest connected dense
    focus, the shift of the ROI mean HU all dense voxels cause)."""
    n = roi.voxel_count
    if n == 0:
        return 0.0, 0.0, 0.0
    # sigma in voxels per axis (a float filter width, not a voxel count, so mm_to_voxels' rounding is not wanted).
    sigma = tuple(smoothing_mm / s for s in volume.spacing_mm)
    margin = tuple(int(np.ceil(3 * s)) for s in sigma)
    grown = roi.padded(margin, volume.shape)  # type: ignore[arg-type]
    raw = volume.hu[grown.slices].astype(np.float32)
    smoothed = ndimage.gaussian_filter(raw, sigma=sigma, mode="nearest")
    dense_grid = (smoothed > threshold_hu) & grown.mask
    dense = dense_grid[grown.mask]
    k = int(np.count_nonzero(dense))
    values = raw[grown.mask]
    shift = float(values.mean() - values[~dense].mean()) if 0 < k < n else 0.0
    largest = 0
    if k:
        lab, count = ndimage.label(dense_grid, structure=np.ones((3, 3, 3), dtype=bool))
        largest = int(np.max(np.bincount(lab.ravel())[1:])) if count else 0
    return k / n, largest * volume.voxel_volume_mm3, shift



@dataclass(frozen=True, eq=False)
class RoiCheck:
    """What ``check_roi`` decided: an exclusion (or None), the ROI to measure, and a note of what was cut."""

    exclusion: Exclusion | None
    roi: CroppedMask
    """The ROI to measure: the input ROI less any cut focus (the input itself when nothing was cut)."""
    note: str | None = None
    """E.g. "bone island 45 mm3 removed from ROI ..."; None when nothing was cut."""
    dense_threshold_hu: float | None = None
    noise: NoiseEstimate | None = None


@dataclass(frozen=True, eq=False)
class _DenseFoci:
    threshold_hu: float
    dense_fraction: float
    scattered_fraction: float
    foci: tuple[tuple[float, bool], ...]
    """(volume mm3, continuous with the body's surface) per focus, largest first."""
    cut: CroppedMask
    """The foci grown by the margin, on the ROI's crop."""


def _on_crop(mask: CroppedMask, crop: CroppedMask) -> npt.NDArray[np.bool_]:
    """``mask`` on ``crop``'s grid (False where it does not reach)."""
    out = np.zeros(crop.mask.shape, dtype=bool)
    lo = [max(a, b) for a, b in zip(mask.offset, crop.offset, strict=True)]
    hi = [min(a + n, b + m) for a, n, b, m in zip(mask.offset, mask.mask.shape, crop.offset, crop.mask.shape,
                                                  strict=True)]
    if any(h <= low for low, h in zip(lo, hi, strict=True)):
        return out
    dst = tuple(slice(low - o, h - o) for low, h, o in zip(lo, hi, crop.offset, strict=True))
    src = tuple(slice(low - o, h - o) for low, h, o in zip(lo, hi, mask.offset, strict=True))
    out[dst] = mask.mask[src]
    return out


def _dense_foci(volume: CTVolume, body: CroppedMask, roi: CroppedMask, sclerosis_hu: float,
                noise: NoiseEstimate | None, noise_k: float) -> _DenseFoci:
    sigma = tuple(SCLEROSIS_SMOOTHING_MM / s for s in volume.spacing_mm)
    reach = mm_to_voxels(SURFACE_REACH_MM, volume.spacing_mm)
    margin = tuple(max(int(np.ceil(3 * s)), r + 1) for s, r in zip(sigma, reach, strict=True))
    grown = roi.padded(margin, volume.shape)  # type: ignore[arg-type]
    smoothed = ndimage.gaussian_filter(volume.hu[grown.slices].astype(np.float32), sigma=sigma, mode="nearest")
    inside = grown.mask
    median = float(np.median(smoothed[inside]))
    threshold = sclerosis_hu if noise is None else max(sclerosis_hu, median + noise_k * noise.sd_hu)
    cube = np.ones((3, 3, 3), dtype=bool)
    dense_all = smoothed > threshold
    dense = dense_all & inside
    n = int(np.count_nonzero(inside))
    lab, count = ndimage.label(dense, structure=cube)
    sizes = np.bincount(lab.ravel(), minlength=count + 1)
    # a focus whose dense region runs on outside the ROI (followed up to SURFACE_REACH_MM), with more of it outside
    # than inside, or to the body's outer voxel layer, is cortex or endplate rather than an island within the bone
    lab_all, count_all = ndimage.label(dense_all, structure=cube)
    outside = np.bincount(lab_all[dense_all & ~inside], minlength=count_all + 1)
    within = np.bincount(lab_all[dense], minlength=count_all + 1)
    surface = ~ndimage.binary_erosion(_on_crop(body, grown), structure=cube, border_value=0)
    at_surface = set(np.unique(lab_all[dense_all & surface]).tolist()) | set(np.nonzero(outside > within)[0].tolist())
    at_surface.discard(0)
    foci: list[tuple[float, bool]] = []
    focus_mask = np.zeros_like(dense)
    kept = np.zeros_like(dense)
    for label in np.argsort(sizes[1:])[::-1] + 1:
        volume_mm3 = float(sizes[label]) * volume.voxel_volume_mm3
        if volume_mm3 < ISLAND_MIN_MM3:
            break
        part = lab == label
        if at_surface & set(np.unique(lab_all[part]).tolist()):
            # dense bone continuous with the cortex or an endplate is part of the body the QCT reference readings
            # measure (ts_abdomen_t11_l2 L1: cutting it moved the ROI 14 HU away from them): kept, not cut
            kept |= part
            continue
        focus_mask |= part
        foci.append((volume_mm3, False))
    scattered = int(np.count_nonzero(dense & ~focus_mask & ~kept))
    radii = tuple(max(1, r) for r in mm_to_voxels(ISLAND_MARGIN_MM, volume.spacing_mm))
    cut = ndimage.binary_dilation(focus_mask, structure=ellipsoid_structure(radii)) if foci else focus_mask  # type: ignore[arg-type]
    lo = tuple(r - g for r, g in zip(roi.offset, grown.offset, strict=True))
    inner = tuple(slice(a, a + m) for a, m in zip(lo, roi.mask.shape, strict=True))
    return _DenseFoci(threshold_hu=threshold, dense_fraction=np.count_nonzero(dense) / n if n else 0.0,
                      scattered_fraction=scattered / n if n else 0.0, foci=tuple(foci),
                      cut=CroppedMask(offset=roi.offset, mask=np.ascontiguousarray(cut[inner] & roi.mask)))


def _foci_text(foci: tuple[tuple[float, bool], ...]) -> str:
    parts = [f"{'dense focus continuous with the cortex or endplate' if at_surface else 'bone island'} {v:.0f} mm3"
             for v, at_surface in foci]
    return ", ".join(parts)


def check_roi(
    volume: CTVolume,
    body: CroppedMask,
    roi: CroppedMask,
    min_roi_volume_mm3: float = DEFAULT_MIN_ROI_VOLUME_MM3,
    metal_hu: float = METAL_HU,
    sclerosis_hu: float = SCLEROSIS_HU,
    sclerosis_max_fraction: float = SCLEROSIS_MAX_FRACTION,
    noise: NoiseEstimate | None = None,
    noise_k: float = SCLEROSIS_NOISE_K,
) -> RoiCheck:
    """Metal, ROI too small, then dense bone judged against this scan's noise (see the module doc).

    ``noise`` is measured around ``body`` on the 1 mm-smoothed image when not given (None there: the fixed
    ``sclerosis_hu`` alone)."""
    metal = metal_volume_mm3(volume, body, threshold_hu=metal_hu)
    if metal >= METAL_MIN_VOLUME_MM3:
        return RoiCheck(Exclusion(ExclusionReason.METAL, f"{metal:.0f} mm3 above {metal_hu:.0f} HU in or within "
                                                         f"{METAL_MARGIN_MM:g} mm of the body (metal or cement)"), roi)
    too_small = _too_small(volume, roi, min_roi_volume_mm3)
    if too_small is not None:
        return RoiCheck(too_small, roi)
    if noise is None:
        noise = noise_sd(volume, body, smoothing_mm=SCLEROSIS_SMOOTHING_MM)
    found = _dense_foci(volume, body, roi, sclerosis_hu, noise, noise_k)
    noise_text = f"noise SD {noise.sd_hu:.0f} HU" if noise is not None else "noise not measurable"
    where = f"dense = above {found.threshold_hu:.0f} HU after 1 mm smoothing ({noise_text})"
    if found.scattered_fraction > sclerosis_max_fraction or len(found.foci) > MAX_ISLANDS:
        detail = (f"{100 * found.dense_fraction:.1f} % of the ROI dense in {len(found.foci)} foci and "
                  f"{100 * found.scattered_fraction:.1f} % scattered; {where} (diffuse or multifocal sclerosis)")
        return RoiCheck(Exclusion(ExclusionReason.SCLEROSIS, detail), roi, None, found.threshold_hu, noise)
    if not found.foci:
        return RoiCheck(None, roi, None, found.threshold_hu, noise)
    trimmed = CroppedMask(offset=roi.offset, mask=roi.mask & ~found.cut.mask)
    before = roi.voxel_count * volume.voxel_volume_mm3
    after = trimmed.voxel_count * volume.voxel_volume_mm3
    note = (f"{_foci_text(found.foci)} removed from ROI with a {ISLAND_MARGIN_MM:g} mm margin "
            f"(ROI {before:.0f} -> {after:.0f} mm3; {where})")
    if after < max(min_roi_volume_mm3, MIN_REMAINING_FRACTION * before) or trimmed.voxel_count < MIN_ROI_VOXELS:
        detail = (f"{_foci_text(found.foci)}: too little ROI left after the cut ({after:.0f} of {before:.0f} mm3); "
                  f"{where}")
        return RoiCheck(Exclusion(ExclusionReason.SCLEROSIS, detail), roi, None, found.threshold_hu, noise)
    return RoiCheck(None, trimmed, note, found.threshold_hu, noise)


def _too_small(volume: CTVolume, roi: CroppedMask, min_roi_volume_mm3: float) -> Exclusion | None:
    roi_volume = roi.voxel_count * volume.voxel_volume_mm3
    if roi_volume < min_roi_volume_mm3 or roi.voxel_count < MIN_ROI_VOXELS:
        return Exclusion(ExclusionReason.ROI_TOO_SMALL, f"trabecular ROI {roi_volume:.0f} mm3 ({roi.voxel_count} "
                                                        f"voxels) < {min_roi_volume_mm3:.0f} mm3")
    return None


def hu_exclusion(
    volume: CTVolume,
    body: CroppedMask,
    roi: CroppedMask,
    min_roi_volume_mm3: float = DEFAULT_MIN_ROI_VOLUME_MM3,
    metal_hu: float = METAL_HU,
    sclerosis_hu: float = SCLEROSIS_HU,
    sclerosis_max_fraction: float = SCLEROSIS_MAX_FRACTION,
) -> Exclusion | None:
    """``check_roi``'s exclusion; a focus that ``check_roi`` would cut excludes the level here, since this caller
    measures the untrimmed ROI (use ``check_roi`` and measure its ROI instead)."""
    check = check_roi(volume, body, roi, min_roi_volume_mm3=min_roi_volume_mm3, metal_hu=metal_hu,
                      sclerosis_hu=sclerosis_hu, sclerosis_max_fraction=sclerosis_max_fraction)
    if check.exclusion is not None or check.note is None:
        return check.exclusion
    _, focus_mm3, shift = dense_focus(volume, roi, threshold_hu=check.dense_threshold_hu or sclerosis_hu)
    return Exclusion(ExclusionReason.SCLEROSIS, f"largest dense focus {focus_mm3:.0f} mm3, raising the mean by "
                                                f"{shift:.1f} HU; {check.note} (not measured: this caller cannot "
                                                f"use the trimmed ROI)")
