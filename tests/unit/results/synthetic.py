"""Small synthetic CT series (written with pydicom) plus box-shaped vertebrae and a hand-built ScreeningResult.

Used until the phantom generator is available; small on purpose (64 x 64 x 20) so the validators run fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid

from service.domain.guidelines import Thresholds, categorize
from service.domain.levels import VertebraLevel
from service.domain.results import (
    CalibrationKind,
    CurveFit,
    ExclusionReason,
    LinearCalibration,
    PatientSummary,
    RoiMethod,
    ScreeningResult,
    VertebraMeasurement,
)
from service.domain.segmentation import LabelledVertebra, SpineSegmentation
from service.domain.volume import CTVolume
from tests.support import ct_series

# Orientations (ImageOrientationPatient) with the patient position they stand for.
HEAD_FIRST_SUPINE = ("HFS", (1.0, 0.0, 0.0, 0.0, 1.0, 0.0))  # slice normal +S: k goes to the head
FEET_FIRST_SUPINE = ("FFS", (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0))  # slice normal -S: k goes to the feet
HEAD_FIRST_PRONE = ("HFP", (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0))  # in-plane flipped both ways, normal +S


@dataclass(frozen=True)
class SyntheticCase:
    volume: CTVolume
    segmentation: SpineSegmentation
    roi_labels: np.ndarray
    result: ScreeningResult
    paths: tuple[Path, ...]


SYNTHETIC_HEADER = {
    "SpecificCharacterSet": "ISO_IR 100", "StudyDate": "20240102", "SeriesDate": "20240102", "StudyTime": "101010",
    "SeriesTime": "101010", "AccessionNumber": "ACC123", "Manufacturer": "SYNTH",
    "ManufacturerModelName": "Box scanner", "StudyDescription": "CT ABDOMEN", "PatientName": "Test^Patient",
    "PatientID": "PID0001", "PatientAge": "074Y", "BodyPartExamined": "ABDOMEN", "SeriesNumber": 3,
    "PositionReferenceIndicator": "", "AcquisitionNumber": 1,
}
"""Header of the synthetic series over the writer's defaults (result objects copy the patient and study)."""


def write_ct_series(
    out_dir: Path,
    orientation: tuple[str, tuple[float, ...]] = HEAD_FIRST_SUPINE,
    shape: tuple[int, int, int] = (64, 64, 20),
    pixel_spacing_mm: tuple[float, float] = (1.5, 1.2),
    slice_spacing_mm: float = 4.0,
    hu: np.ndarray | None = None,
) -> CTVolume:
    """Write a CT series (one file per slice, files named in shuffled order) and return its CTVolume.

    ``shape`` is (columns, rows, slices); pixel_spacing_mm is (row spacing, column spacing) as in DICOM.
    """
    position, iop = orientation
    n_slices = shape[2]
    header = ct_series.CTSeriesHeader(
        orientation=iop, pixel_spacing_mm=pixel_spacing_mm, slice_thickness_mm=slice_spacing_mm, rescale_intercept=0.0,
        extra={**SYNTHETIC_HEADER, "SeriesDescription": f"synthetic {position}", "PatientPosition": position})
    origin = np.array([-40.0, -30.0, -50.0])
    if hu is None:
        rng = np.random.default_rng(0)
        hu = rng.normal(0.0, 5.0, size=shape).astype(np.float32)
    affine = np.eye(4)
    affine[:3, 0] = np.array(iop[:3]) * pixel_spacing_mm[1]
    affine[:3, 1] = np.array(iop[3:]) * pixel_spacing_mm[0]
    affine[:3, 2] = header.normal * slice_spacing_mm
    affine[:3, 3] = origin

    sop_uids = [generate_uid() for _ in range(n_slices)]
    order = np.random.default_rng(1).permutation(n_slices)
    paths = ct_series.write_ct_series(out_dir, np.round(hu).astype(np.int16).T, header, origin_lps_mm=origin,
                                      sop_instance_uids=sop_uids, file_name=lambda k: f"img{order[k]:04d}.dcm")
    return CTVolume(
        hu=hu.astype(np.float32),
        affine_lps=affine,
        study_instance_uid=header.study_instance_uid,
        series_instance_uid=header.series_instance_uid,
        frame_of_reference_uid=header.frame_of_reference_uid,
        sop_instance_uids=tuple(sop_uids),
        source_paths=tuple(paths),
        kvp=120.0,
        manufacturer="SYNTH",
        manufacturer_model_name="Box scanner",
        patient_sex="F",
        patient_age_years=74.0,
    )


def box_spine(volume: CTVolume, levels: tuple[VertebraLevel, ...]) -> tuple[SpineSegmentation, np.ndarray]:
    """Box-shaped vertebral bodies stacked cranial to caudal along the superior axis, ROIs 1 voxel inside.

    The boxes are deliberately asymmetric in i and j (and off-centre) so a transposed or flipped mask is caught.
    """
    body = np.zeros(volume.shape, dtype=np.int16)
    roi = np.zeros(volume.shape, dtype=np.int16)
    axis, sign = volume.superior_axis()
    if axis != 2:
        raise ValueError("box_spine expects axial slices")
    n_k = volume.shape[2]
    height = max(3, (n_k - 2) // len(levels))
    vertebrae = []
    for n, level in enumerate(levels):  # cranial first
        top = 1 + n * height
        ks = range(top, top + height - 1)
        if sign > 0:  # k increases to the head: cranial means high k
            ks = range(n_k - 1 - (top + height - 2), n_k - top)
        k0, k1 = ks.start, ks.stop
        i0, i1, j0, j1 = 20, 44 + n, 30, 46
        body[i0:i1, j0:j1, k0:k1] = int(level)
        roi[i0 + 2 : i1 - 3, j0 + 2 : j1 - 2, k0 + 1 : k1 - 1] = int(level)
        centroid = volume.index_to_lps([(i0 + i1 - 1) / 2, (j0 + j1 - 1) / 2, (k0 + k1 - 1) / 2])
        vertebrae.append(LabelledVertebra(level=level, centroid_lps_mm=tuple(float(c) for c in centroid)))
    seg = SpineSegmentation(body_labels=body, posterior_mask=None, vertebrae=tuple(vertebrae),
                            model_name="box-model", model_version="0.0.1")
    return seg, roi


def hand_result(volume: CTVolume, segmentation: SpineSegmentation, roi: np.ndarray,
                with_curve: bool = False, thresholds: Thresholds | None = None) -> ScreeningResult:
    """A ScreeningResult with the real ROI statistics, one excluded level and a normal/osteopenia mix.

    ``thresholds``: the site's cut-offs, carried in the summary (None: the guideline set, recorded by name only).
    """
    calibration = LinearCalibration(kind=CalibrationKind.INTERNAL, slope=0.83, intercept=-1.5,
                                    scanner="SYNTH Box scanner 120 kVp", source="test")
    measurements = []
    for n, v in enumerate(segmentation.vertebrae):
        mask = roi == int(v.level)
        values = volume.hu[mask]
        count = int(mask.sum())
        if count == 0:
            measurements.append(VertebraMeasurement(
                level=v.level, centroid_lps_mm=v.centroid_lps_mm, roi_method=RoiMethod.EROSION_3MM,
                trabecular_hu_mean=None, trabecular_hu_median=None, trabecular_hu_sd=None, voxel_count=0,
                roi_volume_mm3=0.0, bmd_mg_cm3=None, evaluable=False, exclusion_reason=ExclusionReason.ROI_TOO_SMALL))
            continue
        excluded = n == 0
        hu_mean = float(values.mean()) + 100.0 + 7.3 * n  # offset: distinct per level, deterministic
        measurements.append(
            VertebraMeasurement(
                level=v.level,
                centroid_lps_mm=v.centroid_lps_mm,
                roi_method=RoiMethod.EROSION_3MM,
                trabecular_hu_mean=hu_mean,
                trabecular_hu_median=hu_mean - 0.4,
                trabecular_hu_sd=float(values.std()) + 10.0,
                voxel_count=count,
                roi_volume_mm3=count * volume.voxel_volume_mm3,
                bmd_mg_cm3=None if excluded else calibration.bmd_mg_cm3(hu_mean),
                evaluable=not excluded,
                exclusion_reason=ExclusionReason.FRACTURE if excluded else None,
                exclusion_detail="anterior height 62 % of neighbours" if excluded else None,
            )
        )
    used = tuple(m.level for m in measurements if m.evaluable)
    bmd_values = [m.bmd_mg_cm3 for m in measurements if m.bmd_mg_cm3 is not None]
    summary_bmd = float(np.mean(bmd_values)) if bmd_values else None
    category = categorize(summary_bmd, thresholds)
    curve = None
    if with_curve:
        curve = CurveFit(k=-3.2, intercept=140.0, r2=0.81, levels_used=used)
    return ScreeningResult(
        study_instance_uid=volume.study_instance_uid,
        series_instance_uid=volume.series_instance_uid,
        vertebrae=tuple(measurements),
        summary=PatientSummary(bmd_mg_cm3=summary_bmd, levels_used=used, category=category,
                               method="mean of evaluable levels, 3 mm erosion ROI, internal calibration",
                               threshold_set=thresholds.identifier if thresholds else "ACR2018-ISCD-v1",
                               thresholds=thresholds),
        calibration=calibration,
        curve_fit=curve,
        algorithm_version="0.1.0",
    )


def synthetic_case(out_dir: Path, orientation: tuple[str, tuple[float, ...]] = HEAD_FIRST_SUPINE,
                   levels: tuple[VertebraLevel, ...] = (VertebraLevel.T12, VertebraLevel.L1, VertebraLevel.L2),
                   with_curve: bool = False, shape: tuple[int, int, int] = (64, 64, 20)) -> SyntheticCase:
    volume = write_ct_series(out_dir, orientation, shape=shape)
    segmentation, roi = box_spine(volume, levels)
    hu = volume.hu.copy()
    hu[segmentation.body_labels > 0] += 250.0  # cortical-ish bodies, visible on the key image
    hu[roi > 0] -= 100.0
    # Same CT with bone: rewrite the series so the files carry the bone too.
    volume = write_ct_series(out_dir, orientation, shape=shape, hu=hu)
    result = hand_result(volume, segmentation, roi, with_curve=with_curve)
    return SyntheticCase(volume, segmentation, roi, result, volume.source_paths)


def read_headers(paths: tuple[Path, ...]) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
