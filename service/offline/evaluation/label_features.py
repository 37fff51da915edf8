"""What the labelling step saw, per body: rib volume on each side, thoracic/lumbar vote, height, cut by the field,
how far the field reaches; then the names, their flags and the notes (why a level was named so).

    .venv/bin/python -m service.offline.evaluation.label_features CASE_DIR [CASE_DIR ...]

A case folder is what ``bmd-node evaluate segmentation`` reads (a DICOM series folder or a NIfTI case). The committed
models run on the CPU. The features are those ``service.segmentation.labelling.label_bodies`` receives inside the
node's own segmentation, recorded by wrapping that function for the run (an offline diagnostic; the node never
imports this module).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from service.offline.evaluation.segmentation import load_ct
from service.segmentation import inference
from service.segmentation.labelling import BodyFeatures, LabellingResult
from service.segmentation.settings import SegmentationSettings


@contextmanager
def recorded_features() -> Iterator[list[tuple[list[BodyFeatures], bool, LabellingResult]]]:
    """Within the block, every call of the labelling step by the segmenter is recorded (features, sacrum below,
    result)."""
    calls: list[tuple[list[BodyFeatures], bool, LabellingResult]] = []
    original = inference.label_bodies

    def recording(bodies: list[BodyFeatures], sacrum_below: bool) -> LabellingResult:
        result = original(bodies, sacrum_below)
        calls.append((bodies, sacrum_below, result))
        return result

    inference.label_bodies = recording
    try:
        yield calls
    finally:
        inference.label_bodies = original


def _field(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def describe(bodies: list[BodyFeatures], sacrum_below: bool, result: LabellingResult) -> list[str]:
    """One line per body (cranial -> caudal), then the notes."""
    lines = [f"sacrum below the lowest body: {sacrum_below}",
             "  z mm | height mm | rib L mm3 (bearing) | rib R mm3 (bearing) | thoracic vote | cut | field L/R/P mm"
             " | name"]
    for b, d in zip(bodies, result.decisions, strict=True):
        name = "-" if d.level is None else d.level.name + ("?" if d.uncertain else "")
        cut = "top" if b.cut_top else "bottom" if b.cut_bottom else "yes" if b.cut_by_fov else "no"
        lines.append(f"  {b.centroid_mm[2]:6.1f} | {b.height_mm:5.1f} | {b.rib_left_mm3:6.0f} ({b.rib_left}) | "
                     f"{b.rib_right_mm3:6.0f} ({b.rib_right}) | {b.thoracic_vote:.2f} | {cut} | "
                     f"{_field(b.field_left_mm)}/{_field(b.field_right_mm)}/{_field(b.field_posterior_mm)} | {name}")
    lines.extend(f"  note: {n}" for n in result.notes)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="+", type=Path)
    args = parser.parse_args(argv)
    segmenter = inference.load_segmenter(SegmentationSettings(device="cpu"))
    for case in args.cases:
        print(f"== {case}")
        with recorded_features() as calls:
            segmenter.segment(load_ct(case))
        if not calls:
            print("  no vertebral body found: the labelling step did not run")
        for bodies, sacrum_below, result in calls:
            print("\n".join(describe(bodies, sacrum_below, result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
