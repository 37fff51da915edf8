"""SEG, TID 1500 SR and key image: validators, round trips and geometry (head-first, feet-first, prone)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.coding import Code
from pydicom.uid import JPEG2000Lossless, generate_uid
from scipy import ndimage

from service.domain.levels import VertebraLevel
from service.domain.results import Category, ExclusionReason
from service.domain.segmentation import LabelledVertebra, SpineSegmentation
from service.domain.volume import CTVolume
from service.offline.demo.result_examples import hand_placed_bodies, save_objects
from service.results import codes
from service.results.build import AlgorithmInfo, PredecessorRef, ResultObjects, build_result_objects
from service.results.keyimage import render_key_image
from service.results.seg import level_color_rgb
from service.results.validators import dcentvfy, dciodvfy, pixelmed_sr
from service.series.volume_loader import load_series_folder
from tests.shared_data import shared_case
from tests.unit.results.synthetic import (
    FEET_FIRST_SUPINE,
    HEAD_FIRST_PRONE,
    HEAD_FIRST_SUPINE,
    SyntheticCase,
    hand_result,
    synthetic_case,
)

os.environ.setdefault("OMP_NUM_THREADS", "1")

ALGORITHM = AlgorithmInfo(version="0.1.0", model_name="box-model", model_version="0.0.1")
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


@dataclass(frozen=True)
class Built:
    case: SyntheticCase
    objects: ResultObjects
    files: dict[str, Path]


def _build(tmp: Path, orientation: tuple[str, tuple[float, ...]], with_curve: bool) -> Built:
    case = synthetic_case(tmp / "ct", orientation, with_curve=with_curve)
    objects = build_result_objects(case.volume, case.segmentation, case.roi_labels, case.result, ALGORITHM)
    return Built(case, objects, save_objects(objects, tmp / "out"))


@pytest.fixture(scope="module")
def head_first(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return _build(tmp_path_factory.mktemp("hfs"), HEAD_FIRST_SUPINE, with_curve=True)


@pytest.fixture(scope="module")
def feet_first(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return _build(tmp_path_factory.mktemp("ffs"), FEET_FIRST_SUPINE, with_curve=False)


# --------------------------------------------------------------------------------------------- validators


@pytest.mark.slow  # PixelMed's JVM (several seconds per SR)
def test_validators_report_no_errors(head_first: Built, feet_first: Built) -> None:
    for built in (head_first, feet_first):
        for kind, path in built.files.items():
            report = dciodvfy(path)
            assert report.ok, (kind, report.errors)
            assert "Error" not in report.output.replace("Errors", ""), kind
        entity = dcentvfy([*built.case.paths, *built.files.values()])
        assert entity.ok, entity.errors
    # PixelMed on the head-first SR only (about 6 s of JVM per file); the feet-first SR has the same structure
    # minus the curve fit, and the single-level and real-CT tests validate two more.
    sr_reports = pixelmed_sr([head_first.files["sr"]])
    for path, report in sr_reports.items():
        assert "Found Root Template TID_1500" in report.output, report.output[-2000:]
        assert report.ok, (path, report.errors)


def test_validator_wrappers_see_errors(tmp_path: Path, head_first: Built) -> None:
    """The wrappers must report a broken object (otherwise the clean results above prove nothing)."""
    broken = pydicom.dcmread(head_first.files["sr"])
    del broken.ContentSequence
    del broken.SOPClassUID
    path = tmp_path / "broken.dcm"
    broken.save_as(path)
    assert not dciodvfy(path).ok
    other = pydicom.dcmread(head_first.files["key_image"])
    other.PatientID = "SOMEONE-ELSE"
    other_path = tmp_path / "other.dcm"
    other.save_as(other_path)
    assert not dcentvfy([*head_first.case.paths, other_path]).ok


# ------------------------------------------------------------------------------------------ SEG geometry


def _seg_masks_on_ct_grid(seg: pydicom.Dataset, volume: CTVolume) -> dict[int, np.ndarray]:
    """Each segment's frames put back on the CT grid from the SEG's own plane positions (not highdicom's reader)."""
    shared = seg.SharedFunctionalGroupsSequence[0]
    iop = np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, dtype=float)
    row_spacing, col_spacing = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    pixels = seg.pixel_array
    if pixels.ndim == 2:
        pixels = pixels[None]
    rows, cols = pixels.shape[1:]
    a, b = np.mgrid[0:rows, 0:cols]
    masks: dict[int, np.ndarray] = {}
    for f, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
        number = int(frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        ipp = np.array(frame.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        lps = ipp + b[..., None] * col_spacing * iop[:3] + a[..., None] * row_spacing * iop[3:]
        ijk = volume.lps_to_index(lps.reshape(-1, 3))
        rounded = np.round(ijk)
        assert np.abs(ijk - rounded).max() < 1e-3, "SEG pixel centres must fall on CT voxel centres"
        idx = rounded.astype(int)
        assert idx.min() >= 0 and np.all(idx.max(axis=0) < np.array(volume.shape))
        on = pixels[f].reshape(-1) > 0
        mask = masks.setdefault(number, np.zeros(volume.shape, dtype=bool))
        mask[idx[on, 0], idx[on, 1], idx[on, 2]] = True
    return masks


@pytest.mark.parametrize(("orientation", "shape"), [
    (HEAD_FIRST_SUPINE, (64, 64, 20)), (FEET_FIRST_SUPINE, (64, 64, 20)), (HEAD_FIRST_PRONE, (64, 64, 20)),
    (FEET_FIRST_SUPINE, (61, 63, 17)),  # frames not a whole number of bytes: one continuous bit stream
], ids=["HFS", "FFS", "HFP", "FFS-odd-size"])
def test_seg_masks_lie_over_the_ct_where_measured(tmp_path: Path, orientation: tuple[str, tuple[float, ...]],
                                                  shape: tuple[int, int, int]) -> None:
    case = synthetic_case(tmp_path / "ct", orientation, shape=shape)
    objects = build_result_objects(case.volume, case.segmentation, case.roi_labels, case.result, ALGORITHM)
    path = tmp_path / "seg.dcm"
    objects.seg.save_as(path, enforce_file_format=True)
    seg = pydicom.dcmread(path)
    assert seg.SegmentationType == "BINARY"
    masks = _seg_masks_on_ct_grid(seg, case.volume)
    labels = {int(s.SegmentNumber): str(s.SegmentLabel) for s in seg.SegmentSequence}
    checked = 0
    for number, label in labels.items():
        name, kind = label.split(" ", 1)
        if name not in VertebraLevel.__members__:
            continue
        level = VertebraLevel.from_name(name)
        expected = case.segmentation.body_labels == level if kind == "vertebral body" else case.roi_labels == level
        np.testing.assert_array_equal(masks.get(number, np.zeros_like(expected)), expected, err_msg=label)
        checked += 1
    assert checked == 2 * len(case.segmentation.vertebrae)
    # highdicom's reader gives the same masks per source instance
    by_instance = hd.seg.segread(path).get_pixels_by_source_instance(
        source_sop_instance_uids=list(case.volume.sop_instance_uids), assert_missing_frames_are_empty=True)
    for index, number in enumerate(sorted(labels)):
        np.testing.assert_array_equal(np.transpose(by_instance[..., index], (2, 1, 0)) > 0,
                                      masks.get(number, np.zeros(case.volume.shape, dtype=bool)))
    # the vertebra nearest the head is the first listed (cranial) level, whatever the slice order
    top = case.segmentation.vertebrae[0]
    others = case.segmentation.vertebrae[1:]
    assert all(top.centroid_lps_mm[2] > v.centroid_lps_mm[2] for v in others)
    top_number = next(n for n, lab in labels.items() if lab == f"{top.level.name} vertebral body")
    top_s = case.volume.index_to_lps(np.argwhere(masks[top_number]))[:, 2].mean()
    assert top_s == pytest.approx(top.centroid_lps_mm[2], abs=0.01)


def test_seg_references_source_series_and_names_the_algorithm(head_first: Built) -> None:
    seg = pydicom.dcmread(head_first.files["seg"])
    volume = head_first.case.volume
    assert seg.SOPClassUID == SEG_STORAGE
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == volume.series_instance_uid
    referenced = {str(i.ReferencedSOPInstanceUID) for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced <= set(volume.sop_instance_uids)
    assert seg.FrameOfReferenceUID == volume.frame_of_reference_uid
    by_label = {str(s.SegmentLabel): s for s in seg.SegmentSequence}
    l1_body = by_label["L1 vertebral body"]
    assert l1_body.SegmentedPropertyTypeCodeSequence[0].CodeValue == "3572006"
    assert l1_body.AnatomicRegionSequence[0].CodeValue == "66794005"
    assert by_label["T12 vertebral body"].AnatomicRegionSequence[0].CodeValue == "23215003"
    for segment in seg.SegmentSequence:
        assert segment.SegmentAlgorithmType == "AUTOMATIC"
        family = segment.SegmentationAlgorithmIdentificationSequence[0].AlgorithmFamilyCodeSequence[0]
        assert (family.CodeValue, family.CodingSchemeDesignator) == ("123110", "DCM")
    assert by_label["L1 vertebral body"].SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "box-model"
    assert by_label["L1 trabecular ROI"].SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "bmd-node"


# ---------------------------------------------------------------------------------------------- SR content


def _group_level(group: hd.sr.MeasurementsAndQualitativeEvaluations) -> VertebraLevel | None:
    site = group.finding_sites[0].value
    return codes.level_from_code(site.value, site.scheme_designator)


def _value(group: object, name: Code, derivation: Code | None = None) -> float | None:
    found = [m for m in group.get_measurements(name=name)  # type: ignore[attr-defined]
             if derivation is None or (m.derivation is not None and m.derivation.value == derivation.value)]
    assert len(found) <= 1
    return None if not found else float(found[0].value)


def _patient_group(path: Path) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    """The patient summary group: the one item of TID 1500's "Derived Imaging Measurements" container (126010 holds
    only the per-level groups)."""
    document = pydicom.dcmread(path)
    derived = [item for item in document.ContentSequence if item.ConceptNameCodeSequence[0].CodeValue == "126011"]
    assert len(derived) == 1
    assert len(derived[0].ContentSequence) == 1
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations.from_sequence(derived[0].ContentSequence)


def _code(group: object, name: Code) -> list[str]:
    return [e.value.value for e in group.get_qualitative_evaluations(name=name)]  # type: ignore[attr-defined]


@pytest.mark.parametrize("which", ["head_first", "feet_first"])
def test_sr_read_back_gives_the_result_json_numbers(which: str, request: pytest.FixtureRequest) -> None:
    built: Built = request.getfixturevalue(which)
    sr = hd.sr.srread(built.files["sr"])
    seg = pydicom.dcmread(built.files["seg"])
    document = built.case.result.to_json_dict()
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == len(document["vertebrae"])
    segment_labels = {int(s.SegmentNumber): str(s.SegmentLabel) for s in seg.SegmentSequence}
    uids = set()
    for expected in document["vertebrae"]:
        level = VertebraLevel.from_name(expected["level"])
        group = next(g for g in groups if g.finding_sites and _group_level(g) == level)
        uids.add(group.tracking_uid)
        assert group.tracking_identifier == f"{level.name} trabecular BMD"
        mean = _value(group, codes.ATTENUATION_COEFFICIENT, codes.MEAN)
        assert round(mean, 2) == expected["trabecular_hu_mean"]  # type: ignore[arg-type]
        bmd = _value(group, codes.QCT_VOLUMETRIC_BMD)
        assert (None if bmd is None else round(bmd, 2)) == expected["bmd_mg_cm3"]
        assert round(_value(group, codes.VOLUME), 1) == expected["roi_volume_mm3"]  # type: ignore[arg-type]
        # Three NUMs, BMD first (a viewer shows the first lines of the merged groups, then the level's name).
        names = [m.name for m in group.get_measurements()]
        assert names[0] == codes.QCT_VOLUMETRIC_BMD or bmd is None
        assert len(names) <= 3
        assert _code(group, codes.EVALUABLE_FOR_BMD) == [codes.YES.value if expected["evaluable"] else codes.NO.value]
        reasons = _code(group, codes.EXCLUSION_REASON)
        if expected["exclusion_reason"]:
            assert reasons == [codes.EXCLUSION_REASON_CODES[ExclusionReason(expected["exclusion_reason"])].value]
        else:
            assert reasons == []
        mean_item = next(m for m in group.get_measurements(name=codes.ATTENUATION_COEFFICIENT))
        assert mean_item.unit.value == "[hnsf'U]"
        assert mean_item.method.value == codes.ROI_METHOD_CODES[built.case.result.vertebrae[0].roi_method].value
        reference = group.referenced_segment
        assert reference.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert segment_labels[reference.referenced_segment_numbers[0]] == f"{level.name} trabecular ROI"
    assert len(uids) == len(document["vertebrae"])

    patient = _patient_group(built.files["sr"])
    assert patient.tracking_identifier == "Patient BMD summary"
    summary = document["summary"]
    assert round(_value(patient, codes.QCT_VOLUMETRIC_BMD), 2) == summary["bmd_mg_cm3"]  # type: ignore[arg-type]
    assert patient.finding_type.value == codes.CATEGORY_CODES[Category(summary["category"])].value
    used = [codes.level_from_code(v, "SCT") for v in _code(patient, codes.LEVEL_USED)]
    assert [lv.name for lv in used if lv is not None] == summary["levels_used"]
    assert _value(patient, codes.CALIBRATION_SLOPE) == pytest.approx(document["calibration"]["slope"])
    assert _value(patient, codes.CALIBRATION_INTERCEPT) == pytest.approx(document["calibration"]["intercept"])
    curve = document["curve_fit"]
    assert (_value(patient, codes.CURVE_R2) is None) == (curve is None)
    if curve is not None:
        assert _value(patient, codes.CURVE_SLOPE) == pytest.approx(curve["k"])
        assert _value(patient, codes.CURVE_R2) == pytest.approx(curve["r2"])
    assert segment_labels[patient.referenced_segment.referenced_segment_numbers[0]] == \
        "Trabecular ROIs for patient BMD"


def test_sr_document_attributes(head_first: Built) -> None:
    sr = pydicom.dcmread(head_first.files["sr"])
    assert sr.SOPClassUID == COMPREHENSIVE_3D_SR
    assert (sr.CompletionFlag, sr.VerificationFlag, sr.PreliminaryFlag) == ("COMPLETE", "UNVERIFIED", "PRELIMINARY")
    root = sr.ContentSequence
    procedure = next(i for i in root if i.ConceptNameCodeSequence[0].CodeValue == "121058")
    assert procedure.ConceptCodeSequence[0].CodeValue == "25045-6"
    device = [i for i in root if i.ConceptNameCodeSequence[0].CodeValue == "121013"]  # Device Observer Name
    assert device and device[0].TextValue == "bmd-node"
    schemes = {str(i.CodingSchemeDesignator) for i in sr.CodingSchemeIdentificationSequence}
    assert codes.PRIVATE_SCHEME in schemes
    evidence = {str(s.SeriesInstanceUID) for s in sr.CurrentRequestedProcedureEvidenceSequence[0]
                .ReferencedSeriesSequence}
    assert head_first.case.volume.series_instance_uid in evidence
    assert str(pydicom.dcmread(head_first.files["seg"]).SeriesInstanceUID) in evidence
    assert "PredecessorDocumentsSequence" not in sr


# -------------------------------------------------------------------------------- attributes of every object


def test_every_object_carries_patient_study_and_contributing_equipment(head_first: Built) -> None:
    source = pydicom.dcmread(head_first.case.paths[0], stop_before_pixels=True)
    series = set()
    for kind, path in head_first.files.items():
        ds = pydicom.dcmread(path)
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge",
                        "StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID",
                        "StudyDescription"):
            assert ds.get(keyword) == source.get(keyword), (kind, keyword)
        # IHE AIR item (the SEG also lists the source CT scanner, added by highdicom)
        equipment = next(e for e in ds.ContributingEquipmentSequence
                         if e.PurposeOfReferenceCodeSequence[0].CodeValue == "Newcode1")
        purpose = equipment.PurposeOfReferenceCodeSequence[0]
        assert (purpose.CodingSchemeDesignator, purpose.CodeMeaning) == ("99IHE", "Processing Algorithm"), kind
        assert equipment.Manufacturer == "bmd-node project"
        assert equipment.ManufacturerModelName == "bmd-node"
        assert "bmd-node 0.1.0" in list(equipment.SoftwareVersions)
        assert ds.Manufacturer == "bmd-node project"
        series.add(str(ds.SeriesInstanceUID))
        assert str(ds.SeriesInstanceUID) != source.SeriesInstanceUID
    assert len(series) == 3


def test_key_image_is_a_readable_secondary_capture(head_first: Built) -> None:
    ds = pydicom.dcmread(head_first.files["key_image"])
    assert ds.SOPClassUID == SECONDARY_CAPTURE
    assert ds.PhotometricInterpretation == "RGB" and ds.SamplesPerPixel == 3
    assert (ds.Rows, ds.Columns) == (1200, 1800)
    assert ds.BurnedInAnnotation == "NO"
    pixels = ds.pixel_array
    banner = pixels[5:90, 900:1000].reshape(-1, 3)
    assert np.mean(np.all(banner == (150, 20, 20), axis=1)) > 0.9  # the "AI result, to be reviewed" banner
    text_pixels = np.all(pixels[:96, :800] == (255, 240, 120), axis=-1)
    assert text_pixels.sum() > 2000  # the banner text is drawn large
    for measurement in head_first.case.result.vertebrae:  # each level drawn in its colour (outline or swatch)
        color = level_color_rgb(measurement.level)
        assert np.all(pixels == color, axis=-1).sum() > 200, measurement.level.name


# --------------------------------------------------------------------------------- predecessor and new UIDs


def test_reprocessing_makes_new_uids_and_names_the_predecessor(head_first: Built) -> None:
    first = head_first.objects
    case = head_first.case
    predecessor = PredecessorRef(study_instance_uid=str(first.sr.StudyInstanceUID),
                                 series_instance_uid=str(first.sr.SeriesInstanceUID),
                                 sop_class_uid=str(first.sr.SOPClassUID),
                                 sop_instance_uid=str(first.sr.SOPInstanceUID))
    again = build_result_objects(case.volume, case.segmentation, case.roi_labels, case.result, ALGORITHM,
                                 predecessor)
    for old, new in zip(first.datasets(), again.datasets(), strict=True):
        assert new.SOPInstanceUID != old.SOPInstanceUID
        assert new.SeriesInstanceUID != old.SeriesInstanceUID
        assert new.StudyInstanceUID == old.StudyInstanceUID
    item = again.sr.PredecessorDocumentsSequence[0]
    assert item.StudyInstanceUID == first.sr.StudyInstanceUID
    ref = item.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == first.sr.SeriesInstanceUID
    assert ref.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == first.sr.SOPInstanceUID
    with pytest.raises(ValueError, match=r"predecessor\.study_instance_uid"):
        build_result_objects(case.volume, case.segmentation, case.roi_labels, case.result, ALGORITHM,
                             PredecessorRef("1.2.3", "1.2.3.4", COMPREHENSIVE_3D_SR, "1.2.3.4.5"))


def test_inputs_are_checked(head_first: Built) -> None:
    case = head_first.case
    with pytest.raises(ValueError, match="roi_labels shape"):
        build_result_objects(case.volume, case.segmentation, case.roi_labels[:, :, :-1], case.result, ALGORITHM)
    with pytest.raises(ValueError, match="version"):
        AlgorithmInfo(version="", model_name="m", model_version="1")
    with pytest.raises(ValueError, match="sop_instance_uid"):
        PredecessorRef("1.2", "1.2.3", COMPREHENSIVE_3D_SR, "")


@pytest.mark.slow  # PixelMed's JVM (several seconds per SR)
def test_single_level_and_empty_roi(tmp_path: Path) -> None:
    """One level (single-segment corner of highdicom) and a level whose ROI is empty (references its body)."""
    case = synthetic_case(tmp_path / "ct", HEAD_FIRST_SUPINE, levels=(VertebraLevel.L1, VertebraLevel.L2))
    roi = case.roi_labels.copy()
    roi[roi == int(VertebraLevel.L1)] = 0
    result = hand_result(case.volume, case.segmentation, roi)
    objects = build_result_objects(case.volume, case.segmentation, roi, result, ALGORITHM)
    files = save_objects(objects, tmp_path / "out")
    for kind, path in files.items():
        assert dciodvfy(path).ok, kind
    assert all(r.ok for r in pixelmed_sr([files["sr"]]).values())
    seg = pydicom.dcmread(files["seg"])
    labels = {int(s.SegmentNumber): str(s.SegmentLabel) for s in seg.SegmentSequence}
    groups = hd.sr.srread(files["sr"]).content.get_volumetric_roi_measurement_groups()
    l1 = next(g for g in groups if g.finding_sites and _group_level(g) == VertebraLevel.L1)
    assert labels[l1.referenced_segment.referenced_segment_numbers[0]] == "L1 vertebral body"


def test_no_roi_at_all_still_gives_volumetric_groups(tmp_path: Path) -> None:
    """Every level excluded before an ROI was made: the groups reference bodies, the patient group all bodies."""
    case = synthetic_case(tmp_path / "ct", FEET_FIRST_SUPINE, levels=(VertebraLevel.L1, VertebraLevel.L2))
    roi = np.zeros_like(case.roi_labels)
    result = hand_result(case.volume, case.segmentation, roi)
    assert result.summary.category.value == "indeterminate" and result.summary.bmd_mg_cm3 is None
    objects = build_result_objects(case.volume, case.segmentation, roi, result, ALGORITHM)
    files = save_objects(objects, tmp_path / "out")
    assert dciodvfy(files["sr"]).ok and dciodvfy(files["seg"]).ok
    labels = {int(s.SegmentNumber): str(s.SegmentLabel) for s in objects.seg.SegmentSequence}
    groups = hd.sr.srread(files["sr"]).content.get_volumetric_roi_measurement_groups()
    assert len(groups) == 2
    patient = _patient_group(files["sr"])
    assert labels[patient.referenced_segment.referenced_segment_numbers[0]] == "Vertebral bodies assessed"
    assert patient.finding_type.value == "82334004"  # indeterminate
    masks = _seg_masks_on_ct_grid(objects.seg, case.volume)
    np.testing.assert_array_equal(masks[max(labels)], case.segmentation.body_labels > 0)


def test_a_category_without_a_value_is_valid_and_reads_back(tmp_path: Path) -> None:
    """Level names uncertain, the category of the levels around L1-L2 reported without a value: the SR carries the
    category as its finding, no BMD measurement and no level used, and passes both validators."""
    case = synthetic_case(tmp_path / "ct", FEET_FIRST_SUPINE)
    result = hand_result(case.volume, case.segmentation, case.roi_labels)
    summary = dataclasses.replace(result.summary, bmd_mg_cm3=None, levels_used=(), category=Category.OSTEOPENIA,
                                  method="category only: every measurable level named T12?-L3? is osteopenia")
    result = dataclasses.replace(result, summary=summary)
    files = save_objects(build_result_objects(case.volume, case.segmentation, case.roi_labels, result, ALGORITHM),
                         tmp_path / "out")
    assert dciodvfy(files["sr"]).ok and all(r.ok for r in pixelmed_sr([files["sr"]]).values())
    patient = _patient_group(files["sr"])
    assert patient.finding_type.value == codes.CATEGORY_CODES[Category.OSTEOPENIA].value
    assert _value(patient, codes.QCT_VOLUMETRIC_BMD) is None


# ------------------------------------------------------------------------------------ real CT (cptac chest)


@pytest.mark.slow  # PixelMed's JVM (several seconds per SR)
def test_real_chest_ct_objects_are_valid_and_in_place(tmp_path: Path) -> None:
    volume = load_series_folder(shared_case("cptac_lscc_chest"))
    levels = (VertebraLevel.T7, VertebraLevel.T8, VertebraLevel.T9)
    full = hand_placed_bodies(volume, 50, (225, 345), levels=levels)
    body = np.where(np.isin(np.arange(volume.shape[2]), range(38, 62))[None, None, :], full, 0).astype(np.int16)
    roi = np.zeros_like(body)
    for level in levels:
        roi[ndimage.binary_erosion(body == level, iterations=3)] = int(level)
    vertebrae = tuple(
        LabelledVertebra(level, tuple(float(c) for c in volume.index_to_lps(np.argwhere(body == level).mean(0))))
        for level in levels if np.any(body == level)
    )
    segmentation = SpineSegmentation(body, None, vertebrae, "hand-placed", "1")
    result = hand_result(volume, segmentation, roi)
    objects = build_result_objects(volume, segmentation, roi, result, ALGORITHM)
    files = save_objects(objects, tmp_path)
    for kind, path in files.items():
        assert dciodvfy(path).ok, kind
    assert dcentvfy([*volume.source_paths, *files.values()]).ok
    assert all(r.ok for r in pixelmed_sr([files["sr"]]).values())
    seg = pydicom.dcmread(files["seg"])
    masks = _seg_masks_on_ct_grid(seg, volume)
    for segment in seg.SegmentSequence:
        name, kind = str(segment.SegmentLabel).split(" ", 1)
        if name in VertebraLevel.__members__:
            expected = (body if kind == "vertebral body" else roi) == VertebraLevel.from_name(name)
            np.testing.assert_array_equal(masks[int(segment.SegmentNumber)], expected)
    sr = pydicom.dcmread(files["sr"])
    assert sr.PatientID == "C3N-00247" and sr.StudyInstanceUID == volume.study_instance_uid


def test_key_image_is_the_same_for_the_same_anatomy_in_any_slice_and_pixel_order(head_first: Built) -> None:
    """The reformats are sampled in LPS: flipping the array axes (and the affine with them) changes nothing."""
    case = head_first.case
    volume = case.volume
    flip = np.diag([-1.0, -1.0, -1.0, 1.0])
    shape = np.array(volume.shape) - 1
    affine = volume.affine_lps @ np.array([[-1, 0, 0, shape[0]], [0, -1, 0, shape[1]], [0, 0, -1, shape[2]],
                                           [0, 0, 0, 1]], dtype=float)
    assert not np.allclose(affine, volume.affine_lps) and flip[3, 3] == 1
    flipped_volume = CTVolume(hu=volume.hu[::-1, ::-1, ::-1].copy(), affine_lps=affine)
    body = case.segmentation.body_labels[::-1, ::-1, ::-1].copy()
    flipped_segmentation = SpineSegmentation(body, None, case.segmentation.vertebrae, "box-model", "0.0.1")
    original = render_key_image(volume, case.segmentation, case.roi_labels, case.result, ALGORITHM)
    flipped = render_key_image(flipped_volume, flipped_segmentation, case.roi_labels[::-1, ::-1, ::-1].copy(),
                               case.result, ALGORITHM)
    differing = np.any(original != flipped, axis=-1)
    assert differing.mean() < 0.002, differing.mean()


def test_jpeg2000_source_series(tmp_path: Path) -> None:
    """A JPEG 2000 lossless source: the SEG only needs the headers; objects stay valid.

    The shared files were de-identified down to empty Study/Series UIDs (which a PACS would never send): a copy
    gets UIDs, the compressed pixel data is kept as it is.
    """
    study, series = generate_uid(), generate_uid()
    (tmp_path / "ct").mkdir()
    for source in sorted((shared_case("ts_abdomen_slab_j2k") / "dicom").glob("*.dcm")):
        ds = pydicom.dcmread(source)
        assert ds.file_meta.TransferSyntaxUID == JPEG2000Lossless
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.PatientID = "J2K"
        ds.save_as(tmp_path / "ct" / source.name)
    volume = load_series_folder(tmp_path / "ct")
    body = np.zeros(volume.shape, dtype=np.int16)
    ci, cj = volume.shape[0] // 2, int(volume.shape[1] * 0.62)
    body[ci - 25 : ci + 25, cj - 20 : cj + 20, 2:-2] = int(VertebraLevel.T12)
    roi = np.zeros_like(body)
    roi[ndimage.binary_erosion(body > 0, iterations=4)] = int(VertebraLevel.T12)
    centroid = tuple(float(c) for c in volume.index_to_lps(np.argwhere(body > 0).mean(0)))
    segmentation = SpineSegmentation(body, None, (LabelledVertebra(VertebraLevel.T12, centroid),), "box", "1")
    result = hand_result(volume, segmentation, roi)
    files = save_objects(build_result_objects(volume, segmentation, roi, result, ALGORITHM), tmp_path / "out")
    for kind, path in files.items():
        assert dciodvfy(path).ok, (kind, dciodvfy(path).errors)
    assert dcentvfy([*volume.source_paths, *files.values()]).ok
    masks = _seg_masks_on_ct_grid(pydicom.dcmread(files["seg"]), volume)
    np.testing.assert_array_equal(masks[1], body > 0)


# ------------------------------------------------------------------------------ TID 1410: what a viewer draws


@pytest.mark.parametrize("which", ["head_first", "feet_first"])
def test_sr_planar_groups_draw_each_roi_on_its_centre_slice(which: str, request: pytest.FixtureRequest) -> None:
    """Per level a TID 1410 group: the same tracking UID as its TID 1411 group (which holds the numbers of
    result.json), only the area of its outline (for OHIF's tracking), an ELLIPSE on a CT slice that the ROI crosses,
    centred on the ROI's cross-section there (checked in patient coordinates from the referenced CT file's own
    header)."""
    built: Built = request.getfixturevalue(which)
    sr = hd.sr.srread(built.files["sr"])
    document = built.case.result.to_json_dict()
    volumetric = {g.tracking_uid: g for g in sr.content.get_volumetric_roi_measurement_groups()}
    planar = sr.content.get_planar_roi_measurement_groups()
    assert len(planar) == len(document["vertebrae"]) >= 2
    ct_by_uid = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in built.case.paths}
    roi_labels, volume = built.case.roi_labels, built.case.volume
    for group in planar:
        partner = volumetric[group.tracking_uid]
        level = _group_level(group)
        assert level is not None and _group_level(partner) == level
        assert group.tracking_identifier == f"Cornerstone3DTools@^0.1.0:PlanarFreehandROI:{level.name} trabecular BMD"
        assert partner.tracking_identifier == f"{level.name} trabecular BMD"
        expected = next(v for v in document["vertebrae"] if v["level"] == level.name)
        (area,) = group.get_measurements()
        assert area.unit.value == "mm2" and area.value > 0  # type: ignore[union-attr]
        assert group.get_qualitative_evaluations() == []
        assert _value(partner, codes.QCT_VOLUMETRIC_BMD) is None or \
            round(_value(partner, codes.QCT_VOLUMETRIC_BMD), 2) == expected["bmd_mg_cm3"]  # type: ignore[arg-type]
        region = group.roi
        assert region.graphic_type == hd.sr.GraphicTypeValues.ELLIPSE
        points = region.value
        assert points.shape == (4, 2)
        image = pydicom.dcmread(ct_by_uid[region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID],
                                stop_before_pixels=True)
        iop = np.array(image.ImageOrientationPatient, dtype=float)
        row_spacing, col_spacing = (float(v) for v in image.PixelSpacing)
        column, row = points.mean(axis=0)
        centre_lps = (np.array(image.ImagePositionPatient, dtype=float) + iop[:3] * col_spacing * (column - 0.5)
                      + iop[3:] * row_spacing * (row - 0.5))
        # the ROI voxels on that slice, in patient coordinates, from the volume's own affine
        k = int(np.argmin([np.linalg.norm(volume.index_to_lps(np.array([0.0, 0.0, kk]))
                                          - np.array(image.ImagePositionPatient, dtype=float))
                           for kk in range(volume.shape[2])]))
        on_slice = np.argwhere(roi_labels[:, :, k] == int(level))
        assert len(on_slice) > 0
        roi_lps = np.array([volume.index_to_lps(np.array([i, j, k], dtype=float)) for i, j in on_slice]).mean(0)
        np.testing.assert_allclose(centre_lps, roi_lps, atol=0.5 * max(row_spacing, col_spacing))
        ks = np.flatnonzero((roi_labels == int(level)).any(axis=(0, 1)))
        assert ks.min() <= k <= ks.max()


@pytest.mark.slow  # PixelMed's JVM
def test_one_measured_level_keeps_the_sr_valid_without_a_planar_group(tmp_path: Path) -> None:
    """With one level, the TID 1410 ellipse is left out (MIN_PLANAR_GROUPS: PixelMed would check every group against
    TID 1410); the level's TID 1411 group and SEG stay, and both validators report no error."""
    case = synthetic_case(tmp_path / "ct", HEAD_FIRST_SUPINE, levels=(VertebraLevel.L1,))
    objects = build_result_objects(case.volume, case.segmentation, case.roi_labels, case.result, ALGORITHM)
    files = save_objects(objects, tmp_path / "out")
    assert dciodvfy(files["sr"]).ok
    assert all(r.ok for r in pixelmed_sr([files["sr"]]).values())
    content = hd.sr.srread(files["sr"]).content
    assert content.get_planar_roi_measurement_groups() == []
    assert [_group_level(g) for g in content.get_volumetric_roi_measurement_groups()] == [VertebraLevel.L1]
    assert _patient_group(files["sr"]).tracking_identifier == "Patient BMD summary"


@pytest.mark.parametrize("shape", [(90, 100, 16), (61, 59, 16)], ids=["odd-bytes-per-frame", "odd-bits-per-frame"])
def test_seg_pixel_data_needs_no_pad_byte_on_odd_matrices(tmp_path: Path, shape: tuple[int, int, int]) -> None:
    """Rows x Columns not a multiple of 16: the bit-packed frames still fill an even number of bytes (no pad byte,
    which OHIF's reader takes for frame data), and every mask reads back unchanged."""
    case = synthetic_case(tmp_path / "ct", HEAD_FIRST_SUPINE, levels=(VertebraLevel.L1, VertebraLevel.L2),
                          shape=shape)
    objects = build_result_objects(case.volume, case.segmentation, case.roi_labels, case.result, ALGORITHM)
    files = save_objects(objects, tmp_path / "out")
    assert dciodvfy(files["seg"]).ok
    seg = pydicom.dcmread(files["seg"])
    bits = int(seg.NumberOfFrames) * int(seg.Rows) * int(seg.Columns)
    assert len(seg.PixelData) == -(-bits // 8) and len(seg.PixelData) % 2 == 0
    masks = _seg_masks_on_ct_grid(seg, case.volume)
    for segment in seg.SegmentSequence:
        name, kind = str(segment.SegmentLabel).split(" ", 1)
        if name in VertebraLevel.__members__:
            labels = case.segmentation.body_labels if kind == "vertebral body" else case.roi_labels
            np.testing.assert_array_equal(masks[int(segment.SegmentNumber)], labels == VertebraLevel.from_name(name))
