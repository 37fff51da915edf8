"""Trabecular ROI HU of the node against independent reference readings on the real cases in ../shared/data.

    python -m service.offline.evaluation.roi_accuracy [--data ../shared/data] [--out docs/measurement] [--no-png]

Issue 15, point 3. The segmenter is out of the loop: the body mask is the reference dataset's own vertebra label
(VerSe 22 = L3 of ``tptbox_l3_crop``; TotalSegmentator 31 = L1 of ``ts_abdomen_t11_l2``), cut to the vertebral body
the way the node's reference tooling cuts whole-vertebra labels (``body_split.split_body``: the part anterior to the
spinal canal). The ROI is ``trabecular_roi`` of each method (roi.py); then ``check_roi`` (exclusions.py) on the
default method, which may cut a dense focus out of the ROI. The references are in roi_reference.py, made without
roi.py. Printed per case: the reference, each method's ROI HU and its difference (target +-10 HU), and the checked
ROI's HU with its note. With ``--out`` an overlay PNG per case: ``roi_<case>.png`` (mid-sagittal and axial slice,
our ROI in cyan, the reference in yellow, what check_roi cut in red).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from service.domain.levels import VertebraLevel
from service.domain.results import RoiMethod
from service.domain.volume import CTVolume
from service.measurement.exclusions import RoiCheck, check_roi
from service.measurement.geometry import CroppedMask, crop_labels, mask_centroid_lps, vertebra_frame
from service.measurement.roi import trabecular_roi
from service.offline.evaluation.roi_reference import (
    CaseReference,
    load_labels,
    totalseg_l1_reference,
    tptbox_reference,
    without_dense,
)
from service.offline.evaluation.segmentation import load_ct
from service.segmentation import classes as cls
from service.segmentation.body_split import split_body
from service.segmentation.geometry import canonical_frame

REPO = Path(__file__).resolve().parents[3]
DEFAULT_DATA = REPO / ".." / "shared" / "data"
DEFAULT_OUT = REPO / "docs" / "measurement"
TARGET_HU = 10.0
CASES = ("tptbox_l3_crop", "ts_abdomen_t11_l2")


@dataclass(frozen=True, eq=False)
class CaseResult:
    reference: CaseReference
    dense_free: CaseReference
    """The reference less the voxels near a dense focus: what the checked (trimmed) ROI is compared with."""
    level: VertebraLevel
    volume: CTVolume
    body: CroppedMask
    roi_hu: dict[RoiMethod, float]
    rois: dict[RoiMethod, CroppedMask]
    check: RoiCheck

    @property
    def checked_hu(self) -> float | None:
        return float(self.check.roi.values(self.volume.hu).mean()) if self.check.roi.voxel_count else None


def _levels_and_bodies(case: str, case_dir: Path, volume: CTVolume) -> tuple[npt.NDArray[np.int16], CaseReference]:
    """Body level map (VertebraLevel values, split from the whole-vertebra labels) and the case's reference."""
    if case == "tptbox_l3_crop":
        vert = load_labels(case_dir / "vertebra_labels.nii.gz", volume)
        sub = load_labels(case_dir / "subregion_labels.nii.gz", volume)
        levels, _ = cls.verse_vertebra_levels(vert)
        reference = tptbox_reference(volume, vert, sub)
        cord = None
    else:
        lab = load_labels(case_dir / "totalseg_labels.nii.gz", volume)
        levels = cls.totalseg_vertebra_levels(lab)
        reference = totalseg_l1_reference(volume, lab)
        cord = lab == cls.TOTALSEG_SPINAL_CORD_ID
    frame = canonical_frame(volume.affine_lps, volume.shape)
    levels_c = frame.to_canonical(levels)
    cord_c = frame.to_canonical(cord) if cord is not None else None
    bodies = np.zeros(levels_c.shape, dtype=np.int16)
    for value in np.unique(levels_c):
        if value > 0:
            bodies[split_body(levels_c == value, frame.spacing_mm, cord_c)] = value
    return np.ascontiguousarray(frame.to_native(bodies)), reference


def _cut_by_fov(volume: CTVolume, body: CroppedMask) -> bool:
    axis, _ = volume.superior_axis()
    return body.offset[axis] == 0 or body.offset[axis] + body.mask.shape[axis] >= volume.shape[axis]


def evaluate_case(case_dir: Path) -> CaseResult:
    case = case_dir.name
    if case not in CASES:
        raise ValueError(f"no reference rule for case {case!r}; known: {', '.join(CASES)}")
    volume = load_ct(case_dir)
    bodies, reference = _levels_and_bodies(case, case_dir, volume)
    level = VertebraLevel[reference.level_name]
    crops = {VertebraLevel(v): m for v, m in crop_labels(bodies).items()}
    if level not in crops:
        raise ValueError(f"{case}: no body voxels of {level.name}")
    centroids = {lv: mask_centroid_lps(volume, m) for lv, m in crops.items()
                 if lv == level or not _cut_by_fov(volume, m)}
    frame = vertebra_frame(level, centroids[level], centroids)
    body = crops[level]
    rois = {m: trabecular_roi(m, volume, body, frame) for m in RoiMethod}
    roi_hu = {m: float(r.values(volume.hu).mean()) for m, r in rois.items() if r.voxel_count}
    check = check_roi(volume, body, rois[RoiMethod.EROSION_3MM])
    return CaseResult(reference, without_dense(reference, volume), level, volume, body, roi_hu, rois, check)


def report_lines(result: CaseResult) -> list[str]:
    ref = result.reference
    lines = [f"{ref.case} {ref.level_name}: reference {ref.hu:.1f} HU ({ref.rule})"]
    lines += [f"    reading {r.name}: {r.hu_mean:.1f} HU ({int(r.mask.sum())} voxels)" for r in ref.readings]
    for method, hu in result.roi_hu.items():
        diff = hu - ref.hu
        verdict = "within" if abs(diff) <= TARGET_HU else "OUTSIDE"
        lines.append(f"    ROI {method.value}: {hu:.1f} HU ({result.rois[method].voxel_count} voxels), "
                     f"{diff:+.1f} HU: {verdict} +-{TARGET_HU:g}")
    check = result.check
    checked = result.checked_hu
    free = result.dense_free
    if free is not ref:
        lines.append(f"    reference less its dense focus: {free.hu:.1f} HU ("
                     + ", ".join(f"{r.name} {r.hu_mean:.1f}" for r in free.readings) + ")")
    if check.exclusion is not None or checked is None:
        lines.append(f"    check_roi ({RoiMethod.EROSION_3MM.value}): excluded: "
                     + (f"{check.exclusion.reason.value}: {check.exclusion.detail}" if check.exclusion else "empty"))
    else:
        lines.append(f"    check_roi ({RoiMethod.EROSION_3MM.value}): {checked:.1f} HU, {checked - free.hu:+.1f} HU "
                     f"against the reference{' less its dense focus' if free is not ref else ''}; "
                     f"{check.note or 'nothing cut'}")
    return lines


def overlay_png(result: CaseResult, path: Path) -> None:
    """Mid-sagittal and axial slice: our ROI (cyan), the reference (yellow), what check_roi cut (red)."""
    import matplotlib  # noqa: PLC0415  # heavy: only the overlay PNGs need matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415  # after matplotlib.use("Agg"): no display backend

    volume = result.volume
    frame = canonical_frame(volume.affine_lps, volume.shape)
    hu = frame.to_canonical(volume.hu)
    ours_native = np.zeros(volume.shape, dtype=bool)
    result.rois[RoiMethod.EROSION_3MM].paint(ours_native, 1)
    cut_native = ours_native.copy()
    cut_native[result.check.roi.slices] &= ~result.check.roi.mask
    ref_native = np.zeros(volume.shape, dtype=bool)
    for r in result.reference.readings:
        ref_native |= r.mask
    ours, cut, ref = (frame.to_canonical(a) for a in (ours_native, cut_native, ref_native))
    pts = np.argwhere(ours | ref)
    x_mid, _, z_mid = (int(v) for v in np.median(pts, axis=0))
    lo = np.maximum(pts.min(axis=0) - 20, 0)
    hi = np.minimum(pts.max(axis=0) + 21, hu.shape)
    sp = frame.spacing_mm
    fig, axes = plt.subplots(1, 2, figsize=(10, 5))
    # canonical axes: 0 = +L, 1 = +P, 2 = +S. Sagittal: rows S (up), columns P (anterior left). Axial: rows P with
    # row 0 on top (anterior up), columns L (patient left on the right, as seen from the feet it would be mirrored).
    views = (("mid-sagittal (anterior left)", np.s_[x_mid, lo[1]:hi[1], lo[2]:hi[2]], sp[2] / sp[1], "lower"),
             (f"axial (anterior up), slice {z_mid}", np.s_[lo[0]:hi[0], lo[1]:hi[1], z_mid], sp[1] / sp[0], "upper"))
    for ax, (title, sl, aspect, origin) in zip(axes, views, strict=True):
        ax.imshow(np.clip(hu[sl].T, -200, 800), cmap="gray", origin=origin, aspect=aspect)
        for mask, colour in ((ref, "yellow"), (ours, "cyan"), (cut, "red")):
            if mask[sl].any():
                ax.contour(mask[sl].T.astype(float), levels=[0.5], colors=colour, linewidths=1.2)
        ax.set_title(title)
        ax.axis("off")
    ref_hu = result.reference.hu
    ours_hu = result.roi_hu.get(RoiMethod.EROSION_3MM, float("nan"))
    fig.suptitle(f"{result.reference.case} {result.level.name}: ours (cyan, 3 mm erosion) {ours_hu:.1f} HU, "
                 f"reference (yellow) {ref_hu:.1f} HU\nred: cut by check_roi"
                 + (f" -> {result.checked_hu:.1f} HU" if result.check.note and result.checked_hu is not None else ""),
                 fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--no-png", action="store_true")
    args = parser.parse_args(argv)
    worst = 0.0
    for case in CASES:
        case_dir = args.data / case
        if not case_dir.is_dir():
            raise SystemExit(f"real case missing: {case_dir}")
        result = evaluate_case(case_dir)
        print("\n".join(report_lines(result)))
        worst = max(worst, abs(result.roi_hu[RoiMethod.EROSION_3MM] - result.reference.hu))
        if not args.no_png:
            overlay_png(result, args.out / f"roi_{case}.png")
    print(f"largest |ROI - reference| of the default method: {worst:.1f} HU (target {TARGET_HU:g})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
