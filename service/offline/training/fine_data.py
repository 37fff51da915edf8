"""Training data of the fine body model: synthetic phantoms rendered at 1.25 mm, cropped to the spine.

Each phantom (``random_spec`` seeded ``[seed, index]``) is rendered on a 1.25 mm isotropic grid (the renderer
applies the spec's slice-thickness blur and noise, so thick-slice partial volume is in the data), put on the
canonical +L, +P, +S grid, and cropped in the axial plane to the spine (bodies, discs, posterior elements) plus
``TUBE_MARGIN_MM``.  Cached as ``case_NNNN.npz`` (hu int16, target uint8) under the cache folder (gitignored).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from service.offline.phantom.api import generate, random_spec
from service.segmentation.fine_classes import (
    FINE_NUM_CLASSES,
    FINE_RIB,
    FINE_SPACING_MM,
    TUBE_MARGIN_MM,
    phantom_fine_targets,
)
from service.segmentation.geometry import canonical_frame

logger = logging.getLogger(__name__)


def spine_tube_bbox(target: npt.NDArray[np.uint8], spacing_mm: float,
                    margin_mm: float = TUBE_MARGIN_MM) -> tuple[slice, slice, slice]:
    """Axial bounding box of the labelled spine (bodies, discs, posterior elements) plus a margin (full z)."""
    fg = np.argwhere((target > 0) & (target != FINE_RIB))
    if len(fg) == 0:
        raise ValueError("no spine labels in the phantom")
    m = round(margin_mm / spacing_mm)
    lo = np.maximum(fg.min(axis=0) - m, 0)
    hi = np.minimum(fg.max(axis=0) + m + 1, np.array(target.shape))
    return (slice(int(lo[0]), int(hi[0])), slice(int(lo[1]), int(hi[1])), slice(0, target.shape[2]))


def fine_phantom_case(seed: int, index: int) -> tuple[npt.NDArray[np.int16], npt.NDArray[np.uint8], dict[str, Any]]:
    rng = np.random.default_rng([seed, index])
    spec = random_spec(rng)
    ph = generate(spec, spacing_mm=(FINE_SPACING_MM,) * 3)
    frame = canonical_frame(ph.volume.affine_lps, ph.volume.shape)
    hu = frame.to_canonical(ph.volume.hu)
    target = phantom_fine_targets(frame.to_canonical(ph.labels))
    box = spine_tube_bbox(target, FINE_SPACING_MM)
    info = {"region": spec.region, "slice_thickness_mm": spec.slice_thickness_mm, "low_dose": spec.low_dose,
            "shape": [s.stop - s.start for s in box]}
    return (np.clip(np.round(hu[box]), -1024, 3071).astype(np.int16), np.ascontiguousarray(target[box]), info)


def build_fine_cache(cache: Path, seed: int, cases: int, part: int = 0, parts: int = 1) -> list[Path]:
    """Render (or reuse) the cached cases; ``part``/``parts`` split the work between processes."""
    folder = cache / f"fine{FINE_NUM_CLASSES}_seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    t0 = time.perf_counter()
    for i in range(part, cases, parts):
        path = folder / f"case_{i:04d}.npz"
        if not path.is_file():
            hu, target, info = fine_phantom_case(seed, i)
            tmp = path.with_suffix(".tmp.npz")
            np.savez_compressed(tmp, hu=hu, target=target, info=json.dumps(info))
            tmp.replace(path)
            logger.info("fine phantom %d/%d rendered (%.0f s) %s", i + 1, cases, time.perf_counter() - t0, info)
        files.append(path)
    return files


if __name__ == "__main__":  # python -m service.offline.training.fine_data CACHE SEED CASES [PART PARTS]
    import sys

    logging.basicConfig(level=logging.INFO)
    extra = [int(a) for a in sys.argv[4:6]]
    build_fine_cache(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), *extra)
