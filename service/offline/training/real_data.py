"""Real labelled CT for training (optional ``--real-data DIR``), mapped to the coarse model's targets.

Accepted layouts (one case per sub-folder, or files directly in DIR for VerSe):
  * TotalSegmentator-style: ``ct.nii.gz`` + ``segmentations/*.nii.gz`` (one binary file per structure, e.g.
    ``vertebrae_L1.nii.gz``, ``rib_left_3.nii.gz``, ``sacrum.nii.gz``, ``spinal_cord.nii.gz``), or a multilabel
    file in the v2 numbering (``totalseg_labels.nii.gz``, ``segmentations.nii.gz`` or ``labels.nii.gz``).
  * VerSe-style: ``*_ct.nii.gz`` + ``*_seg-vert_msk.nii.gz`` (1-24 = C1-L5, 25 = L6, 28 = T13).
Whole-vertebra labels are split into body / posterior elements with body_split.split_body; classes the source
does not annotate are IGNOREd in the loss (classes.whole_vertebra_targets).
Never put the acceptance cases of ../shared/data in this folder: they are the test.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt

from service.domain.levels import TOTALSEG_V2_RIB_IDS, TOTALSEG_V2_SACRUM_ID, TOTALSEG_V2_VERTEBRA_IDS, VertebraLevel
from service.domain.volume import CTVolume
from service.offline.evaluation.segmentation import labels_on_ct_grid, load_ct, nifti_to_lps
from service.segmentation import classes as cls
from service.segmentation.body_split import split_body
from service.segmentation.geometry import canonical_frame, coarse_grid, resample_to_coarse

logger = logging.getLogger(__name__)

MULTILABEL_NAMES = ("totalseg_labels.nii.gz", "segmentations.nii.gz", "labels.nii.gz")
TS_NAME_TO_ID: dict[str, int] = {f"vertebrae_{lv.name}": i for i, lv in TOTALSEG_V2_VERTEBRA_IDS.items()}
TS_NAME_TO_ID["sacrum"] = TOTALSEG_V2_SACRUM_ID
TS_NAME_TO_ID["spinal_cord"] = cls.TOTALSEG_SPINAL_CORD_ID
for _n in range(1, 13):
    TS_NAME_TO_ID[f"rib_left_{_n}"] = TOTALSEG_V2_RIB_IDS[_n - 1]
    TS_NAME_TO_ID[f"rib_right_{_n}"] = TOTALSEG_V2_RIB_IDS[12 + _n - 1]

Case = tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]


def _ts_multilabel(case: Path, volume: CTVolume) -> npt.NDArray[np.int16] | None:
    for name in MULTILABEL_NAMES:
        if (case / name).is_file():
            return labels_on_ct_grid(case / name, volume)
    seg_dir = case / "segmentations"
    if seg_dir.is_dir():
        out = np.zeros(volume.shape, dtype=np.int16)
        for f in sorted(seg_dir.glob("*.nii.gz")):
            ts_id = TS_NAME_TO_ID.get(f.name[: -len(".nii.gz")])
            if ts_id is not None:
                out[labels_on_ct_grid(f, volume) > 0] = ts_id
        return out
    return None


def targets_from_levels(hu_can: npt.NDArray[np.float32], levels_can: npt.NDArray[np.int16],
                        group_can: npt.NDArray[np.int16], ribs: npt.NDArray[np.bool_] | None,
                        sacrum: npt.NDArray[np.bool_] | None, cord: npt.NDArray[np.bool_] | None,
                        spacing: tuple[float, float, float]) -> npt.NDArray[np.uint8]:
    body = np.zeros(levels_can.shape, dtype=bool)
    for v in np.unique(levels_can):
        if v == 0:
            continue
        body |= split_body(levels_can == v, spacing, cord)
    return cls.whole_vertebra_targets(group_can, body, hu_can, ribs, sacrum)


def load_case(case: Path) -> Case | None:
    """(coarse HU, coarse target) on the canonical 3 mm grid, or None when the folder is not a labelled case."""
    verse_ct = sorted(case.glob("*_ct.nii.gz"))
    if verse_ct:
        msk = sorted(case.glob("*_seg-vert_msk.nii.gz"))
        if not msk:
            return None
        img = nib.load(str(verse_ct[0]))
        volume = CTVolume(hu=np.asarray(img.dataobj, dtype=np.float32), affine_lps=nifti_to_lps(img.affine))
        lab = labels_on_ct_grid(msk[0], volume)
        levels, group = cls.verse_vertebra_levels(lab)
        levels = np.where(levels < 0, 100, levels).astype(np.int16)  # L6 / T13: own instance id for splitting
        ribs = sacrum = cord = None
    elif (case / "ct.nii.gz").is_file() or (case / "dicom").is_dir():
        volume = load_ct(case)
        lab = _ts_multilabel(case, volume)
        if lab is None:
            return None
        levels = cls.totalseg_vertebra_levels(lab)
        group = np.zeros(levels.shape, dtype=np.int16)
        group[(levels >= 1) & (levels <= int(VertebraLevel.T12))] = cls.BODY_THORACIC
        group[(levels > int(VertebraLevel.T12)) & (levels <= int(VertebraLevel.L5))] = cls.BODY_LUMBAR
        sac_native = (lab == TOTALSEG_V2_SACRUM_ID) | (levels == int(VertebraLevel.S1))
        levels[levels == int(VertebraLevel.S1)] = 0
        ribs = np.isin(lab, TOTALSEG_V2_RIB_IDS)
        sacrum = sac_native
        cord = lab == cls.TOTALSEG_SPINAL_CORD_ID
    else:
        return None
    frame = canonical_frame(volume.affine_lps, volume.shape)
    grid = coarse_grid(frame)
    hu_can = frame.to_canonical(volume.hu.astype(np.float32))
    tgt_native_can = targets_from_levels(
        hu_can, frame.to_canonical(levels), frame.to_canonical(group),
        None if ribs is None else frame.to_canonical(ribs), None if sacrum is None else frame.to_canonical(sacrum),
        None if cord is None else frame.to_canonical(cord), frame.spacing_mm)
    hu = resample_to_coarse(np.ascontiguousarray(hu_can), grid)
    tgt = resample_to_coarse(np.ascontiguousarray(tgt_native_can), grid, order=0).astype(np.uint8)
    return hu, tgt


def load_real_folder(folder: Path) -> list[Case]:
    if not folder.is_dir():
        raise FileNotFoundError(f"--real-data folder not found: {folder}")
    candidates = [folder, *sorted(p for p in folder.iterdir() if p.is_dir())]
    cases = []
    for c in candidates:
        if re.search(r"shared/data", str(c.resolve())):
            raise ValueError(f"{c} is acceptance test data (../shared/data); it must not be used for training")
        loaded = load_case(c)
        if loaded is not None:
            cases.append(loaded)
            logger.info("real case %s: coarse shape %s", c.name, loaded[0].shape)
    if not cases:
        raise FileNotFoundError(f"no TotalSegmentator-style or VerSe-style labelled case found in {folder}")
    return cases
