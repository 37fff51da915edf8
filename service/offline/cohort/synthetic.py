"""Synthetic cohort: per-level trabecular HU from the phantom density model plus measurement noise.

Everything here is SYNTHETIC; rows carry ``source = synthetic`` and every report built on them shows a banner.

Truth per patient: ``service.offline.phantom.density.draw_patient`` (Xiong 2025 category / sex / age mix, per-level BMD
with the thoracolumbar gradient and 3 % anatomical scatter per level). HU from BMD through the phantom's declared
relation (``bmd_to_hu``, 120 kVp, unenhanced), then the measurement model below, chosen to land near the errors
Xiong 2025 reports (abdominal MAE 7-12 mg/cm3, AUC 0.93-0.97), i.e. realistic and not trivially separable:

* scanner variation: each patient is scanned on one of ``SCANNERS`` (mineral-HU gain and offset differ, as between
  uncalibrated scanners; the QCT reference is phantom-calibrated and does not see it);
* a patient-level HU offset (body size / beam hardening), SD ``PATIENT_OFFSET_SD_HU``;
* per level: segmentation jitter / ROI placement (relative SD ``LEVEL_RELATIVE_SD`` of the mineral HU plus
  ``LEVEL_ABSOLUTE_SD_HU``) and ROI noise (voxel SD / sqrt(voxels) ~ ``ROI_NOISE_SD_HU``), plus
  ``THORACIC_EXTRA_SD_HU`` at T5-T10 (smaller bodies, cardiac and breathing motion);
* a patient-specific offset shared by T5-T10 (``THORACIC_PATIENT_OFFSET_SD_HU``);
* a level-dependent bias: upper thoracic levels read higher (``THORACIC_BIAS_HU_AT_T5`` at T5, fading to 0 at T12:
  heart / rib proximity and partial volume on chest CT);
* a level missing (not evaluable: fracture, artefact) with probability ``MISSING_LEVEL_PROBABILITY``;
* the QCT reference: the L1-L2 truth times (1 + N(0, ``QCT_RELATIVE_SD``)) (QCT precision ~2-3 % plus change
  between the CT and the QCT visit); the category follows from the QCT value.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from service.domain.levels import VertebraLevel
from service.offline.phantom.api import PhantomSpec, generate, write_phantom
from service.offline.phantom.density import HU_INTERCEPT, bmd_to_hu, draw_patient
from service.site_models.cohort import (
    FEATURE_LEVELS,
    CohortRow,
    assign_splits,
    category_from_bmd,
    write_cohort,
)

logger = logging.getLogger(__name__)

SYNTHETIC_SOURCE = "synthetic"
SYNTHETIC_CT_SOURCE = "synthetic_ct"


@dataclass(frozen=True)
class ScannerModel:
    name: str
    mineral_gain: float
    """Multiplier of the mineral part of trabecular HU relative to the phantom's declared relation."""
    offset_hu: float
    weight: float


SCANNERS: tuple[ScannerModel, ...] = (
    ScannerModel("synthetic-scanner-A 120kVp", 1.00, 0.0, 0.5),
    ScannerModel("synthetic-scanner-B 120kVp", 1.05, 4.0, 0.3),
    ScannerModel("synthetic-scanner-C 120kVp", 0.95, -5.0, 0.2),
)
PATIENT_OFFSET_SD_HU = 7.0
LEVEL_RELATIVE_SD = 0.04
LEVEL_ABSOLUTE_SD_HU = 4.0
ROI_NOISE_SD_HU = 35.0 / np.sqrt(1500.0)
"""Voxel SD ~35 HU over ~1500 ROI voxels (3 mm eroded body at 0.7 x 0.7 x 1 mm)."""
THORACIC_EXTRA_SD_HU = 10.0
"""Extra per-level scatter for T5-T10 on chest CT (smaller bodies -> fewer ROI voxels; cardiac / breathing motion)."""
THORACIC_PATIENT_OFFSET_SD_HU = 6.0
"""A patient-specific offset shared by T5-T10 on chest CT (heart and lung partial volume, breathing, arm position):
the chest levels relate less tightly to the lumbar QCT than T12-L2 do, as in Xiong 2025 (chest worse than abdomen)."""
THORACIC_BIAS_HU_AT_T5 = 4.0
MISSING_LEVEL_PROBABILITY = 0.02
QCT_RELATIVE_SD = 0.04


def _level_bias_hu(level: VertebraLevel) -> float:
    steps_to_t12 = int(VertebraLevel.T12) - int(level)
    span = int(VertebraLevel.T12) - int(VertebraLevel.T5)
    return THORACIC_BIAS_HU_AT_T5 * max(0, steps_to_t12) / span


def synthetic_rows(
    n_patients: int, seed: int, *, missing_level_probability: float = MISSING_LEVEL_PROBABILITY
) -> list[CohortRow]:
    """``n_patients`` synthetic rows with per-level HU, QCT BMD/category and a Xiong-style split."""
    if n_patients < 1:
        raise ValueError(f"n_patients must be >= 1, got {n_patients}")
    if not (0.0 <= missing_level_probability < 1.0):
        raise ValueError(f"missing_level_probability must be within [0, 1), got {missing_level_probability}")
    rng = np.random.default_rng(seed)
    weights = np.array([s.weight for s in SCANNERS])
    drafts = []
    for i in range(n_patients):
        patient = draw_patient(rng)
        scanner = SCANNERS[int(rng.choice(len(SCANNERS), p=weights / weights.sum()))]
        patient_offset = rng.normal(0.0, PATIENT_OFFSET_SD_HU)
        thoracic_offset = rng.normal(0.0, THORACIC_PATIENT_OFFSET_SD_HU)
        hu: dict[VertebraLevel, float] = {}
        for level in FEATURE_LEVELS:
            true_hu = bmd_to_hu(patient.bmd_by_level[level])
            mineral = (true_hu - HU_INTERCEPT) * scanner.mineral_gain * (1.0 + rng.normal(0.0, LEVEL_RELATIVE_SD))
            measured = (
                HU_INTERCEPT + mineral + scanner.offset_hu + patient_offset + _level_bias_hu(level)
                + rng.normal(0.0, LEVEL_ABSOLUTE_SD_HU) + rng.normal(0.0, ROI_NOISE_SD_HU)
            )
            if level <= VertebraLevel.T10:
                measured += thoracic_offset + rng.normal(0.0, THORACIC_EXTRA_SD_HU)
            if rng.random() >= missing_level_probability:
                hu[level] = round(float(measured), 2)
        qct = float(np.clip(patient.l1_l2_bmd_mg_cm3 * (1.0 + rng.normal(0.0, QCT_RELATIVE_SD)), 5.0, 350.0))
        drafts.append((i, patient, scanner, hu, round(qct, 2)))
    categories = [category_from_bmd(d[4]) for d in drafts]
    splits = assign_splits(n_patients, seed + 1, categories)
    return [
        CohortRow(
            row=i + 1,
            patient_ref=f"SYN{seed:04d}-{i + 1:05d}",
            sex=patient.sex,
            age_years=float(patient.age_years),
            qct_bmd_mg_cm3=qct,
            qct_category=cat,
            split=split,
            hu_by_level=hu,
            source=SYNTHETIC_SOURCE,
            scanner=scanner.name,
        )
        for (i, patient, scanner, hu, qct), cat, split in zip(drafts, categories, splits, strict=True)
    ]


def write_synthetic_cohort(
    out_dir: Path, n_patients: int, seed: int, *, with_ct: int = 0,
    missing_level_probability: float = MISSING_LEVEL_PROBABILITY,
) -> Path:
    """Write ``out_dir/cohort.csv``; with ``with_ct`` > 0 the first rows also get a full phantom CT series."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = synthetic_rows(n_patients, seed, missing_level_probability=missing_level_probability)
    if with_ct:
        rows = _attach_phantom_ct(rows, out_dir, with_ct, seed)
    path = write_cohort(out_dir / "cohort.csv", rows)
    logger.info("synthetic cohort: %d rows (%d with phantom CT) -> %s", len(rows), with_ct, path)
    return path


PHANTOM_CT_SPEC: dict[str, object] = {"region": "chest-abdomen", "rows": 256, "columns": 256,
                                      "pixel_spacing_mm": 1.5, "slice_thickness_mm": 2.0}
"""Phantom CTs for the cohort: chest-abdomen coverage (T5-L2) at a modest size (a handful of rows, tests / demo)."""


def _attach_phantom_ct(rows: list[CohortRow], out_dir: Path, k: int, seed: int) -> list[CohortRow]:
    """Render a phantom CT for the first ``k`` rows; their QCT comes from the phantom truth.

    The phantom draws its own per-level BMD for the row's sex and age; the row's HU columns are cleared so the
    features come from the CT through the node's pipeline (``features.extract_features``), and ``qct_bmd_mg_cm3``
    is the phantom's L1-L2 truth with the same QCT noise as the table rows.
    """
    rng = np.random.default_rng(seed + 7)
    out = list(rows)
    for i in range(min(k, len(rows))):
        r = rows[i]
        ct_dir = out_dir / "ct" / r.patient_ref
        spec = PhantomSpec(seed=seed * 1000 + i, sex=r.sex, age_years=r.age_years, **PHANTOM_CT_SPEC)  # type: ignore[arg-type]
        phantom = generate(spec)
        truth_l12 = float(phantom.truth["patient"]["l1_l2_bmd_mg_cm3"])
        write_phantom(phantom, ct_dir)
        qct = round(float(truth_l12 * (1.0 + rng.normal(0.0, QCT_RELATIVE_SD))), 2)
        out[i] = replace(r, hu_by_level={}, ct_series_dir=_series_folder(ct_dir), source=SYNTHETIC_CT_SOURCE,
                         scanner="bmd-node phantom 120kVp",
                         qct_bmd_mg_cm3=qct, qct_category=category_from_bmd(qct))
        logger.info("phantom CT %d/%d written for %s", i + 1, k, r.patient_ref)
    return out


def _series_folder(ct_dir: Path) -> Path:
    """The folder holding the DICOM files under what write_phantom wrote (itself or its single DICOM subfolder)."""
    if any(p.suffix.lower() == ".dcm" for p in ct_dir.iterdir() if p.is_file()):
        return ct_dir
    candidates = sorted({p.parent for p in ct_dir.rglob("*.dcm")})
    if not candidates:
        raise RuntimeError(f"write_phantom wrote no .dcm files under {ct_dir}")
    return candidates[0]
