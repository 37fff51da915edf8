"""Optional backend: TotalSegmentator (if the ``totalsegmentator`` package and its weights are installed).

Not installed in this project's environment: the adapter is guarded and raises a clear error when selected
without the package.  It converts TotalSegmentator v2 whole-vertebra labels to bodies (body_split) and keeps
TotalSegmentator's level names, flagging nothing as uncertain except FOV-cut bodies' notes.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

from service.domain.levels import VertebraLevel
from service.domain.segmentation import LabelledVertebra, SpineSegmentation
from service.domain.volume import CTVolume
from service.segmentation import classes as cls
from service.segmentation.body_split import split_body
from service.segmentation.geometry import canonical_frame

logger = logging.getLogger(__name__)


def available() -> bool:
    return importlib.util.find_spec("totalsegmentator") is not None


class TotalSegmentatorSegmenter:
    name = "TotalSegmentator"

    def __init__(self, device: str = "auto") -> None:
        if not available():
            raise RuntimeError("backend 'totalsegmentator' selected but the totalsegmentator package is not "
                               "installed (pip install TotalSegmentator, and download its weights)")
        self.version = importlib.metadata.version("TotalSegmentator")
        self.device = "gpu" if device in ("auto", "cuda") else "cpu"

    def segment(self, volume: CTVolume) -> SpineSegmentation:
        # optional dependency, not installed here: imported only when this backend runs
        from totalsegmentator.python_api import totalsegmentator  # type: ignore[import-not-found]  # noqa: PLC0415

        ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume.affine_lps
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "ct.nii.gz"
            nib.save(nib.Nifti1Image(volume.hu.astype(np.int16), ras), str(src))
            img = totalsegmentator(nib.load(str(src)), None, ml=True, task="total", device=self.device,
                                   quiet=True)
            lab = np.asarray(img.dataobj).astype(np.int16)
        frame = canonical_frame(volume.affine_lps, volume.shape)
        levels = frame.to_canonical(cls.totalseg_vertebra_levels(lab))
        cord = frame.to_canonical(lab == cls.TOTALSEG_SPINAL_CORD_ID)
        body = np.zeros(levels.shape, dtype=np.int16)
        for v in np.unique(levels):
            if v == 0 or v > int(VertebraLevel.L5):
                continue
            body[split_body(levels == v, frame.spacing_mm, cord)] = v
        body_native = frame.to_native(body)
        posterior = (cls.totalseg_vertebra_levels(lab) > 0) & (body_native == 0)
        vertebrae = []
        head_foot, _ = volume.superior_axis()  # the slice axis only on an axial series; a sagittal one has it in-plane
        for v in np.unique(body_native):
            if v == 0:
                continue
            coords = np.argwhere(body_native == v)
            k = coords[:, head_foot]
            vertebrae.append(LabelledVertebra(
                level=VertebraLevel(int(v)),
                centroid_lps_mm=tuple(float(c) for c in volume.index_to_lps(coords.mean(axis=0))),  # type: ignore[arg-type]
                cut_by_fov=bool(k.min() == 0 or k.max() == volume.shape[head_foot] - 1)))
        return SpineSegmentation(body_labels=body_native.astype(np.int16), posterior_mask=posterior,
                                 vertebrae=tuple(vertebrae), model_name=self.name, model_version=self.version,
                                 notes=("levels as named by TotalSegmentator (no anatomical checks)",))
