"""The BMD assessment entry point: labelled vertebrae + CT -> per-level measurements, calibration, summary.

Order of work:
1. per level (every vertebra of the segmentation): trabecular ROI (configured method), HU stats, exclusion checks
   (level uncertain, cut by the field of view, metal, fracture when mask and image heights agree, ROI too small,
   sclerosis);
2. calibration, first available of: synchronous phantom rods in this scan > stored phantom calibration for this
   scanner (manufacturer, model, station, kVp; valid on the scan date) > internal (air, fat, muscle, blood) >
   default reference line ('uncalibrated'); then IV contrast (header or iodine-bright aorta): corrected and flagged;
3. BMD per evaluable level; the Xiong thoracolumbar curve over evaluable T5..L2; the patient summary (configured
   levels with adjacent substitution, else the curve's lumbar-equivalent value, else a single level, else
   indeterminate); an activated site model, when it answers, gives the summary value and category.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from datetime import date

import numpy as np
import numpy.typing as npt
import pydicom

from service.calibration.contrast import ContrastFinding, detect_contrast
from service.calibration.internal import internal_calibration
from service.calibration.level_curve import fit_level_curve
from service.calibration.linear import default_calibration, with_contrast_correction, with_flags
from service.calibration.patient_summary import summarise
from service.calibration.settings import BmdSettings
from service.calibration.store import CalibrationStore, ScannerKey, scanner_label
from service.calibration.tissues import TissueSurvey, survey_tissues
from service.domain import guidelines as diagnosis
from service.domain.levels import VertebraLevel
from service.domain.results import (
    ExclusionReason,
    FractureStatus,
    LinearCalibration,
    PatientSummary,
    RoiMethod,
    ScreeningResult,
    VertebraMeasurement,
)
from service.domain.segmentation import SpineSegmentation
from service.domain.site_model import SiteModelPredictor
from service.domain.volume import CTVolume
from service.measurement.exclusions import check_roi
from service.measurement.fracture import VertebralHeights
from service.measurement.fracture_check import (
    FIRST_CHECKED,
    LAST_CHECKED,
    NOT_CHECKED_DETAIL,
    FractureAssessment,
    LevelHeights,
    classify_fractures,
    measure_level,
    not_checked,
    thick_slice_limitation,
)
from service.measurement.geometry import CroppedMask, crop_labels, vertebra_frame
from service.measurement.hu_stats import HuStats, hu_stats
from service.measurement.roi import too_few_slices, trabecular_roi

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class BmdAssessment:
    result: ScreeningResult
    roi_labels: npt.NDArray[np.int16]
    """On the CT grid: value = VertebraLevel value where that level's trabecular ROI was measured."""
    tissue_survey: TissueSurvey | None = None
    contrast: ContrastFinding | None = None
    heights: dict[VertebraLevel, VertebralHeights] = field(default_factory=dict)


@dataclass
class _LevelWork:
    level: VertebraLevel
    centroid: tuple[float, float, float]
    body: CroppedMask | None
    roi: CroppedMask | None = None
    exclusion: tuple[ExclusionReason, str] | None = None
    level_uncertain: bool = False
    level_cues: tuple[str, ...] = ()
    fracture: FractureAssessment | None = None
    roi_note: str | None = None
    cut_by_fov: bool = False
    only_the_name_uncertain: bool = False
    """Excluded for its uncertain name alone: every other check passed (the category fallback may use it)."""


def _scan_date(volume: CTVolume) -> date:
    for key in ("acquisition_date", "study_date", "AcquisitionDate", "StudyDate"):
        value = volume.extra.get(key, "")
        if len(value) == 8 and value.isdigit():
            return date(int(value[:4]), int(value[4:6]), int(value[6:]))
    if volume.source_paths:
        try:
            ds = pydicom.dcmread(volume.source_paths[0], stop_before_pixels=True,
                                 specific_tags=["AcquisitionDate", "StudyDate"])
            value = str(getattr(ds, "AcquisitionDate", "") or getattr(ds, "StudyDate", ""))
            if len(value) == 8 and value.isdigit():
                return date(int(value[:4]), int(value[4:6]), int(value[6:]))
        except (OSError, ValueError, AttributeError):  # header unreadable: fall back to today
            pass
    return date.today()


def choose_calibration(volume: CTVolume, segmentation: SpineSegmentation, settings: BmdSettings,
                       survey: TissueSurvey | None) -> LinearCalibration:
    """Synchronous phantom > stored phantom > internal > default (before the contrast correction)."""
    scanner = scanner_label(volume)
    if settings.detect_synchronous_phantom:
        # Deferred on purpose: scipy.signal and scipy.stats (about a second) load with the first phantom search,
        # not with every import of the assessment (CLI, serve parent).
        from service.calibration.phantom import synchronous_calibration  # noqa: PLC0415


        try:
            sync = synchronous_calibration(volume, segmentation, settings.synchronous_phantom_definition)
        except (ValueError, IndexError, MemoryError) as exc:  # best effort: fall through to the next source
            logger.warning("synchronous phantom search failed: %s", exc)
            sync = None
        if sync is not None:
            return sync
    if settings.calibration_store_dir is not None and volume.kvp:
        key = ScannerKey(volume.manufacturer, volume.manufacturer_model_name, volume.station_name, float(volume.kvp))
        stored = CalibrationStore(settings.calibration_store_dir).find(key, _scan_date(volume))
        if stored is not None:
            return stored.to_linear()
    if settings.use_internal_calibration and survey is not None:
        contrast = detect_contrast(volume, survey, settings.contrast_aorta_hu).enhanced
        internal = internal_calibration(survey, volume.kvp, contrast, scanner=scanner)
        if internal is not None:
            return internal
        default = default_calibration(volume.kvp, scanner=scanner)
        return with_flags(default, "internal_calibration_failed")
    return default_calibration(volume.kvp, scanner=scanner)


def _measure_levels(volume: CTVolume, segmentation: SpineSegmentation, settings: BmdSettings
                    ) -> tuple[list[_LevelWork], dict[VertebraLevel, VertebralHeights]]:
    crops = crop_labels(segmentation.body_labels)
    # cut levels have centroids of a partial body: they would tilt their neighbours' axes
    centroids = {v.level: v.centroid_lps_mm for v in segmentation.vertebrae if not v.cut_by_fov}
    works: list[_LevelWork] = []
    heights: dict[VertebraLevel, VertebralHeights] = {}
    measured: dict[VertebraLevel, LevelHeights] = {}
    for v in sorted(segmentation.vertebrae, key=lambda x: x.level):
        body = crops.get(int(v.level))
        work = _LevelWork(level=v.level, centroid=v.centroid_lps_mm, body=body, level_uncertain=v.level_uncertain,
                         level_cues=v.level_cues, cut_by_fov=v.cut_by_fov)
        works.append(work)
        if body is None:
            work.exclusion = (ExclusionReason.ROI_TOO_SMALL, "no body voxels")
            continue
        frame = vertebra_frame(v.level, v.centroid_lps_mm, centroids)
        work.roi = trabecular_roi(settings.roi_method, volume, body, frame, settings.erosion_mm)
        if v.cut_by_fov:
            work.fracture = not_checked(v.level, "body cut by the field of view")
        elif not FIRST_CHECKED <= v.level <= LAST_CHECKED:  # S1/cervical shapes differ
            work.fracture = not_checked(v.level, NOT_CHECKED_DETAIL)
        else:
            try:
                level_heights = measure_level(volume, body, frame)
            except (ValueError, ArithmeticError) as exc:  # one level's heights must not fail the whole study
                logger.exception("fracture check of %s failed; the level is 'height not measurable'", v.level.name)
                work.fracture = not_checked(v.level, f"the height measurement failed ({type(exc).__name__})")
            else:
                measured[v.level] = level_heights
                if level_heights.mask is not None:
                    heights[v.level] = level_heights.mask
        if v.level_uncertain:
            work.exclusion = (ExclusionReason.LEVEL_UNCERTAIN, v.uncertainty_reason or "level uncertain")
        elif v.cut_by_fov:
            work.exclusion = (ExclusionReason.CUT_BY_FOV, "body touches the first or last slice")
    fractures = classify_fractures(measured, settings.fracture_height_loss)
    for work in works:
        work.fracture = fractures.get(work.level, work.fracture)
        if work.fracture is None and work.body is None:
            work.fracture = not_checked(work.level, "no body voxels")
        name_only = work.level_uncertain and not work.cut_by_fov  # checked too, for the category fallback
        if (work.exclusion is not None and not name_only) or work.body is None or work.roi is None:
            continue
        check = check_roi(volume, work.body, work.roi, min_roi_volume_mm3=settings.min_roi_volume_mm3,
                          metal_hu=settings.metal_hu, sclerosis_hu=settings.sclerosis_hu,
                          sclerosis_max_fraction=settings.sclerosis_max_fraction)
        hu_ex = check.exclusion
        work.roi, work.roi_note = check.roi, check.note  # a bone island cut out: the trimmed ROI is measured
        finding = fractures.get(work.level)
        other: tuple[ExclusionReason, str] | None = None
        if hu_ex is not None and hu_ex.reason is ExclusionReason.METAL:
            other = (hu_ex.reason, hu_ex.detail)
        elif finding is not None and finding.status is FractureStatus.FRACTURED:
            other = (ExclusionReason.FRACTURE, finding.detail)
        elif hu_ex is not None:
            other = (hu_ex.reason, hu_ex.detail)
            if hu_ex.reason is ExclusionReason.ROI_TOO_SMALL and settings.roi_method is RoiMethod.EROSION_3MM and (
                    why := too_few_slices(work.body, volume.spacing_mm, settings.erosion_mm)) is not None:
                other = (hu_ex.reason, f"{hu_ex.detail}: {why}")
        if name_only:
            work.only_the_name_uncertain = other is None
        else:
            work.exclusion = other
    return works, heights


def assess_bmd(volume: CTVolume, segmentation: SpineSegmentation, settings: BmdSettings,
               site_model: SiteModelPredictor | None = None, *, algorithm_version: str = "") -> BmdAssessment:
    """See the module doc. ``settings`` is the node's ``Config.bmd`` (or any BmdSettings); ``algorithm_version``
    is recorded in the result."""
    if segmentation.body_labels.shape != volume.shape:
        raise ValueError(f"segmentation shape {segmentation.body_labels.shape} differs from the CT {volume.shape}")
    works, heights = _measure_levels(volume, segmentation, settings)

    survey: TissueSurvey | None = None
    try:
        survey = survey_tissues(volume, segmentation)
    except (ValueError, IndexError, MemoryError) as exc:  # best effort; the default calibration remains
        logger.warning("tissue survey failed: %s", exc)
    contrast = detect_contrast(volume, survey, settings.contrast_aorta_hu)
    calibration = choose_calibration(volume, segmentation, settings, survey)
    if contrast.enhanced:
        if settings.correct_contrast:
            calibration = with_contrast_correction(calibration, volume.kvp)
        else:
            calibration = with_flags(calibration, "contrast_enhanced", "contrast_not_corrected")

    roi_labels = np.zeros(volume.shape, dtype=np.int16)
    measurements: list[VertebraMeasurement] = []
    hu_by_level: dict[VertebraLevel, float] = {}
    bmd_by_level: dict[VertebraLevel, float] = {}
    uncertain_bmd: dict[VertebraLevel, float] = {}
    """Levels excluded for their uncertain name alone: for the category fallback only (no value is shown)."""
    for work in works:
        stats = hu_stats(work.roi.values(volume.hu) if work.roi is not None else [], volume.voxel_volume_mm3)
        if work.roi is not None and work.roi.voxel_count:
            work.roi.paint(roi_labels, int(work.level))
        evaluable = work.exclusion is None and stats.hu_mean is not None
        if work.exclusion is None and stats.hu_mean is None:
            work.exclusion = (ExclusionReason.ROI_TOO_SMALL, "empty trabecular ROI")
        bmd = calibration.bmd_mg_cm3(stats.hu_mean) if evaluable and stats.hu_mean is not None else None
        if evaluable and stats.hu_mean is not None and bmd is not None:
            hu_by_level[work.level] = stats.hu_mean
            bmd_by_level[work.level] = bmd
        elif work.only_the_name_uncertain and stats.hu_mean is not None:
            uncertain_bmd[work.level] = calibration.bmd_mg_cm3(stats.hu_mean)
        measurements.append(_measurement(work, stats, bmd, evaluable, settings))

    curve = fit_level_curve(hu_by_level, site_k=settings.curve_site_k)
    patient = summarise(bmd_by_level, hu_by_level, curve, calibration, settings, contrast, uncertain_bmd)
    if site_model is not None:
        patient = _apply_site_model(patient, site_model, hu_by_level, volume, settings)
    if (limited := thick_slice_limitation(heights)) is not None:
        patient = dataclasses.replace(patient, notes=(*patient.notes, limited))
    if volume.extra.get("series_warnings"):  # what the series checks decided (a split, a gap, per-slice FoRs...)
        patient = dataclasses.replace(patient, notes=(*patient.notes, f"series: {volume.extra['series_warnings']}"))
    result = ScreeningResult(
        study_instance_uid=volume.study_instance_uid,
        series_instance_uid=volume.series_instance_uid,
        vertebrae=tuple(measurements),
        summary=patient,
        calibration=calibration,
        curve_fit=curve,
        algorithm_version=algorithm_version,
        extra={"tissue_hu": {k: (None if v is None else round(v, 1)) for k, v in survey.as_dict().items()}
               if survey is not None else {},
               "contrast": {"enhanced": contrast.enhanced, "evidence": contrast.evidence}},
    )
    return BmdAssessment(result=result, roi_labels=roi_labels, tissue_survey=survey, contrast=contrast,
                         heights=heights)


def _measurement(work: _LevelWork, stats: HuStats, bmd: float | None, evaluable: bool,
                 settings: BmdSettings) -> VertebraMeasurement:
    return VertebraMeasurement(
        level=work.level,
        centroid_lps_mm=work.centroid,
        roi_method=settings.roi_method,
        trabecular_hu_mean=stats.hu_mean,
        trabecular_hu_median=stats.hu_median,
        trabecular_hu_sd=stats.hu_sd,
        voxel_count=stats.voxel_count,
        roi_volume_mm3=stats.roi_volume_mm3,
        bmd_mg_cm3=bmd,
        evaluable=evaluable,
        exclusion_reason=None if evaluable else work.exclusion[0] if work.exclusion else None,
        exclusion_detail=None if evaluable else work.exclusion[1] if work.exclusion else None,
        level_uncertain=work.level_uncertain, level_cues=work.level_cues,
        fracture_status=work.fracture.status if work.fracture else None,
        genant_grade=work.fracture.genant_grade if work.fracture else None,
        height_loss=work.fracture.height_loss if work.fracture else None,
        fracture_detail=work.fracture.detail if work.fracture else None,
        roi_note=work.roi_note,
    )


def _apply_site_model(patient: PatientSummary, site_model: SiteModelPredictor,
                      hu_by_level: dict[VertebraLevel, float], volume: CTVolume, settings: BmdSettings
                      ) -> PatientSummary:
    """The site model's answer as the summary; without one the summary stays, and when the model could not run
    because the patient's age or sex is unknown (site models take both) the notes say so."""
    missing = _missing_patient_inputs(volume)
    try:
        prediction = site_model.predict(dict(hu_by_level), volume.patient_sex, volume.patient_age_years)
    except (ValueError, KeyError, TypeError) as exc:
        logger.warning("site model %s failed: %s", getattr(site_model, "name", "?"), exc)
        prediction = None
    if prediction is None or (prediction.bmd_mg_cm3 is None and prediction.category is None):
        if missing:
            logger.info("site model %s skipped: %s", getattr(site_model, "name", "?"), missing)
            return dataclasses.replace(patient, notes=(
                *patient.notes, f"site model {getattr(site_model, 'name', '?')} not applied: {missing}"))
        return patient
    category = prediction.category or diagnosis.categorize(prediction.bmd_mg_cm3, settings.thresholds)
    return PatientSummary(
        bmd_mg_cm3=prediction.bmd_mg_cm3,
        levels_used=tuple(sorted(hu_by_level)),
        category=category,
        method=f"site model {prediction.model_name} (per-level trabecular HU, sex, age)",
        threshold_set=patient.threshold_set,
        thresholds=patient.thresholds,
        lumbar_equivalent=patient.lumbar_equivalent,
        notes=(*patient.notes, f"calibrated value without the site model: "
                               f"{'n/a' if patient.bmd_mg_cm3 is None else f'{patient.bmd_mg_cm3:.1f}'} mg/cm3 "
                               f"({patient.category.value}, {patient.method})"),
    )


def _missing_patient_inputs(volume: CTVolume) -> str:
    """Why a site model cannot use this patient ("" when age and sex are known): no patient data, only what is
    missing."""
    reasons = []
    if volume.patient_age_years is None:
        reasons.append(volume.extra.get("patient_age_note") or "patient age unknown")
    if (volume.patient_sex or "").strip().upper()[:1] not in ("F", "M"):
        reasons.append("patient sex unknown")
    return "; ".join(reasons)


__all__ = ["BmdAssessment", "assess_bmd", "choose_calibration"]
