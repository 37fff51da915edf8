"""The fracture check on real CT with the node's own segmentation (not a test: the figures of docs/measurement).

    PYTHONPATH=. .venv/bin/python -m tests.unit.measurement.fracture_real_report cptac_lscc_chest ts_abdomen_t11_l2

Prints, per level, the fracture outcome of ``assess_bmd`` (committed model on the CPU, ../shared/data cases).
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import torch

from service.calibration.assess import assess_bmd
from service.calibration.settings import BmdSettings
from service.offline.evaluation.segmentation import load_ct
from service.segmentation.inference import load_segmenter
from service.segmentation.settings import SegmentationSettings
from tests.shared_data import SHARED_DATA

REPO = Path(__file__).resolve().parents[3]


def main(names: list[str]) -> None:
    torch.set_num_threads(2)
    segmenter = load_segmenter(SegmentationSettings(bundle_dir=REPO / "models" / "vertebra_seg", device="cpu"))
    for name in names:
        volume = load_ct(SHARED_DATA / name)
        result = assess_bmd(volume, segmenter.segment(volume), BmdSettings(calibration_store_dir=None)).result
        print(f"== {name}: voxel {volume.spacing_mm}")
        for m in result.vertebrae:
            status = m.fracture_status.value if m.fracture_status else "not checked"
            print(f"  {m.level.name}{'?' if m.level_uncertain else ''}: {status}, grade {m.genant_grade}, "
                  f"excluded {m.exclusion_reason.value if m.exclusion_reason else '-'} | {m.fracture_detail}")
        print("  outcomes:", dict(Counter(m.fracture_status.value if m.fracture_status else "not checked"
                                          for m in result.vertebrae)))


if __name__ == "__main__":
    main(sys.argv[1:] or ["cptac_lscc_chest", "ts_abdomen_t11_l2"])
