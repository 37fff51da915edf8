"""Montage PNGs of phantoms, a side-by-side with the real chest CT and HU histograms (docs/phantom).

    python -m service.offline.phantom.montage --out docs/phantom [--real ../shared/data/cptac_lscc_chest]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
from scipy import ndimage

from service.domain.levels import VertebraLevel
from service.offline.phantom import labels as L  # noqa: N812
from service.offline.phantom.api import Phantom, PhantomSpec, generate

logger = logging.getLogger(__name__)
V = VertebraLevel
WINDOW = (-1000.0, 1000.0)
BONE_WINDOW = (-450.0, 1050.0)
SOFT_WINDOW = (-160.0, 240.0)
LUNG_WINDOW = (-1200.0, 400.0)


def _canonical(p: Phantom) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int16], tuple[float, float, float]]:
    """Arrays with axes (+x, +y, +z) whatever the DICOM orientation."""
    hu, lab = p.volume.hu, p.labels
    aff = p.volume.affine_lps
    if aff[0, 0] < 0:
        hu, lab = hu[::-1], lab[::-1]
    if aff[2, 2] < 0:
        hu, lab = hu[:, :, ::-1], lab[:, :, ::-1]
    return hu, lab, p.volume.spacing_mm


def _slice_at_level(p: Phantom, level: str) -> int | None:
    v = next((x for x in p.truth["vertebrae"] if x["level"] == level), None)
    if v is None:
        return None
    idx = p.volume.lps_to_index(v["centroid_lps_mm"])
    k = int(np.rint(idx[2]))
    if p.volume.affine_lps[2, 2] < 0:
        k = p.volume.shape[2] - 1 - k
    return k


def phantom_montage(p: Phantom, title: str, path: Path) -> Path:
    import matplotlib  # noqa: PLC0415  # heavy plotting stack, loaded only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415  # after choosing the Agg backend

    hu, lab, sp = _canonical(p)
    spine = (lab >= 1) & (lab <= 25) | (lab >= 201)
    xi = int(np.median(np.nonzero(spine.any(axis=(1, 2)))[0]))
    yi = int(np.median(np.nonzero(spine.any(axis=(0, 2)))[0]))
    fig, axes = plt.subplots(1, 4, figsize=(22, 6.6), facecolor="black")
    kw = {"cmap": "gray", "vmin": BONE_WINDOW[0], "vmax": BONE_WINDOW[1], "interpolation": "bilinear"}
    axes[0].imshow(hu[xi, :, ::-1].T, aspect=sp[2] / sp[1], **kw)
    axes[0].set_title("sagittal (midline, W1500 L300)", color="w")
    axes[1].imshow(hu[:, yi, ::-1].T, aspect=sp[2] / sp[0], **kw)
    axes[1].set_title("coronal (through the bodies, W1500 L300)", color="w")
    k_l1 = _slice_at_level(p, "L1")
    rib_level = "T7" if any(v["level"] == "T7" for v in p.truth["vertebrae"]) else "T11"
    k_rib = _slice_at_level(p, rib_level)
    for ax, k, name in ((axes[2], k_l1, "L1"), (axes[3], k_rib, rib_level)):
        if k is None:
            ax.set_axis_off()
            ax.set_title(f"{name} not in the field of view", color="w")
            continue
        has_lung = bool(((lab[:, :, k] == L.LUNG_LEFT) | (lab[:, :, k] == L.LUNG_RIGHT)).sum() > 2000)
        win = LUNG_WINDOW if (name != "L1" and has_lung) else SOFT_WINDOW
        ax.imshow(hu[:, :, k].T, cmap="gray", vmin=win[0], vmax=win[1], interpolation="bilinear")
        what = "lung window" if win == LUNG_WINDOW else "soft-tissue window"
        ax.set_title(f"axial at {name} ({what})", color="w")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, color="w", fontsize=14)
    fig.tight_layout()
    fig.savefig(path, dpi=60, facecolor="black")
    plt.close(fig)
    return path


def load_real(folder: Path) -> tuple[npt.NDArray[np.float32], tuple[float, float, float]]:
    """Real series as (x, y, z ascending) HU array."""
    files = sorted(folder.glob("*.dcm"))
    if not files:
        raise FileNotFoundError(f"no DICOM files in {folder}")
    ds = [pydicom.dcmread(f) for f in files]
    ds.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    vol = np.stack([d.pixel_array.T * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in ds], axis=-1)
    sp = (float(ds[0].PixelSpacing[1]), float(ds[0].PixelSpacing[0]),
          abs(float(ds[1].ImagePositionPatient[2]) - float(ds[0].ImagePositionPatient[2])))
    return vol.astype(np.float32), sp


def _body(hu: npt.NDArray[np.float32]) -> npt.NDArray[np.bool_]:
    body = np.zeros(hu.shape, dtype=bool)
    for k in range(hu.shape[2]):
        m = hu[:, :, k] > -400
        lab, n = ndimage.label(m)
        if n == 0:
            continue
        sizes = ndimage.sum(m, lab, range(1, n + 1))
        body[:, :, k] = ndimage.binary_fill_holes(lab == (int(np.argmax(sizes)) + 1))
    return body


def real_tissue_masks(hu: npt.NDArray[np.float32]) -> dict[str, npt.NDArray[np.bool_]]:
    """Threshold classes inside the body of an unlabelled real CT (the same rules for both images)."""
    body = _body(hu)
    return {
        "lung": body & (hu < -500),
        "fat": body & (hu >= -200) & (hu < -40),
        "muscle": body & (hu >= -20) & (hu < 120),
        "bone": body & (hu >= 200),
    }


def phantom_tissue_masks(lab: npt.NDArray[np.int16]) -> dict[str, npt.NDArray[np.bool_]]:
    bone = ((lab >= 1) & (lab <= 26)) | ((lab >= 41) & (lab <= 65)) | ((lab >= 71) & (lab <= 111)) | (lab >= 201)
    return {
        "lung": (lab == L.LUNG_LEFT) | (lab == L.LUNG_RIGHT),
        "fat": (lab == L.SUBCUTANEOUS_FAT) | (lab == L.VISCERAL_FAT),
        "muscle": lab == L.MUSCLE,
        "bone": bone,
    }


def real_like_spec(seed: int = 7) -> PhantomSpec:
    """A chest phantom acquired like the real case: 100 kVp, 3 mm, 0.56 mm pixels, sharp kernel (B70f)."""
    return PhantomSpec(seed=seed, region="chest", kvp=100, slice_thickness_mm=3.0, pixel_spacing_mm=0.564,
                       noise_scale=3.2, sex="F", age_years=77.0, habitus="slim", arms_in_fov=False,
                       osteophytes=True)


def comparison(real_dir: Path, out: Path, seed: int = 7) -> list[Path]:
    import matplotlib  # noqa: PLC0415  # heavy plotting stack, loaded only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415  # after choosing the Agg backend

    real, rsp = load_real(real_dir)
    p = generate(real_like_spec(seed))
    hu, lab, sp = _canonical(p)
    # side by side: axial at mid-thorax (real: middle slice; phantom: T7), sagittal, coronal
    k_real = real.shape[2] // 2
    k_ph = _slice_at_level(p, "T7") or hu.shape[2] // 2
    real_body = _body(real[:, :, k_real:k_real + 1])[:, :, 0]
    xr = int(np.median(np.nonzero((real[:, :, k_real] > 300) & real_body)[0]))
    spine = (lab >= 1) & (lab <= 25) | (lab >= 201)
    xi = int(np.median(np.nonzero(spine.any(axis=(1, 2)))[0]))
    kw = {"cmap": "gray", "vmin": WINDOW[0], "vmax": WINDOW[1], "interpolation": "bilinear"}
    fig, axes = plt.subplots(2, 2, figsize=(14, 14), facecolor="black")
    axes[0, 0].imshow(real[:, :, k_real].T, **kw)
    axes[0, 0].set_title("real: cptac_lscc_chest (100 kVp, 3 mm, B70f)", color="w")
    axes[0, 1].imshow(hu[:, :, k_ph].T, **kw)
    axes[0, 1].set_title(f"phantom seed {seed} (100 kVp, 3 mm, sharp-kernel noise)", color="w")
    axes[1, 0].imshow(real[xr, :, ::-1].T, aspect=rsp[2] / rsp[1], **kw)
    axes[1, 0].set_title("real sagittal", color="w")
    axes[1, 1].imshow(hu[xi, :, ::-1].T, aspect=sp[2] / sp[1], **kw)
    axes[1, 1].set_title("phantom sagittal", color="w")
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    side = out / "phantom_vs_real_chest.png"
    fig.savefig(side, dpi=55, facecolor="black")
    plt.close(fig)

    # HU histograms: real by threshold classes, phantom by labels AND by the same thresholds
    real_m = real_tissue_masks(real)
    ph_lab = phantom_tissue_masks(lab)
    ph_thr = real_tissue_masks(hu)
    ranges = {"lung": (-1024, -400), "fat": (-250, 0), "muscle": (-50, 200), "bone": (100, 1600)}
    fig, axes = plt.subplots(1, 4, figsize=(22, 5))
    stats: dict[str, Any] = {}
    for ax, name in zip(axes, ("bone", "fat", "muscle", "lung"), strict=True):
        lo, hi = ranges[name]
        bins = np.linspace(lo, hi, 80)
        for data, label, style in ((real[real_m[name]], "real (threshold class)", "k-"),
                                   (hu[ph_thr[name]], "phantom (same thresholds)", "r-"),
                                   (hu[ph_lab[name]], "phantom (truth label)", "b--")):
            h, _ = np.histogram(data, bins=bins, density=True)
            ax.plot((bins[1:] + bins[:-1]) / 2, h, style, label=f"{label}: median {np.median(data):.0f}")
        stats[name] = (float(np.median(real[real_m[name]])), float(np.median(hu[ph_thr[name]])))
        ax.set_title(f"{name} HU")
        ax.legend(fontsize=8)
    fig.tight_layout()
    hist = out / "hu_histograms_phantom_vs_real.png"
    fig.savefig(hist, dpi=60)
    plt.close(fig)
    logger.info("median HU real vs phantom: %s", stats)
    return [side, hist]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("docs/phantom"))
    parser.add_argument("--real", type=Path, default=Path(__file__).resolve().parents[3] / ".." / "shared" / "data"
                        / "cptac_lscc_chest")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    args.out.mkdir(parents=True, exist_ok=True)
    written = []
    chest = generate(PhantomSpec(seed=args.seed, region="chest"))
    written.append(phantom_montage(chest, f"chest phantom seed {args.seed} (120 kVp, 1 mm, 0.7 mm pixels)",
                                   args.out / "montage_chest.png"))
    del chest
    abd = generate(PhantomSpec(seed=args.seed + 1, region="abdomen", slice_thickness_mm=2.0, contrast=False))
    written.append(phantom_montage(abd, f"abdomen phantom seed {args.seed + 1} (120 kVp, 2 mm)",
                                   args.out / "montage_abdomen.png"))
    del abd
    if args.real.exists():
        written += comparison(args.real, args.out, seed=args.seed)
    else:
        print(f"real case not found at {args.real}; comparison skipped")
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
