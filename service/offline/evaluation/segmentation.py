"""``bmd-node evaluate segmentation DATASET``: body Dice and identification rate per level, overlay PNGs.

DATASET is one case folder or a folder of case folders.  A case folder holds the CT (``ct.nii.gz`` or
``dicom/``, or DICOM files directly) and reference labels: ``labels.nii.gz`` (+ ``truth.json``) in the phantom
scheme, or ``totalseg_labels.nii.gz`` in the TotalSegmentator v2 numbering.  TotalSegmentator labels cover the
whole vertebra: the reference body is derived with body_split.split_body (part anterior to the spinal canal), so
Dice and centroids compare body with body.

Identification (VerSe rule): a reference vertebra is identified when the prediction has a body with the same
name whose centroid lies within 20 mm of the reference centroid and closer to it than to any other reference
centroid.  Only reference bodies fully inside the field of view (not touching the first/last slice) count.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt
from scipy import ndimage
from tqdm import tqdm

from service.domain.levels import VertebraLevel
from service.domain.segmentation import SpineSegmentation
from service.domain.volume import CTVolume
from service.segmentation import classes as cls
from service.segmentation.body_split import split_body
from service.segmentation.geometry import canonical_frame
from service.series.volume_loader import load_series

logger = logging.getLogger(__name__)

ID_DISTANCE_MM = 20.0
"""VerSe identification rule (Sekuboyina 2021)."""


@dataclass
class Reference:
    body_labels: npt.NDArray[np.int16]
    """Reference body level map on the CT grid."""
    kind: str
    centroids_lps: dict[int, npt.NDArray[np.float64]] = field(default_factory=dict)
    fully_visible: dict[int, bool] = field(default_factory=dict)


VERSE_BODY_SUBREGIONS = (49, 50)
"""VerSe / TPTBox subregion labels of the vertebral body: 49 border (cortex and endplates), 50 interior."""


def is_case_dir(path: Path) -> bool:
    return any((path / name).is_file() for name in ("labels.nii.gz", "totalseg_labels.nii.gz",
                                                     "vertebra_labels.nii.gz"))


def has_ct(path: Path) -> bool:
    return (path / "ct.nii.gz").is_file() or (path / "dicom").is_dir() or any(path.glob("*.dcm"))


def case_dirs(dataset: Path) -> list[Path]:
    if not dataset.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {dataset}")
    if is_case_dir(dataset) or has_ct(dataset):
        return [dataset]
    cases = sorted(p for p in dataset.iterdir() if p.is_dir() and is_case_dir(p))
    if not cases:
        raise FileNotFoundError(f"no case folders (with labels.nii.gz or totalseg_labels.nii.gz) under {dataset}")
    return cases


def nifti_to_lps(affine_ras: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine_ras, dtype=np.float64)


def load_ct(case: Path) -> CTVolume:
    nii = case / "ct.nii.gz"
    if nii.is_file():
        img = nib.load(str(nii))
        hu = np.asarray(img.dataobj, dtype=np.float32)
        return CTVolume(hu=hu, affine_lps=nifti_to_lps(img.affine))
    folder = case / "dicom" if (case / "dicom").is_dir() else case
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in ("", ".dcm"))
    if not files:
        raise FileNotFoundError(f"no CT in {case}: expected ct.nii.gz or DICOM files (dicom/)")
    return load_series(files)


def labels_on_ct_grid(label_path: Path, volume: CTVolume) -> npt.NDArray[np.int16]:
    """Label map resampled (nearest) onto the CT grid through both affines."""
    img = nib.load(str(label_path))
    lab = np.asarray(img.dataobj).astype(np.int16)
    m = np.linalg.inv(nifti_to_lps(img.affine)) @ volume.affine_lps
    rot = m[:3, :3]
    if lab.shape == volume.shape and np.allclose(m, np.eye(4), atol=1e-3):
        return lab
    # exact axis permutation/flip with integer offsets: index arithmetic, no interpolation
    if np.allclose(np.abs(rot), np.round(np.abs(rot)), atol=1e-4) and np.allclose(m[:3, 3], np.round(m[:3, 3]),
                                                                                   atol=1e-3):
        grids = np.meshgrid(*[np.arange(n) for n in volume.shape], indexing="ij", sparse=True)
        idx = []
        for r in range(3):
            coord = sum(rot[r, c] * grids[c] for c in range(3)) + m[r, 3]
            idx.append(np.rint(coord).astype(np.intp))
        idx_b = np.broadcast_arrays(*idx)
        valid = np.ones(volume.shape, dtype=bool)
        for r in range(3):
            valid &= (idx_b[r] >= 0) & (idx_b[r] < lab.shape[r])
        out = np.zeros(volume.shape, dtype=np.int16)
        out[valid] = lab[tuple(np.clip(idx_b[r], 0, lab.shape[r] - 1)[valid] for r in range(3))]
        return out
    ii, jj, kk = np.meshgrid(*[np.arange(n) for n in volume.shape], indexing="ij")
    pts = np.stack([ii.ravel(), jj.ravel(), kk.ravel(), np.ones(ii.size)])
    src = (m @ pts)[:3]
    return ndimage.map_coordinates(lab, src, order=0, mode="constant", cval=0).reshape(volume.shape).astype(np.int16)


def load_reference(case: Path, volume: CTVolume) -> Reference:
    if (case / "labels.nii.gz").is_file():
        lab = labels_on_ct_grid(case / "labels.nii.gz", volume)
        body = cls.phantom_body_levels(lab)
        ref = Reference(body, "phantom")
    elif (case / "vertebra_labels.nii.gz").is_file():
        # VerSe numbering (1-7 C1-C7, 8-19 T1-T12, 20-24 L1-L5) is the node's VertebraLevel numbering; the body is
        # the subregions 49 + 50 within each vertebra (an annotation made outside this project)
        verse = labels_on_ct_grid(case / "vertebra_labels.nii.gz", volume)
        sub = labels_on_ct_grid(case / "subregion_labels.nii.gz", volume)
        body = np.where(np.isin(sub, VERSE_BODY_SUBREGIONS) & (verse >= 1) & (verse <= 25), verse, 0)
        ref = Reference(body.astype(np.int16), "VerSe vertebra labels, body subregions 49 + 50")
    else:
        lab = labels_on_ct_grid(case / "totalseg_labels.nii.gz", volume)
        ref = Reference(totalseg_body_reference(lab, volume), "totalsegmentator (body part derived)")
    _reference_centroids(ref, volume)
    return ref


def totalseg_body_reference(lab: npt.NDArray[np.int16], volume: CTVolume) -> npt.NDArray[np.int16]:
    frame = canonical_frame(volume.affine_lps, volume.shape)
    levels = frame.to_canonical(cls.totalseg_vertebra_levels(lab))
    cord = frame.to_canonical(lab == cls.TOTALSEG_SPINAL_CORD_ID)
    out = np.zeros(levels.shape, dtype=np.int16)
    for v in np.unique(levels):
        if v == 0:
            continue
        out[split_body(levels == v, frame.spacing_mm, cord)] = v
    return frame.to_native(out)


def _slice_axis(volume: CTVolume) -> int:
    """The array axis closest to head-foot (a NIfTI crop may store it first, e.g. TPTBox's P-I-R)."""
    return int(np.argmax(np.abs(volume.affine_lps[2, :3])))


def _reference_centroids(ref: Reference, volume: CTVolume) -> None:
    k_axis = _slice_axis(volume)
    n = volume.shape[k_axis]
    for v in np.unique(ref.body_labels):
        if v == 0:
            continue
        coords = np.argwhere(ref.body_labels == v)
        ref.centroids_lps[int(v)] = volume.index_to_lps(coords.mean(axis=0))
        ref.fully_visible[int(v)] = bool(coords[:, k_axis].min() > 0 and coords[:, k_axis].max() < n - 1)


def dice(a: npt.NDArray[np.bool_], b: npt.NDArray[np.bool_]) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


def _best_overlap_dice(pred_labels: npt.NDArray[np.int16], ref_body: npt.NDArray[np.bool_]) -> float:
    """Dice of the reference body with the predicted body that overlaps it most, whatever its name: how well the
    body is segmented, apart from how it is named (an uncertain best-guess name may be off by one)."""
    under = pred_labels[ref_body]
    under = under[under > 0]
    if under.size == 0:
        return 0.0
    return dice(pred_labels == int(np.bincount(under).argmax()), ref_body)


def identification(pred: dict[int, npt.NDArray[np.float64]], ref: dict[int, npt.NDArray[np.float64]],
                   levels: list[int]) -> dict[int, bool]:
    """VerSe rule for each reference level in ``levels``."""
    out = {}
    ref_levels = list(ref)
    ref_pts = np.array([ref[v] for v in ref_levels]) if ref_levels else np.zeros((0, 3))
    for v in levels:
        if v not in pred:
            out[v] = False
            continue
        d = np.linalg.norm(ref_pts - pred[v], axis=1)
        own = d[ref_levels.index(v)]
        out[v] = bool(own <= ID_DISTANCE_MM and own <= d.min() + 1e-9)
    return out


def evaluate_case(seg: SpineSegmentation, ref: Reference) -> dict[str, Any]:
    pred_centroids = {int(v.level): np.asarray(v.centroid_lps_mm) for v in seg.vertebrae}
    uncertain = {int(v.level): v.level_uncertain for v in seg.vertebrae}
    visible = [v for v, ok in ref.fully_visible.items() if ok]
    ident = identification(pred_centroids, ref.centroids_lps, visible)
    per_level: dict[str, Any] = {}
    for v in sorted(set(ref.centroids_lps) | set(pred_centroids)):
        name = VertebraLevel(v).name
        entry: dict[str, Any] = {"in_reference": v in ref.centroids_lps, "predicted": v in pred_centroids,
                                 "fully_visible": ref.fully_visible.get(v)}
        if v in ref.centroids_lps:
            entry["dice"] = dice(seg.body_labels == v, ref.body_labels == v)
            entry["body_dice_any_name"] = _best_overlap_dice(seg.body_labels, ref.body_labels == v)
        if v in ref.centroids_lps and v in pred_centroids:
            entry["centroid_error_mm"] = float(np.linalg.norm(pred_centroids[v] - ref.centroids_lps[v]))
        if v in pred_centroids:
            entry["uncertain"] = uncertain[v]
        if v in ident:
            entry["identified"] = ident[v]
        per_level[name] = entry
    n_vis = len(visible)
    n_id = sum(ident.values())
    n_id_or_unc = sum(1 for v in visible if ident[v] or uncertain.get(v, False))
    dices = [e["dice"] for e in per_level.values() if "dice" in e and e["fully_visible"]]
    wrong_confident = [VertebraLevel(v).name for v in visible if not ident[v] and not uncertain.get(v, True)]
    return {
        "reference": ref.kind,
        "n_reference_fully_visible": n_vis,
        "identified": n_id,
        "identification_rate": n_id / n_vis if n_vis else None,
        "identified_or_flagged_uncertain": n_id_or_unc,
        "wrong_and_confident": wrong_confident,
        "mean_dice_fully_visible": float(np.mean(dices)) if dices else None,
        "per_level": per_level,
        "notes": list(seg.notes),
    }


def overlay_png(volume: CTVolume, seg: SpineSegmentation, ref: Reference | None, path: Path, title: str) -> None:
    """Sagittal (and coronal) slice through the spine: predicted bodies coloured and named, reference contours."""
    import matplotlib  # noqa: PLC0415  # heavy: only the overlay PNGs need matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415  # after matplotlib.use("Agg"): no display backend

    frame = canonical_frame(volume.affine_lps, volume.shape)
    hu = frame.to_canonical(volume.hu)
    body = frame.to_canonical(seg.body_labels)
    refb = frame.to_canonical(ref.body_labels) if ref is not None else None
    sp = frame.spacing_mm
    if body.any():
        x_mid = int(np.median(np.nonzero(body)[0]))
        y_mid = int(np.median(np.nonzero(body)[1]))
    elif refb is not None and refb.any():
        x_mid, y_mid = int(np.median(np.nonzero(refb)[0])), int(np.median(np.nonzero(refb)[1]))
    else:
        x_mid, y_mid = hu.shape[0] // 2, hu.shape[1] // 2
    mask_any = body > 0
    if refb is not None:
        mask_any = mask_any | (refb > 0)
    if mask_any.any():
        pts = np.argwhere(mask_any)
        lo, hi = pts.min(axis=0), pts.max(axis=0)
    else:
        lo, hi = np.zeros(3, dtype=int), np.array(hu.shape) - 1
    # crop around the spine: 80 mm either side laterally, 60 mm anterior / 90 mm posterior of the bodies
    x0 = max(0, int(lo[0] - 80 / sp[0]))
    x1 = min(hu.shape[0], int(hi[0] + 80 / sp[0]) + 1)
    y0 = max(0, int(lo[1] - 60 / sp[1]))
    y1 = min(hu.shape[1], int(hi[1] + 90 / sp[1]) + 1)
    height_mm = hu.shape[2] * sp[2]
    fig_h = float(np.clip(height_mm / 40.0, 4.0, 14.0))
    fig, axes = plt.subplots(1, 2, figsize=(11, fig_h + 1.5))
    cmap = plt.get_cmap("tab10")
    palette = (0, 1, 2, 3, 4, 5, 6, 8, 9)  # tab10 without its grey: every level visible on the grey CT
    for ax, view in zip(axes, ("sagittal", "coronal"), strict=True):
        if view == "sagittal":
            img, lab = hu[x_mid, y0:y1, :].T, body[x_mid, y0:y1, :].T
            rlab = refb[x_mid, y0:y1, :].T if refb is not None else None
            aspect = sp[2] / sp[1]
            offset = y0
        else:
            img, lab = hu[x0:x1, y_mid, :].T, body[x0:x1, y_mid, :].T
            rlab = refb[x0:x1, y_mid, :].T if refb is not None else None
            aspect = sp[2] / sp[0]
            offset = x0
        ax.imshow(np.clip(img, -250, 1250), cmap="gray", origin="lower", aspect=aspect)
        rgba = np.zeros((*lab.shape, 4))
        for v in np.unique(lab):
            if v == 0:
                continue
            rgba[lab == v] = (*cmap(palette[int(v) % len(palette)])[:3], 0.5)
        ax.imshow(rgba, origin="lower", aspect=aspect)
        if rlab is not None:
            edge = (rlab > 0) & ~ndimage.binary_erosion(rlab > 0)
            ys, xs = np.nonzero(edge)
            ax.scatter(xs, ys, s=0.3, c="yellow")
        for vert in seg.vertebrae:
            ijk = frame_index(frame, np.asarray(vert.centroid_lps_mm))
            col = (ijk[1] if view == "sagittal" else ijk[0]) - offset
            label = vert.level.name + ("?" if vert.level_uncertain else "") + ("(cut)" if vert.cut_by_fov else "")
            ax.text(col, ijk[2], label, color="red" if vert.level_uncertain else "lime", fontsize=9,
                    ha="center", va="center", weight="bold")
        ax.set_title(f"{view} (anterior left)" if view == "sagittal" else f"{view} (patient right left)")
        ax.axis("off")
    fig.suptitle(title + "\npredicted bodies coloured + named (? = uncertain); yellow = reference outline")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def frame_index(frame: Any, lps: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    inv = np.linalg.inv(frame.affine_lps)
    return inv[:3, :3] @ lps + inv[:3, 3]


def evaluate_dataset(dataset: Path, out: Path | None, segmenter: Any) -> dict[str, Any]:
    cases = case_dirs(dataset)
    results: dict[str, Any] = {}
    all_dice: dict[str, list[float]] = {}
    n_vis = n_id = n_id_unc = 0
    wrong: list[str] = []
    for case in tqdm(cases, desc="evaluating", unit="case", disable=None):  # no bar when not a terminal
        volume = load_ct(case)
        ref = load_reference(case, volume) if is_case_dir(case) else None
        t0 = time.perf_counter()
        seg = segmenter.segment(volume)
        elapsed = time.perf_counter() - t0
        if ref is None:
            # unlabelled case: the naming and an overlay only
            results[case.name] = {"reference": None, "seconds": round(elapsed, 2), "shape": list(volume.shape),
                                  "notes": list(seg.notes), "identification_rate": None,
                                  "mean_dice_fully_visible": None, "wrong_and_confident": [],
                                  "per_level": {v.level.name: {"uncertain": v.level_uncertain,
                                                               "cut_by_fov": v.cut_by_fov,
                                                               "centroid_lps_mm": list(v.centroid_lps_mm)}
                                                for v in seg.vertebrae}}
            if out is not None:
                overlay_png(volume, seg, None, out / f"{case.name}_overlay.png", f"{case.name} (no reference)")
            continue
        r = evaluate_case(seg, ref)
        r["seconds"] = round(elapsed, 2)
        r["shape"] = list(volume.shape)
        results[case.name] = r
        n_vis += r["n_reference_fully_visible"]
        n_id += r["identified"]
        n_id_unc += r["identified_or_flagged_uncertain"]
        wrong.extend(f"{case.name}:{w}" for w in r["wrong_and_confident"])
        for name, e in r["per_level"].items():
            if "dice" in e and e["fully_visible"]:
                all_dice.setdefault(name, []).append(e["dice"])
        if out is not None:
            overlay_png(volume, seg, ref, out / f"{case.name}_overlay.png", f"{case.name} ({ref.kind})")
    summary = {
        "dataset": str(dataset),
        "cases": len(cases),
        "reference_vertebrae_fully_visible": n_vis,
        "identification_rate": n_id / n_vis if n_vis else None,
        "identified_or_flagged_uncertain_rate": n_id_unc / n_vis if n_vis else None,
        "wrong_and_confident": wrong,
        "mean_body_dice": float(np.mean([d for v in all_dice.values() for d in v])) if all_dice else None,
        "per_level_dice": {k: float(np.mean(v)) for k, v in sorted(all_dice.items(),
                                                                    key=lambda kv: VertebraLevel[kv[0]].value)},
        "model": f"{getattr(segmenter, 'name', '?')} {getattr(segmenter, 'version', '?')}",
        "per_case": results,
    }
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(summary, indent=2, default=_json_default) + "\n")
    return summary


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(type(o))
