"""The "indeterminate" report (issue 17): a TID 1500 SR and a key image naming each unusable series and its reason.

Validated with dciodvfy and PixelMed's DicomSRValidator, read back with highdicom, and checked against the source
study's patient and study attributes (dcentvfy).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from service.results import codes
from service.results.build import PredecessorRef
from service.results.common import KEY_IMAGE_SERIES_NUMBER, SEG_SERIES_NUMBER, SR_SERIES_NUMBER, AlgorithmInfo
from service.results.unassessable import (
    INDETERMINATE_KEY_IMAGE_SERIES_NUMBER,
    INDETERMINATE_SR_SERIES_NUMBER,
    IndeterminateObjects,
    UnusableSeries,
    build_indeterminate_objects,
    render_indeterminate_image,
)
from service.results.validators import dcentvfy, dciodvfy, pixelmed_sr
from tests.unit.results.synthetic import write_ct_series

ALGORITHM = AlgorithmInfo(version="0.1.0", model_name="not applicable", model_version="-")
SUMMARY = "No series of this study could be used: bone mineral density was not assessed."
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
INDETERMINATE = ("82334004", "SCT")


def _text_rows(sr: pydicom.Dataset) -> list[tuple[str, str]]:
    """(concept code value, text) of every TEXT item anywhere in the content tree."""
    found: list[tuple[str, str]] = []

    def walk(items: pydicom.Sequence) -> None:
        for item in items:
            if item.ValueType == "TEXT":
                found.append((item.ConceptNameCodeSequence[0].CodeValue, str(item.TextValue)))
            walk(item.get("ContentSequence", []))

    walk(sr.ContentSequence)
    return found


def _source(tmp: Path) -> tuple[list[Path], pydicom.Dataset]:
    volume = write_ct_series(tmp / "ct")
    paths = list(volume.source_paths)
    return paths, pydicom.dcmread(paths[0], stop_before_pixels=True)


def _unusable(header: pydicom.Dataset) -> list[UnusableSeries]:
    return [UnusableSeries(str(header.SeriesInstanceUID), "3", "Thorax 5.0 B30f",
                           "slice thickness 5.0 mm is more than 3.0 mm"),
            UnusableSeries(generate_uid(), "601", "",
                           "sagittal series: analysis of non-axial series is not supported yet (…)")]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], IndeterminateObjects, dict[str, Path]]:
    tmp = tmp_path_factory.mktemp("indeterminate")
    paths, header = _source(tmp)
    objects = build_indeterminate_objects([header], _unusable(header), ALGORITHM, summary=SUMMARY)
    files = {}
    for name, ds in (("sr", objects.sr), ("key_image", objects.key_image)):
        files[name] = tmp / f"{name}.dcm"
        ds.save_as(files[name], enforce_file_format=True)
    return paths, objects, files


@pytest.mark.slow  # PixelMed's JVM
def test_indeterminate_objects_pass_both_validators(
        built: tuple[list[Path], IndeterminateObjects, dict[str, Path]]) -> None:
    paths, _, files = built
    for kind, path in files.items():
        report = dciodvfy(path)
        assert report.ok, (kind, report.errors)
    sr_report = pixelmed_sr([files["sr"]])[files["sr"]]
    assert sr_report.ok, sr_report.errors
    assert "Found Root Template TID_1500" in sr_report.output
    assert "not in template" not in sr_report.output  # the reason rows sit where TID 1500 allows TEXT
    entity = dcentvfy([paths[0], *files.values()])
    assert entity.ok, entity.errors


def test_indeterminate_sr_reads_back_as_a_tid_1500_report_saying_indeterminate_with_each_reason(
        built: tuple[list[Path], IndeterminateObjects, dict[str, Path]]) -> None:
    paths, _, files = built
    source = pydicom.dcmread(paths[0], stop_before_pixels=True)
    sr = hd.sr.srread(files["sr"])
    assert sr.SOPClassUID == COMPREHENSIVE_3D_SR
    assert (sr.StudyInstanceUID, sr.PatientID, sr.PatientName, sr.AccessionNumber) == (
        source.StudyInstanceUID, source.PatientID, source.PatientName, source.AccessionNumber)
    assert sr.SeriesInstanceUID != source.SeriesInstanceUID
    assert int(sr.SeriesNumber) == INDETERMINATE_SR_SERIES_NUMBER
    assert INDETERMINATE_SR_SERIES_NUMBER not in (SEG_SERIES_NUMBER, SR_SERIES_NUMBER, KEY_IMAGE_SERIES_NUMBER)
    assert (sr.CompletionFlag, sr.VerificationFlag, sr.PreliminaryFlag) == ("COMPLETE", "UNVERIFIED", "PRELIMINARY")
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    groups = [i for i in _walk(sr.ContentSequence) if i.ValueType == "CONTAINER"
              and i.ConceptNameCodeSequence[0].CodeValue == "125007"]  # (125007, DCM, "Measurement Group")
    assert len(groups) == 1
    findings = [item.ConceptCodeSequence[0] for item in _walk(sr.ContentSequence)
                if item.ValueType == "CODE" and item.ConceptNameCodeSequence[0].CodeValue == "121071"]
    assert [(f.CodeValue, f.CodingSchemeDesignator) for f in findings] == [INDETERMINATE]
    rows = _text_rows(sr)
    assert ("NOT-ASSESSED", SUMMARY) in rows
    assert ("UNUSABLE-SERIES", "series 3 (Thorax 5.0 B30f): slice thickness 5.0 mm is more than 3.0 mm") in rows
    # "…" is not in the source's character set (ISO_IR 100): written as "...", not as an encoding error
    assert ("UNUSABLE-SERIES", "series 601: sagittal series: analysis of non-axial series is not supported yet "
            "(...)") in rows
    assert "PredecessorDocumentsSequence" not in sr
    assert codes.PRIVATE_SCHEME in [i.CodingSchemeDesignator for i in sr.CodingSchemeIdentificationSequence]
    evidence = sr.PertinentOtherEvidenceSequence if "PertinentOtherEvidenceSequence" in sr \
        else sr.CurrentRequestedProcedureEvidenceSequence
    referenced = [s.ReferencedSOPInstanceUID for st in evidence for se in st.ReferencedSeriesSequence
                  for s in se.ReferencedSOPSequence]
    assert referenced == [source.SOPInstanceUID]


def _walk(items: pydicom.Sequence) -> list[pydicom.Dataset]:
    out: list[pydicom.Dataset] = []
    for item in items:
        out.append(item)
        out += _walk(item.get("ContentSequence", []))
    return out


def test_indeterminate_key_image_is_a_secondary_capture_of_the_study(
        built: tuple[list[Path], IndeterminateObjects, dict[str, Path]]) -> None:
    paths, _, files = built
    source = pydicom.dcmread(paths[0], stop_before_pixels=True)
    ki = pydicom.dcmread(files["key_image"])
    assert ki.SOPClassUID == SECONDARY_CAPTURE
    assert (ki.StudyInstanceUID, ki.PatientID) == (source.StudyInstanceUID, source.PatientID)
    assert int(ki.SeriesNumber) == INDETERMINATE_KEY_IMAGE_SERIES_NUMBER
    assert ki.BurnedInAnnotation == "NO" and ki.Manufacturer == ALGORITHM.manufacturer
    assert ki.pixel_array.shape == (1200, 1800, 3)


def test_key_image_prints_one_block_per_series_and_says_when_more_do_not_fit() -> None:
    one = [UnusableSeries(generate_uid(), "3", "Thorax", "slice thickness 5.0 mm is more than 3.0 mm")]
    many = [UnusableSeries(generate_uid(), str(n), "Thorax", "gantry tilt of 12 degrees (more than 0.5 degrees): "
                           "tilted series are not resampled") for n in range(30)]
    page_one = render_indeterminate_image(one, SUMMARY, ALGORITHM)
    page_two = render_indeterminate_image(one * 2, SUMMARY, ALGORITHM)
    page_many = render_indeterminate_image(many, SUMMARY, ALGORITHM)

    def inked_rows(page: np.ndarray) -> int:  # rows below the banner holding text
        body = page[100:1140].astype(int)
        return int(np.count_nonzero((np.abs(body - body[0, 0]).sum(axis=2) > 60).any(axis=1)))

    assert inked_rows(page_two) > inked_rows(page_one)  # a second series adds a block
    assert inked_rows(page_many) < 1040  # the page stops before the footer instead of running off it
    orange = np.array([255, 190, 90])
    assert np.any(np.all(page_one == orange, axis=2))  # the reason is drawn in the reason colour


def test_predecessor_is_named_and_arguments_are_checked(tmp_path: Path) -> None:
    _, header = _source(tmp_path)
    earlier = PredecessorRef(str(header.StudyInstanceUID), generate_uid(), COMPREHENSIVE_3D_SR, generate_uid())
    objects = build_indeterminate_objects([header], _unusable(header), ALGORITHM, summary=SUMMARY,
                                          predecessor=earlier.to_item(), when=dt.datetime(2024, 1, 2, 3, 4, 5))
    item = objects.sr.PredecessorDocumentsSequence[0]
    assert item.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == \
        earlier.sop_instance_uid
    assert str(objects.sr.ContentDate) == "20240102"
    with pytest.raises(ValueError, match="unusable"):
        build_indeterminate_objects([header], [], ALGORITHM, summary=SUMMARY)
    with pytest.raises(ValueError, match="source_headers"):
        build_indeterminate_objects([], _unusable(header), ALGORITHM, summary=SUMMARY)
    other = pydicom.Dataset()
    other.StudyInstanceUID = generate_uid()
    with pytest.raises(ValueError, match="one study"):
        build_indeterminate_objects([header, other], _unusable(header), ALGORITHM, summary=SUMMARY)
    with pytest.raises(ValueError, match="reason"):
        UnusableSeries(generate_uid(), "3", "", " ")
    with pytest.raises(ValueError, match="series_instance_uid"):
        UnusableSeries("", "3", "", "x")
    assert UnusableSeries("1.2.3", "", "", "x").label == "series 1.2.3"
