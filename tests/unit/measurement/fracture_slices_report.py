"""The fracture check on phantom fractures at thick slices with the node's own segmentation (not a test: the figures
of the issue-15 note of session 7 on why 3-5 mm slices mostly answer "not measurable").

    PYTHONPATH=. .venv/bin/python -m tests.unit.measurement.fracture_slices_report [--edge-drop-hu 60]

One abdomen phantom (seed 11) with an L2 wedge, biconcave (32 % height loss) or crush (45 %) at 3 and 5 mm slices;
prints the fracture outcome of ``assess_bmd`` for L1-L3 (committed model on the CPU). ``--edge-drop-hu`` overrides
``endplates.MIN_EDGE_DROP_HU`` for the run, to see what a lower endplate threshold finds.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from service.calibration.assess import assess_bmd
from service.calibration.settings import BmdSettings
from service.domain.levels import VertebraLevel as V
from service.measurement import endplates
from service.offline.phantom.api import PhantomSpec, generate
from service.segmentation.inference import load_segmenter
from service.segmentation.settings import SegmentationSettings

REPO = Path(__file__).resolve().parents[3]
FRACTURES = (("wedge", 0.32), ("biconcave", 0.32), ("crush", 0.45))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--edge-drop-hu", type=float, default=endplates.MIN_EDGE_DROP_HU)
    args = parser.parse_args(argv)
    endplates.MIN_EDGE_DROP_HU = args.edge_drop_hu
    torch.set_num_threads(2)
    segmenter = load_segmenter(SegmentationSettings(bundle_dir=REPO / "models" / "vertebra_seg", device="cpu"))
    for thickness_mm in (3.0, 5.0):
        for kind, loss in FRACTURES:
            spec = PhantomSpec(seed=11, region="abdomen", slice_thickness_mm=thickness_mm,
                               fracture_levels=(V.L2,), fracture_kind=kind, fracture_height_loss=loss)
            volume = generate(spec).volume
            result = assess_bmd(volume, segmenter.segment(volume), BmdSettings(calibration_store_dir=None)).result
            print(f"== {thickness_mm:g} mm, L2 {kind} {loss:.0%} (edge threshold {args.edge_drop_hu:g} HU)")
            for m in result.vertebrae:
                if m.level in (V.L1, V.L2, V.L3):
                    status = m.fracture_status.value if m.fracture_status else "not checked"
                    print(f"  {m.level.name}{'?' if m.level_uncertain else ''}: {status} | {m.fracture_detail}")


if __name__ == "__main__":
    main()
