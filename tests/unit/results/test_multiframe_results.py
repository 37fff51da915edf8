"""SEG, SR and key image from a multi-frame CT (Enhanced CT, Legacy Converted Enhanced CT) reference its frames.

Truth: the multi-frame files themselves, read here with pydicom (each frame's ImagePositionPatient in its Per-Frame
Functional Groups item), and the hand-made labels (``box_spine``) on the volume grid; never the result code's own
frame bookkeeping.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage

from service.domain.levels import VertebraLevel
from service.domain.results import ScreeningResult
from service.domain.segmentation import SpineSegmentation
from service.offline.demo.result_examples import save_objects
from service.results import codes
from service.results.build import AlgorithmInfo, ResultObjects, build_result_objects
from service.results.common import read_source_headers
from service.results.validators import dcentvfy, dciodvfy, pixelmed_sr
from service.series.volume_loader import LoadedSeries, read_series
from tests.support import ct_series
from tests.unit.results.synthetic import (
    FEET_FIRST_SUPINE,
    HEAD_FIRST_SUPINE,
    SYNTHETIC_HEADER,
    box_spine,
    hand_result,
)
from tests.unit.results.test_results import _seg_masks_on_ct_grid

os.environ.setdefault("OMP_NUM_THREADS", "1")

ALGORITHM = AlgorithmInfo(version="0.1.0", model_name="box-model", model_version="0.0.1")
SHAPE = (64, 64, 20)  # (columns, rows, slices)
LEVELS = (VertebraLevel.T12, VertebraLevel.L1, VertebraLevel.L2)
# Two instances, frames interleaved and out of slice order: slice k is never frame k + 1 of one instance.
INSTANCES = ([5, 3, 1, 7, 9, 11, 13, 15, 17, 19], [0, 2, 4, 6, 8, 10, 12, 14, 16, 18])
SOP_CLASS = {"enhanced": EnhancedCTImageStorage, "legacy": LegacyConvertedEnhancedCTImageStorage}


@dataclass(frozen=True)
class Built:
    kind: str
    loaded: LoadedSeries
    paths: tuple[Path, ...]
    segmentation: SpineSegmentation
    roi: np.ndarray  # trabecular ROI labels on the volume grid
    result: ScreeningResult
    objects: ResultObjects

    @property
    def labels(self) -> tuple[np.ndarray, np.ndarray]:
        """(vertebral body labels, trabecular ROI labels), hand-made on the volume grid: the truth."""
        return self.segmentation.body_labels, self.roi
    files: dict[str, Path]


def _write(folder: Path, kind: str, orientation: tuple[str, tuple[float, ...]], hu: np.ndarray) -> list[Path]:
    position, iop = orientation
    header = ct_series.CTSeriesHeader(
        orientation=iop, pixel_spacing_mm=(1.5, 1.2), slice_thickness_mm=4.0, rescale_intercept=0.0,
        extra={**SYNTHETIC_HEADER, "SeriesDescription": f"multi-frame {kind} {position}", "PatientPosition": position})
    return ct_series.write_multiframe_ct_series(folder, np.round(hu).astype(np.int16).T, header, kind=kind,
                                                instances=INSTANCES, origin_lps_mm=(-40.0, -30.0, -50.0))


def _build(tmp: Path, kind: str, orientation: tuple[str, tuple[float, ...]]) -> Built:
    hu = np.random.default_rng(0).normal(0.0, 5.0, size=SHAPE).astype(np.float32)
    loaded = read_series(_write(tmp / "ct", kind, orientation, hu))
    segmentation, roi = box_spine(loaded.volume, LEVELS)
    result = hand_result(loaded.volume, segmentation, roi, with_curve=True)
    objects = build_result_objects(loaded.volume, segmentation, roi, result, ALGORITHM, source_headers=loaded.headers)
    paths = tuple(sorted(set(loaded.volume.source_paths)))
    return Built(kind, loaded, paths, segmentation, roi, result, objects, save_objects(objects, tmp / "out"))


@pytest.fixture(scope="module", params=[("enhanced", HEAD_FIRST_SUPINE), ("legacy", FEET_FIRST_SUPINE)],
                ids=["enhanced-HFS", "legacy-FFS"])
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Built:
    kind, orientation = request.param
    return _build(tmp_path_factory.mktemp(kind), kind, orientation)


def _frame_positions(paths: tuple[Path, ...]) -> dict[tuple[str, int], np.ndarray]:
    """(SOP Instance UID, frame number) -> ImagePositionPatient, from the multi-frame files' own functional groups."""
    positions = {}
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for number, item in enumerate(ds.PerFrameFunctionalGroupsSequence, start=1):
            positions[(str(ds.SOPInstanceUID), number)] = np.array(
                item.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
    return positions


def _classes(paths: tuple[Path, ...]) -> dict[str, str]:
    return {str(ds.SOPInstanceUID): str(ds.SOPClassUID)
            for ds in (pydicom.dcmread(p, stop_before_pixels=True) for p in paths)}


# --------------------------------------------------------------------------------------------- validators


@pytest.mark.slow  # PixelMed's JVM
def test_validators_report_no_errors(built: Built) -> None:
    assert set(_classes(built.paths).values()) == {SOP_CLASS[built.kind]} and len(built.paths) == 2
    for kind, path in built.files.items():
        report = dciodvfy(path)
        assert report.ok, (kind, report.errors)
    entity = dcentvfy([*built.paths, *built.files.values()])
    assert entity.ok, entity.errors
    for path, report in pixelmed_sr([built.files["sr"]]).items():
        assert "Found Root Template TID_1500" in report.output, report.output[-2000:]
        assert report.ok, (path, report.errors)


# ---------------------------------------------------------------------------------------------------- SEG


def test_every_seg_frame_references_the_instance_and_frame_at_its_position(built: Built) -> None:
    seg = pydicom.dcmread(built.files["seg"])
    positions, classes = _frame_positions(built.paths), _classes(built.paths)
    used = set()
    for frame in seg.PerFrameFunctionalGroupsSequence:
        (source,) = frame.DerivationImageSequence[0].SourceImageSequence
        key = (str(source.ReferencedSOPInstanceUID), int(source.ReferencedFrameNumber))
        assert str(source.ReferencedSOPClassUID) == classes[key[0]] == SOP_CLASS[built.kind]
        np.testing.assert_allclose(np.array(frame.PlanePositionSequence[0].ImagePositionPatient, dtype=float),
                                   positions[key], atol=1e-4)
        used.add(key)
    assert {uid for uid, _ in used} == set(classes)  # both instances hold labelled slices
    # Referenced Series: each instance once, no frame numbers (SOP Instance Reference Macro)
    (series,) = seg.ReferencedSeriesSequence
    instances = [str(i.ReferencedSOPInstanceUID) for i in series.ReferencedInstanceSequence]
    assert sorted(instances) == sorted(classes)
    assert all(str(i.ReferencedSOPClassUID) == SOP_CLASS[built.kind] for i in series.ReferencedInstanceSequence)
    assert all("ReferencedFrameNumber" not in i for i in series.ReferencedInstanceSequence)
    # General Reference Source Image Sequence: multi-frame instances with their frames, each instance once
    sources = list(seg.SourceImageSequence)
    assert len({str(i.ReferencedSOPInstanceUID) for i in sources}) == len(sources)
    for item in sources:
        numbers = item.ReferencedFrameNumber
        for number in (numbers if isinstance(numbers, pydicom.multival.MultiValue) else [numbers]):
            assert (str(item.ReferencedSOPInstanceUID), int(number)) in used
        assert str(item.ReferencedSOPClassUID) == SOP_CLASS[built.kind]
    # the loader's headers are not changed by building (the SEG's template sees them as classic images)
    assert {str(h.SOPClassUID) for h in built.loaded.headers} == {SOP_CLASS[built.kind]}


def test_seg_masks_read_back_onto_the_ct_grid_equal_the_labels(built: Built) -> None:
    seg = pydicom.dcmread(built.files["seg"])
    masks = _seg_masks_on_ct_grid(seg, built.loaded.volume)
    body, roi = built.labels
    checked = 0
    for segment in seg.SegmentSequence:
        name, kind = str(segment.SegmentLabel).split(" ", 1)
        if name not in VertebraLevel.__members__:
            continue
        expected = (body if kind == "vertebral body" else roi) == VertebraLevel.from_name(name)
        np.testing.assert_array_equal(masks.get(int(segment.SegmentNumber), np.zeros_like(expected)), expected,
                                      err_msg=str(segment.SegmentLabel))
        checked += 1
    assert checked == 2 * len(LEVELS)


def test_highdicom_reads_the_seg_back_per_source_frame(built: Built) -> None:
    """highdicom's own reader, by (instance, frame): the masks of each frame equal the labels of the volume slice
    that lies at that frame's position (found from the CT file, not from the loader)."""
    seg = hd.seg.segread(built.files["seg"])
    volume = built.loaded.volume
    body, roi = built.labels
    numbers = {int(s.SegmentNumber): str(s.SegmentLabel) for s in seg.SegmentSequence}
    by_instance: dict[str, list[tuple[int, int]]] = {}
    for (uid, number), ipp in _frame_positions(built.paths).items():
        ijk = volume.lps_to_index(ipp)
        assert np.allclose(ijk[:2], 0.0, atol=1e-4) and abs(ijk[2] - round(ijk[2])) < 1e-4
        by_instance.setdefault(uid, []).append((number, round(ijk[2])))
    for uid, frames in by_instance.items():
        pixels = seg.get_pixels_by_source_frame(source_sop_instance_uid=uid,
                                                source_frame_numbers=[n for n, _ in frames],
                                                assert_missing_frames_are_empty=True)
        for index, (_, k) in enumerate(frames):
            for position, number in enumerate(sorted(numbers)):
                name, kind = numbers[number].split(" ", 1)
                if name not in VertebraLevel.__members__:
                    continue
                labels = body if kind == "vertebral body" else roi
                np.testing.assert_array_equal(pixels[index, :, :, position] > 0,
                                              (labels[:, :, k] == VertebraLevel.from_name(name)).T)


# ----------------------------------------------------------------------------------------------------- SR


def test_sr_ellipses_reference_the_frame_through_which_they_are_drawn(built: Built) -> None:
    sr = hd.sr.srread(built.files["sr"])
    positions, classes = _frame_positions(built.paths), _classes(built.paths)
    volume, (_, roi) = built.loaded.volume, built.labels
    shared = pydicom.dcmread(built.paths[0], stop_before_pixels=True).SharedFunctionalGroupsSequence[0]
    iop = np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, dtype=float)
    row_spacing, col_spacing = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    planar = sr.content.get_planar_roi_measurement_groups()
    assert len(planar) == len(LEVELS)
    for group in planar:
        reference = group.roi.ContentSequence[0]
        sop = reference.ReferencedSOPSequence[0]
        key = (str(sop.ReferencedSOPInstanceUID), int(sop.ReferencedFrameNumber))
        assert str(sop.ReferencedSOPClassUID) == classes[key[0]]
        column, row = group.roi.value.mean(axis=0)
        centre_lps = positions[key] + iop[:3] * col_spacing * (column - 0.5) + iop[3:] * row_spacing * (row - 0.5)
        i, j, k = volume.lps_to_index(centre_lps)
        assert abs(k - round(k)) < 1e-4  # the ellipse lies in the plane of the referenced frame
        site = group.finding_sites[0].value
        level = codes.level_from_code(site.value, site.scheme_designator)
        assert level in LEVELS
        on_slice = np.argwhere(roi[:, :, round(k)] == int(level))
        assert len(on_slice) > 0, (level, k)
        np.testing.assert_allclose((i, j), on_slice.mean(axis=0), atol=0.5)


def test_sr_evidence_lists_each_multiframe_instance_once(built: Built) -> None:
    sr = pydicom.dcmread(built.files["sr"])
    referenced = [(str(s.ReferencedSOPClassUID), str(s.ReferencedSOPInstanceUID))
                  for study in sr.CurrentRequestedProcedureEvidenceSequence
                  for series in study.ReferencedSeriesSequence for s in series.ReferencedSOPSequence]
    seg = built.objects.seg
    expected = {(SOP_CLASS[built.kind], uid) for uid in _classes(built.paths)} | {
        (str(seg.SOPClassUID), str(seg.SOPInstanceUID))}
    assert sorted(referenced) == sorted(expected)


# -------------------------------------------------------------------------------------------- key image


def test_key_image_names_no_source_frame(built: Built) -> None:
    """The key image is a composite of reformats: it references no single CT image (so no frame to name) and
    carries the CT's patient and study."""
    key = pydicom.dcmread(built.files["key_image"])
    for keyword in ("SourceImageSequence", "ReferencedImageSequence", "ReferencedSeriesSequence"):
        assert keyword not in key
    ct = pydicom.dcmread(built.paths[0], stop_before_pixels=True)
    for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "AccessionNumber"):
        assert key[keyword].value == ct[keyword].value


# ------------------------------------------------------------------------------ headers read again from files


def test_headers_read_again_from_the_files_give_one_frame_per_slice(built: Built) -> None:
    volume = built.loaded.volume
    again = read_source_headers(volume)
    assert len(again) == volume.shape[2]  # not one header per frame per slice
    assert [(str(h.SOPInstanceUID), h.frame_number) for h in again] == \
        list(zip(volume.sop_instance_uids, built.loaded.frame_numbers, strict=True))
    positions = _frame_positions(built.paths)
    for k, header in enumerate(again):
        np.testing.assert_allclose(positions[(str(header.SOPInstanceUID), header.frame_number)],
                                   volume.index_to_lps([0.0, 0.0, float(k)]), atol=1e-4)


def test_objects_built_without_the_loaders_headers_reference_the_same_frames(built: Built) -> None:
    objects = build_result_objects(built.loaded.volume, built.segmentation, built.roi, built.result, ALGORITHM)

    def frames(seg: pydicom.Dataset) -> list[tuple[str, int]]:
        return [(str(s.ReferencedSOPInstanceUID), int(s.ReferencedFrameNumber))
                for f in seg.PerFrameFunctionalGroupsSequence for s in f.DerivationImageSequence[0].SourceImageSequence]

    assert frames(objects.seg) == frames(built.objects.seg)


def test_two_acquisitions_at_the_same_positions_in_one_instance_need_the_loaders_headers(tmp_path: Path) -> None:
    """Frames at the same position in one instance (two acquisitions): the files alone cannot say which frame a
    slice was; reading them again names the case instead of guessing."""
    rng = np.random.default_rng(4)
    frames = rng.integers(0, 200, (22, 16, 16)).astype(np.int16)
    positions = [(0.0, 0.0, 2.0 * k) for k in range(10)] + [(0.0, 0.0, 2.0 * k) for k in range(12)]
    extra = [{"AcquisitionNumber": 1}] * 10 + [{"AcquisitionNumber": 2}] * 12
    paths = ct_series.write_multiframe_ct_series(tmp_path / "mf", frames, ct_series.CTSeriesHeader(),
                                                 positions_lps_mm=positions, slice_extra=extra)
    loaded = read_series(paths)
    assert loaded.frame_numbers == tuple(range(11, 23))
    with pytest.raises(ValueError, match=r"both at its position .*LoadedSeries\.headers"):
        read_source_headers(loaded.volume)
