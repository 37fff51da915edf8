"""Comprehensive 3D SR with TID 1500 (highdicom ``MeasurementReport``): per-vertebra groups and a patient group.

Per vertebra (TID 1411 Volumetric ROI group when its trabecular-ROI segment exists, else TID 1501): tracking
identifier + UID, finding site = the vertebra (SNOMED CT), method = ROI method, reference to the ROI segment,
mean/median/SD attenuation [hnsf'U], QCT volumetric BMD mg/cm3 (private code), ROI volume mm3, voxel count,
evaluable yes/no, exclusion reason, level-uncertain flag, the fracture finding (SCT "Fracture of bone" at the
vertebra: yes / no / indeterminate = height not measurable) with its Genant grade (private codes).

Patient (TID 1411 on the SEG's "summary" segment = union of the ROIs used): finding = category (SNOMED CT), summary
BMD, levels used, calibration kind/slope/intercept, curve fit, with method text, threshold set and calibration
scanner as algorithm parameters (TID 4019). All groups are TID 1411 because PixelMed's validator rejects a report
that mixes TID 1411 and TID 1501 groups; TID 1501 is used only when the SEG has no segment to reference.

Flags: Completion COMPLETE (all the algorithm's content is present; a re-run makes a new SR that names this one as
predecessor), Preliminary PRELIMINARY and Verification UNVERIFIED (no person has reviewed it).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Mapping, Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as pydicom_codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from service.domain.levels import VertebraLevel
from service.domain.results import ScreeningResult, VertebraMeasurement
from service.domain.trend import Trend, trend_of
from service.results import codes
from service.results.common import (
    SR_SERIES_NUMBER,
    AlgorithmInfo,
    report_sr,
)
from service.results.planar_roi import PlanarEllipse, planar_roi_group, viewer_label
from service.results.seg import SegmentNumbers

logger = logging.getLogger(__name__)

MIN_PLANAR_GROUPS = 2
"""TID 1410 ellipses are written when at least this many levels have one. PixelMed's DicomSRValidator (20220618)
decides whether to apply TID 1410 to the measurement groups by counting the SCOORD "Image Region" items of all groups
together (``count(...) = 1``); with exactly one it checks every group, the TID 1411 ones too, against TID 1410 and
reports them as missing an image region. The report would be valid DICOM, but the node promises 0 validator errors, so
with a single measured level the SR keeps its TID 1411 group only (the SEG and key image still show that level)."""
_MAX_TEXT_LENGTH = 1024  # TEXT content items are UT; keep parameters short enough for every viewer


def _measurement(name: Code, value: float, unit: Code, derivation: Code | None = None,
                 method: Code | None = None) -> hd.sr.Measurement:
    # The ROI method goes on each measurement (TID 300 "Measurement Method", HAS CONCEPT MOD): at group level
    # highdicom writes it with CONTAINS, which PixelMed's validator reports as an error against TID 1419.
    return hd.sr.Measurement(name=name, value=float(value), unit=unit, derivation=derivation, method=method)


def _finite(value: float | None) -> float | None:
    """None for a missing or non-finite value (DICOM decimal strings cannot carry NaN or infinity)."""
    if value is None:
        return None
    if not math.isfinite(value):
        logger.warning("non-finite value %r left out of the SR", value)
        return None
    return float(value)


def _qualitative(name: Code, value: Code) -> hd.sr.QualitativeEvaluation:
    return hd.sr.QualitativeEvaluation(name=name, value=value)


def _algorithm_id(algorithm: AlgorithmInfo, parameters: Sequence[str]) -> hd.sr.AlgorithmIdentification:
    clipped = [p[:_MAX_TEXT_LENGTH] for p in parameters if p]
    return hd.sr.AlgorithmIdentification(name=algorithm.name, version=algorithm.version,
                                         parameters=clipped or None)


_Group = (hd.sr.MeasurementsAndQualitativeEvaluations | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
          | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations)


def _group(common: dict, seg: Dataset, segment_number: int | None, source_series_instance_uid: str) -> _Group:
    """TID 1411 referencing ``segment_number`` of the SEG, or TID 1501 when there is no segment to reference."""
    if segment_number is None:
        return hd.sr.MeasurementsAndQualitativeEvaluations(**common)
    # Built directly: ReferencedSegment.from_segmentation fails on single-segment SEGs (highdicom 0.28).
    referenced_segment = hd.sr.ReferencedSegment(
        sop_class_uid=seg.SOPClassUID,
        sop_instance_uid=seg.SOPInstanceUID,
        segment_number=segment_number,
        source_series=hd.sr.SourceSeriesForSegmentation(source_series_instance_uid),
    )
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(referenced_segment=referenced_segment, **common)


def _fracture_evaluations(m: VertebraMeasurement) -> list[hd.sr.QualitativeEvaluation]:
    """The fracture finding of a level: fracture of bone (at the group's vertebra) yes / no / indeterminate (height
    not measurable), and the Genant grade when the heights were measured. The percentage is in the parameters
    ("fracture check: ...") and result.json: a further NUM would push the level's name off a viewer's label."""
    if m.fracture_status is None:
        return []
    out = [_qualitative(codes.VERTEBRAL_FRACTURE, codes.FRACTURE_STATUS_CODES[m.fracture_status])]
    if m.genant_grade is not None:
        out.append(_qualitative(codes.GENANT_GRADE, codes.GENANT_GRADE_CODES[m.genant_grade]))
    return out


def _vertebra_groups(
    m: VertebraMeasurement,
    algorithm: AlgorithmInfo,
    seg: Dataset,
    segment_number: int | None,
    source_series_instance_uid: str,
    planar: tuple[Dataset, PlanarEllipse] | None,
) -> list[_Group]:
    """The level's TID 1411 group on its SEG segment and, when ``planar`` = (source image, ellipse) is given, before
    it a TID 1410 group with the ellipse on that image, so that viewers can draw it and OHIF can track it
    (``planar_roi_group``); both share one tracking UID."""
    method = codes.ROI_METHOD_CODES[m.roi_method]
    measurements: list[hd.sr.Measurement] = []
    # Three numbers, BMD first: a viewer that draws the level's ellipse labels it with the NUMs of both groups of the
    # tracking UID and then the finding site, and OHIF 3.13 shows 5 lines; with more NUMs the level's name is cut.
    # Median, SD and voxel count are in result.json.
    for name, value, unit, derivation in (
        (codes.QCT_VOLUMETRIC_BMD, m.bmd_mg_cm3, codes.UNIT_MG_CM3, None),
        (codes.ATTENUATION_COEFFICIENT, m.trabecular_hu_mean, codes.UNIT_HU, codes.MEAN),
        (codes.VOLUME, m.roi_volume_mm3, codes.UNIT_MM3, None),
    ):
        finite = _finite(value)
        if finite is not None:
            measurements.append(_measurement(name, finite, unit, derivation, method))

    evaluations = [_qualitative(codes.EVALUABLE_FOR_BMD, codes.YES if m.evaluable else codes.NO)]
    if m.exclusion_reason is not None:
        evaluations.append(_qualitative(codes.EXCLUSION_REASON, codes.EXCLUSION_REASON_CODES[m.exclusion_reason]))
    evaluations.append(_qualitative(codes.LEVEL_UNCERTAIN, codes.YES if m.level_uncertain else codes.NO))
    evaluations += _fracture_evaluations(m)

    parameters = [f"exclusion detail: {m.exclusion_detail}"] if m.exclusion_detail else []
    if m.fracture_detail and m.fracture_detail != m.exclusion_detail:
        parameters.append(f"fracture check: {m.fracture_detail}")
    tracking_uid, identifier = generate_uid(), f"{m.level.name} trabecular BMD"
    common = {
        "tracking_identifier": hd.sr.TrackingIdentifier(uid=tracking_uid, identifier=identifier),
        "finding_type": codes.VERTEBRA_FINDING,
        "algorithm_id": _algorithm_id(algorithm, parameters),
        "finding_sites": [hd.sr.FindingSite(anatomic_location=codes.vertebra_code(m.level))],
        "measurements": measurements,
        "qualitative_evaluations": evaluations,
    }
    groups = [_group(common, seg, segment_number, source_series_instance_uid)]
    if planar is not None and segment_number is not None:
        # First: OHIF names a tracking UID after the first group that carries it (service/results/planar_roi.py).
        groups.insert(0, planar_roi_group(common, tracking_uid, identifier, *planar, viewer_label(m)))
    return groups


def _trend_content(trend: Trend) -> tuple[list[hd.sr.Measurement], list[hd.sr.QualitativeEvaluation], list[str]]:
    """The change since the prior study: NUM mg/cm3 (with the prior's Study Date as a DATE property), NUM %/year,
    "beyond least significant change" yes / no (indeterminate when not comparable), and parameters with the prior's
    levels, calibration and the warnings."""
    measurements: list[hd.sr.Measurement] = []
    change, rate = _finite(trend.change_mg_cm3), _finite(trend.percent_per_year)
    if change is not None:
        measurements.append(_measurement(codes.BMD_CHANGE, change, codes.UNIT_MG_CM3))
    if rate is not None:
        measurements.append(_measurement(codes.BMD_CHANGE_PERCENT_PER_YEAR, rate, codes.UNIT_PERCENT_PER_YEAR))
    flag = trend.beyond_lsc if trend.comparable else None
    evaluations = [_qualitative(codes.BEYOND_LSC, codes.BEYOND_LSC_CODES[flag])]
    prior = (f"trend: prior study {trend.prior_study_date.isoformat()}, levels {'-'.join(trend.prior_levels)}, "
             f"calibration {trend.prior_calibration_kind or 'unknown'}"
             + (f", {trend.prior_kvp:g} kVp" if trend.prior_kvp else "")
             + (", contrast-enhanced" if trend.prior_contrast_enhanced else ""))
    compared = (f"trend: {trend.comparison} ({'-'.join(trend.levels_compared)}), "
                + (f"{trend.change_percent:+.1f} % in {trend.interval_days} days, " if trend.change_percent is not None
                   else "")
                + f"least significant change {trend.lsc_percent:.1f} % "
                  f"(2.77 x precision {trend.precision_percent:g} %)")
    parameters = [prior, compared, *(f"trend warning: {w}" for w in trend.warnings)]
    return measurements, evaluations, parameters


def _add_prior_study_date(group: _Group, trend: Trend) -> None:
    """The prior's Study Date as a DATE item (HAS PROPERTIES) of the group's "change since prior" NUM."""
    change = next((item for item in group[0].ContentSequence
                   if item.ValueType == "NUM" and item.ConceptNameCodeSequence[0].CodeValue == codes.BMD_CHANGE.value),
                  None)
    if change is None:
        return
    date_item = hd.sr.DateContentItem(name=codes.PRIOR_STUDY_DATE, value=trend.prior_study_date,
                                      relationship_type=hd.sr.RelationshipTypeValues.HAS_PROPERTIES)
    if "ContentSequence" not in change:
        change.ContentSequence = []
    change.ContentSequence.append(date_item)


def _patient_group(result: ScreeningResult, algorithm: AlgorithmInfo, seg: Dataset, segment_number: int | None,
                   source_series_instance_uid: str) -> _Group:
    summary, calibration = result.summary, result.calibration
    methods = {m.roi_method for m in result.vertebrae if m.level in summary.levels_used}
    method = codes.ROI_METHOD_CODES[methods.pop()] if len(methods) == 1 else None
    measurements: list[hd.sr.Measurement] = []
    summary_bmd = _finite(summary.bmd_mg_cm3)
    if summary_bmd is not None:
        measurements.append(_measurement(codes.QCT_VOLUMETRIC_BMD, summary_bmd, codes.UNIT_MG_CM3, codes.MEAN,
                                         method))
    measurements.append(_measurement(codes.CALIBRATION_SLOPE, calibration.slope, codes.UNIT_MG_CM3_PER_HU))
    measurements.append(_measurement(codes.CALIBRATION_INTERCEPT, calibration.intercept, codes.UNIT_MG_CM3))
    if result.curve_fit is not None:
        for name, value, unit in ((codes.CURVE_SLOPE, result.curve_fit.k, codes.UNIT_HU),
                                  (codes.CURVE_INTERCEPT, result.curve_fit.intercept, codes.UNIT_HU),
                                  (codes.CURVE_R2, result.curve_fit.r2, codes.UNIT_ONE)):
            finite = _finite(value)
            if finite is not None:
                measurements.append(_measurement(name, finite, unit))

    evaluations = [
        _qualitative(codes.CALIBRATION_KIND, codes.CALIBRATION_KIND_CODES[calibration.kind]),
        _qualitative(codes.LUMBAR_EQUIVALENT, codes.YES if summary.lumbar_equivalent else codes.NO),
    ]
    evaluations += [_qualitative(codes.LEVEL_USED, codes.vertebra_code(level)) for level in summary.levels_used]

    parameters = [
        f"summary method: {summary.method}",
        f"threshold set: {summary.threshold_set}",
        f"calibration: {calibration.kind.value}, slope {calibration.slope:g}, intercept {calibration.intercept:g}",
        f"calibration scanner: {calibration.scanner}" if calibration.scanner else "",
        f"calibration source: {calibration.source}" if calibration.source else "",
        f"calibration valid until: {calibration.valid_until}" if calibration.valid_until else "",
        f"calibration flags: {', '.join(calibration.flags)}" if calibration.flags else "",
        f"segmentation model: {algorithm.model_name} {algorithm.model_version}",
    ]
    if result.curve_fit is not None:
        parameters.append(
            f"thoracolumbar curve ({result.curve_fit.source}): levels "
            + ", ".join(level.name for level in result.curve_fit.levels_used)
        )
    parameters += [f"note: {note}" for note in summary.notes]
    trend = trend_of(result.extra)
    if trend is not None:
        trend_measurements, trend_evaluations, trend_parameters = _trend_content(trend)
        measurements += trend_measurements
        evaluations += trend_evaluations
        parameters += trend_parameters

    common = dict(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="Patient BMD summary"),
        # TID 1501 "Finding" row carries the category (a second (121071, DCM) item would break the template).
        finding_type=codes.CATEGORY_CODES[summary.category],
        algorithm_id=_algorithm_id(algorithm, parameters),
        finding_sites=[hd.sr.FindingSite(anatomic_location=codes.SPINE)],
        measurements=measurements,
        qualitative_evaluations=evaluations,
    )
    group = _group(common, seg, segment_number, source_series_instance_uid)
    if trend is not None:
        _add_prior_study_date(group, trend)
    return group


def _move_to_derived_measurements(report: hd.sr.MeasurementReport, patient: _Group) -> None:
    """Put the patient group into TID 1500's "Derived Imaging Measurements" container, after "Imaging Measurements".

    The summary is derived from several levels' ROIs, and viewers draw every "Imaging Measurements" group from its
    image coordinates: OHIF 3.13 stops with a TypeError (``_checkIfCanAddMeasurementsToDisplaySet`` reads
    ``coords[0]``) on a group that has none, once the report holds groups that have them. The group keeps its
    TID 1411 content (summary segment, category, numbers)."""
    root = report[0].ContentSequence
    imaging = next(i for i, item in enumerate(root)
                   if item.ConceptNameCodeSequence[0].CodeValue == codes.IMAGING_MEASUREMENTS.value)
    root[imaging].ContentSequence = [g for g in root[imaging].ContentSequence if g is not patient[0]]
    derived = hd.sr.ContainerContentItem(name=codes.DERIVED_IMAGING_MEASUREMENTS,
                                         relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    derived.ContentSequence = [patient[0]]
    root.insert(imaging + 1, derived)


def _observation_context(algorithm: AlgorithmInfo) -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=algorithm.device_uid,
        name=algorithm.name,
        manufacturer_name=algorithm.manufacturer,
        model_name=f"{algorithm.name} {algorithm.version}",
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=pydicom_codes.DCM.Device, observer_identifying_attributes=device
        )
    )


def build_sr(
    source_headers: Sequence[Dataset],
    seg: Dataset,
    segment_numbers: SegmentNumbers,
    result: ScreeningResult,
    algorithm: AlgorithmInfo,
    when: dt.datetime,
    predecessor: Dataset | None = None,
    planar_rois: Mapping[VertebraLevel, PlanarEllipse] | None = None,
) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 report; ``predecessor`` is a Predecessor Documents Sequence item (built by results.py);
    ``planar_rois`` gives, per level, the ellipse that its TID 1410 group draws on source slice k."""
    planar_rois = dict(planar_rois or {})
    if len(planar_rois) < MIN_PLANAR_GROUPS:
        if planar_rois:
            logger.info("one level only: its TID 1410 ellipse is left out of the SR (see MIN_PLANAR_GROUPS)")
        planar_rois = {}
    first = source_headers[0]
    source_series_uid = str(first.SeriesInstanceUID)
    # Each level references its trabecular-ROI segment, or its body segment when the ROI is empty (too small).
    groups: list[_Group] = []
    for m in result.vertebrae:
        ellipse = planar_rois.get(m.level)
        groups += _vertebra_groups(
            m, algorithm, seg, segment_numbers.trabecular_roi.get(m.level, segment_numbers.body.get(m.level)),
            source_series_uid, None if ellipse is None else (source_headers[ellipse.k], ellipse))
    patient = _patient_group(result, algorithm, seg, segment_numbers.summary, source_series_uid)
    procedure = codes.procedure_code(str(first.get("BodyPartExamined", "")))
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(algorithm),
        procedure_reported=procedure,
        imaging_measurements=[*groups, patient],
    )
    _move_to_derived_measurements(report, patient)
    sr = report_sr(report, evidence=[*{str(h.SOPInstanceUID): h for h in source_headers}.values(), seg],  # a
                   source_header=first, series_number=SR_SERIES_NUMBER,  # multi-frame CT once
                   series_description="AI bone mineral density report (to be reviewed)", procedure=procedure,
                   algorithm=algorithm, when=when)
    if predecessor is not None:
        sr.PredecessorDocumentsSequence = [predecessor]
    logger.info("SR built: %d vertebra groups, category %s", len(result.vertebrae), result.summary.category.value)
    return sr
