"""Every level of the real cases in ../shared/data, as the node reads them with its own segmenter: measured,
or excluded with the reason, and the fracture check's outcome, drawn on an overlay (issue 15: "every exclusion on
the real cases is shown in an overlay in docs, with its reason").

    .venv/bin/python -m service.offline.evaluation.real_exclusions --out docs/measurement/real_cases

Writes one ``<case>.png`` per case (sagittal and coronal slices through the bodies, each level coloured and named,
and beside it one line per level) and ``README.md`` with the same table. The committed model runs on the CPU.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from service.calibration.assess import assess_bmd
from service.calibration.settings import BmdSettings
from service.domain.results import VertebraMeasurement
from service.domain.segmentation import SpineSegmentation
from service.domain.volume import CTVolume
from service.offline.evaluation.segmentation import frame_index, load_ct
from service.segmentation.geometry import canonical_frame
from service.segmentation.inference import load_segmenter
from service.segmentation.settings import SegmentationSettings

REPO = Path(__file__).resolve().parents[3]
SHARED_DATA = REPO.parent / "shared" / "data"
CASES = ("cptac_lscc_chest", "ts_abdomen_t11_l2", "tptbox_l3_crop", "ts_abdomen_slab_j2k")


@dataclass(frozen=True)
class LevelLine:
    level: str
    outcome: str
    """"measured" or "excluded: <reason>"."""
    bmd_mg_cm3: float | None
    detail: str
    fracture: str


def level_line(m: VertebraMeasurement) -> LevelLine:
    name = m.level.name + ("?" if m.level_uncertain else "")
    outcome = "measured" if m.evaluable else f"excluded: {m.exclusion_reason.value if m.exclusion_reason else '?'}"
    fracture = m.fracture_status.value if m.fracture_status else "not checked"
    if m.genant_grade:
        fracture += f" (Genant {m.genant_grade})"
    if m.fracture_detail:
        fracture += f": {m.fracture_detail}"
    detail = m.exclusion_detail or m.roi_note or ""
    return LevelLine(name, outcome, m.bmd_mg_cm3, detail, fracture)


def _slices(volume: CTVolume, seg: SpineSegmentation) -> tuple[list[tuple[npt.NDArray[np.float64], ...]], object]:
    frame = canonical_frame(volume.affine_lps, volume.shape)
    hu = frame.to_canonical(volume.hu)
    body = frame.to_canonical(seg.body_labels)
    pts = np.nonzero(body) if body.any() else tuple(np.array([s // 2]) for s in hu.shape)
    x_mid, y_mid = int(np.median(pts[0])), int(np.median(pts[1]))
    sp = frame.spacing_mm
    views = [(hu[x_mid, :, :].T, body[x_mid, :, :].T, sp[2] / sp[1]),
             (hu[:, y_mid, :].T, body[:, y_mid, :].T, sp[2] / sp[0])]
    return views, frame


def _panel_line(ln: LevelLine) -> str:
    bmd = f"  BMD {ln.bmd_mg_cm3:.1f}" if ln.bmd_mg_cm3 is not None and ln.outcome == "measured" else ""
    detail = f"\n      {ln.detail[:70]}" if ln.detail else ""
    return f"{ln.level:5s} {ln.outcome}{bmd}\n      fracture check: {ln.fracture[:60]}{detail}"


def overlay(name: str, volume: CTVolume, seg: SpineSegmentation, lines: list[LevelLine], path: Path) -> None:
    import matplotlib  # noqa: PLC0415 - figures only in this offline command

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 - after matplotlib.use("Agg")

    views, frame = _slices(volume, seg)
    fig, axes = plt.subplots(1, 3, figsize=(15, 7), gridspec_kw={"width_ratios": [1, 1, 1.3]})
    cmap = plt.get_cmap("tab10")
    status = {ln.level.rstrip("?"): ln for ln in lines}
    for col, (ax, (img, lab, aspect)) in enumerate(zip(axes[:2], views, strict=True)):
        ax.imshow(np.clip(img, -250, 1250), cmap="gray", origin="lower", aspect=aspect)
        rgba = np.zeros((*lab.shape, 4))
        for v in np.unique(lab):
            if v:
                rgba[lab == v] = (*cmap(int(v) % 10)[:3], 0.45)
        ax.imshow(rgba, origin="lower", aspect=aspect)
        for vert in seg.vertebrae:
            ijk = frame_index(frame, np.asarray(vert.centroid_lps_mm))
            line = status.get(vert.level.name)
            excluded = line is not None and line.outcome != "measured"
            ax.text(ijk[1] if col == 0 else ijk[0], ijk[2], vert.level.name + ("*" if excluded else ""),
                    color="red" if excluded else "lime", fontsize=9, ha="center", va="center", weight="bold")
        ax.set_title("sagittal (anterior left)" if col == 0 else "coronal (patient right left)")
        ax.axis("off")
    axes[2].axis("off")
    text = "\n".join(_panel_line(ln) for ln in lines)
    axes[2].text(0, 1, text or "no vertebra found", va="top", ha="left", family="monospace", fontsize=7.5,
                 transform=axes[2].transAxes)
    fig.suptitle(f"{name}: the node's own segmentation; red * = excluded from the BMD (reason at right)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def markdown(rows: dict[str, list[LevelLine]]) -> str:
    out = ["# Real cases: every level, measured or excluded, with the reason", "",
           "Made by `.venv/bin/python -m service.offline.evaluation.real_exclusions --out docs/measurement/real_cases`"
           " (the committed model on the CPU, the node's own masks, `assess_bmd` with the default settings).", ""]
    for name, lines in rows.items():
        out += [f"## {name}", "", f"![{name}]({name}.png)", "",
                "| level | outcome | BMD mg/cm³ | fracture check | detail |", "|---|---|---|---|---|"]
        out += [f"| {ln.level} | {ln.outcome} | {'' if ln.bmd_mg_cm3 is None else f'{ln.bmd_mg_cm3:.1f}'} | "
                f"{ln.fracture} | {ln.detail.replace('|', '/')} |" for ln in lines]
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "docs" / "measurement" / "real_cases")
    p.add_argument("cases", nargs="*", default=list(CASES))
    args = p.parse_args(argv)
    segmenter = load_segmenter(SegmentationSettings(bundle_dir=REPO / "models" / "vertebra_seg", device="cpu"))
    rows: dict[str, list[LevelLine]] = {}
    for name in args.cases:
        volume = load_ct(SHARED_DATA / name)
        seg = segmenter.segment(volume)
        result = assess_bmd(volume, seg, BmdSettings(calibration_store_dir=None)).result
        rows[name] = [level_line(m) for m in result.vertebrae]
        overlay(name, volume, seg, rows[name], args.out / f"{name}.png")
        excluded = sum(ln.outcome != "measured" for ln in rows[name])
        print(f"{name}: {len(rows[name])} levels, {excluded} excluded")
    (args.out / "README.md").write_text(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
