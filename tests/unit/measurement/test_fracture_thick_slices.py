"""The fracture check on a 5 mm low-dose 80 kVp scan with the node's own segmentation: every level gets an outcome and
the job does not fail.  BMD set s7 case_07 (seed 2657) failed the whole study with "ValueError: anterior_mm must be
positive": two image edges of one patch closer than the slice blur gave a negative height."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from service.calibration.assess import assess_bmd
from service.calibration.settings import BmdSettings
from service.domain.levels import VertebraLevel as V
from service.domain.results import ExclusionReason
from service.measurement.endplates import image_heights
from service.measurement.fracture import mask_columns
from service.measurement.geometry import crop_labels, vertebra_frame
from service.offline.evaluation.bmd_set import case_overrides
from service.offline.phantom.api import generate, random_spec
from service.segmentation.inference import load_segmenter
from service.segmentation.settings import SegmentationSettings

BUNDLE = Path(__file__).resolve().parents[3] / "models" / "vertebra_seg"
SEED, CASE = 2657, 7


@pytest.mark.slow
def test_thick_low_dose_scan_gets_an_outcome_for_every_level() -> None:
    spec = random_spec(np.random.default_rng([SEED, CASE]),
                       **case_overrides(CASE, np.random.default_rng([SEED, CASE, 1]), rods=True, rows=None))
    assert spec.slice_thickness_mm == 5.0 and spec.low_dose and spec.kvp == 80  # the acquisition that failed
    volume = generate(spec).volume
    torch.set_num_threads(1)
    segmentation = load_segmenter(SegmentationSettings(bundle_dir=BUNDLE, device="cpu")).segment(volume)
    # every image height read on this scan is positive (or not read at all)
    crops = crop_labels(segmentation.body_labels)
    centroids = {v.level: v.centroid_lps_mm for v in segmentation.vertebrae if not v.cut_by_fov}
    for v in segmentation.vertebrae:
        body = crops.get(int(v.level))
        if body is None or v.cut_by_fov:
            continue
        frame = vertebra_frame(v.level, v.centroid_lps_mm, centroids)
        columns = mask_columns(volume, body, frame)
        if columns is not None:
            read = image_heights(volume, frame, columns)
            assert all(h is None or h > 0 for h in read.columns_mm), (v.level.name, read)
    result = assess_bmd(volume, segmentation, BmdSettings(calibration_store_dir=None)).result
    checked = [m for m in result.vertebrae if V.T1 <= m.level <= V.L5]
    assert checked and all(m.fracture_status is not None and m.fracture_detail for m in checked)
    # and the summary tells the radiologist that the check is limited at this thickness
    limited = [n for n in result.summary.notes if n.startswith("fracture check limited by 5.")]
    assert len(limited) == 1, result.summary.notes
    # a level whose ROI the slice thickness emptied says so
    too_small = [m.exclusion_detail or "" for m in result.vertebrae
                 if m.exclusion_reason is ExclusionReason.ROI_TOO_SMALL]
    assert too_small and all("slices of 5.0 mm" in d for d in too_small), too_small
