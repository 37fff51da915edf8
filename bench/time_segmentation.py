"""CPU time of the vertebra segmentation on one case: ``segment()`` with the models loaded (load excluded), split
into resampling, both networks and instances / labelling / refinement (``bench.pipeline.timed_segmentation``): the
"Inference time (CPU)" figures of docs/segmentation/README.md.

    .venv/bin/python -m bench.time_segmentation CASE_DIR --threads 1 [--repeats 3] [--json out.json]

CASE_DIR is a case folder as ``bmd-node evaluate segmentation`` reads it (``ct.nii.gz``, ``dicom/`` or DICOM
files): a synthetic test case (``write_testset``; the README's figure is set 1 case_00, 512 x 512 x 299 chest) or a
folder of ../shared/data.  ``--threads`` sets torch's intra-op threads before the models load.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from bench.pipeline import timed_segmentation
from service.offline.evaluation.segmentation import load_ct
from service.segmentation.inference import load_segmenter
from service.segmentation.settings import SegmentationSettings

log = logging.getLogger("bench.time_segmentation")


def time_case(case: Path, settings: SegmentationSettings, repeats: int) -> dict[str, Any]:
    """Load the CT and the models once, then time ``repeats`` segmentations."""
    volume = load_ct(case)
    started = time.perf_counter()
    segmenter = load_segmenter(settings)
    model_load_s = time.perf_counter() - started
    runs = []
    for repeat in range(repeats):
        t = time.perf_counter()
        segmentation, parts = timed_segmentation(segmenter, volume)
        runs.append({**parts, "total_s": time.perf_counter() - t, "vertebrae": len(segmentation.vertebrae)})
        log.info("repeat %d: %.2f s %s", repeat + 1, runs[-1]["total_s"], parts)
    totals = [r["total_s"] for r in runs]
    return {"case": str(case), "shape": list(volume.shape), "spacing_mm": [round(s, 3) for s in volume.spacing_mm],
            "threads": torch.get_num_threads(), "device": settings.device, "segmenter": segmenter.name,
            "model_load_s": model_load_s, "runs": runs, "total_s_min": min(totals), "total_s_max": max(totals),
            "total_s_median": statistics.median(totals)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", type=Path, help="case folder (ct.nii.gz, dicom/ or DICOM files)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bundle", type=Path, default=Path("models/vertebra_seg"))
    parser.add_argument("--fine-bundle", type=Path, default=Path("models/vertebra_body_fine"))
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.repeats < 1:
        parser.error("--threads and --repeats must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    settings = SegmentationSettings(bundle_dir=args.bundle, fine_bundle_dir=args.fine_bundle, device=args.device)
    result = time_case(args.case, settings, args.repeats)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
