"""Pixel and header quirks real scanners send (issue 17): stored-value types, rescale, matrices, padding, ages,
private tags. Every case is a small series written by the one test writer (tests/support/ct_series.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from service.calibration.assess import _apply_site_model
from service.calibration.settings import BmdSettings
from service.domain.levels import VertebraLevel as V
from service.domain.results import Category, PatientSummary, SitePrediction
from service.series.volume_loader import (
    PADDING_HU,
    SeriesRejectedError,
    dicom_files,
    load_series,
    load_series_folder,
    read_series,
)
from service.site_models.feature_models import FeatureModel
from service.site_models.registry import FeatureModelPredictor
from tests.shared_data import shared_case
from tests.support.ct_series import CTSeriesHeader, write_ct_series

N_SLICES = 10
MARKER = (1, 3)
"""(row, column) of the marker pixel: at i = column 3, j = row 1 in the volume."""


def _frames(shape: tuple[int, int], dtype: type, value: int, marker: int) -> np.ndarray:
    frames = np.full((N_SLICES, *shape), value, dtype=dtype)
    frames[:, MARKER[0], MARKER[1]] = marker
    return frames


@pytest.mark.parametrize(
    ("dtype", "bits_stored", "intercept", "slope", "stored", "marker_hu"),
    [
        (np.uint16, 12, -1024.0, 1.0, 1024 + 40, 1000.0),  # Siemens: unsigned 12 bit, intercept -1024
        (np.uint16, 16, -1024.0, 1.0, 1024 + 40, 1000.0),
        (np.int16, 12, 0.0, 1.0, 40, 1000.0),  # Toshiba/Canon: signed 12 bit, intercept 0
        (np.int16, 16, -1024.0, 1.0, 1024 + 40, 1000.0),  # GE: signed 16 bit
        (np.uint16, 16, -1024.0, 0.5, 2 * (1024 + 40), 1000.0),  # slope 0.5: half-HU steps
        (np.int16, 16, -1024.0, 2.0, 532, 1000.0),  # slope 2.0
    ],
    ids=["unsigned12", "unsigned16", "signed12", "signed16", "slope0.5", "slope2"],
)
def test_pixel_representation_and_rescale_give_hu(tmp_path: Path, dtype: type, bits_stored: int, intercept: float,
                                                  slope: float, stored: int, marker_hu: float) -> None:
    marker = round((marker_hu - intercept) / slope)
    header = CTSeriesHeader(bits_stored=bits_stored, rescale_intercept=intercept, extra={"RescaleSlope": slope})
    volume = load_series(write_ct_series(tmp_path / "s", _frames((8, 8), dtype, stored, marker), header))
    assert volume.hu[0, 0, 0] == pytest.approx(40.0)
    assert volume.hu[MARKER[1], MARKER[0], :] == pytest.approx(np.full(N_SLICES, marker_hu))
    assert np.count_nonzero(volume.hu != 40.0) == N_SLICES


def test_negative_hu_in_signed_12_bit(tmp_path: Path) -> None:
    header = CTSeriesHeader(bits_stored=12, rescale_intercept=0.0)
    volume = load_series(write_ct_series(tmp_path / "s", _frames((8, 8), np.int16, -1000, -2000), header))
    assert volume.hu[0, 0, 0] == -1000.0 and volume.hu[MARKER[1], MARKER[0], 0] == -2000.0


def test_bits_above_bits_stored_are_ignored(tmp_path: Path) -> None:
    """Unsigned 12 bit with the unused high bits set (overlay planes of old scanners): only BitsStored count."""
    header = CTSeriesHeader(bits_stored=12)
    volume = load_series(write_ct_series(tmp_path / "s", _frames((8, 8), np.uint16, 0xF000 | 1064, 1064), header))
    assert np.all(volume.hu == 40.0)


@pytest.mark.parametrize("matrix", [256, 512, 768, 1024])
def test_matrix_sizes_and_non_square_pixels(tmp_path: Path, matrix: int) -> None:
    """PixelSpacing [0.7, 0.9] is (between rows, between columns): i (columns) steps 0.9 mm, j (rows) 0.7 mm."""
    frames = np.full((N_SLICES, matrix, matrix), 1024, dtype=np.uint16)
    frames[:, matrix - 1, matrix - 2] = 1024 + 700  # last row, last-but-one column
    header = CTSeriesHeader(pixel_spacing_mm=(0.7, 0.9), slice_thickness_mm=3.0)
    volume = load_series(write_ct_series(tmp_path / "s", frames, header, origin_lps_mm=(-100.0, -50.0, 20.0)))
    assert volume.shape == (matrix, matrix, N_SLICES)
    assert volume.spacing_mm == pytest.approx((0.9, 0.7, 3.0))
    assert volume.hu[matrix - 2, matrix - 1, 4] == 700.0 and volume.hu[0, 0, 4] == 0.0
    corner = volume.index_to_lps([matrix - 2, matrix - 1, 4])
    assert corner == pytest.approx([-100.0 + (matrix - 2) * 0.9, -50.0 + (matrix - 1) * 0.7, 20.0 + 4 * 3.0])


@pytest.mark.parametrize("slope", [0.0, -1.0])
def test_unusable_rescale_slope_is_a_reason(tmp_path: Path, slope: float) -> None:
    header = CTSeriesHeader(extra={"RescaleSlope": slope})
    paths = write_ct_series(tmp_path / "s", _frames((8, 8), np.uint16, 1024, 1024), header)
    with pytest.raises(SeriesRejectedError, match="RescaleSlope"):
        load_series(paths)


# ------------------------------------------------------------------------------------------- padding


def _padded_frames(padding_stored: int, tissue_stored: int, dtype: type) -> np.ndarray:
    """Tissue in the middle, padding in the four corners (outside the reconstruction circle)."""
    frames = np.full((N_SLICES, 16, 16), tissue_stored, dtype=dtype)
    frames[:, :3, :3] = frames[:, -3:, -3:] = frames[:, :3, -3:] = frames[:, -3:, :3] = padding_stored
    return frames


@pytest.mark.parametrize(
    ("dtype", "bits_stored", "intercept", "padding_value", "padding_stored", "padding_hu"),
    [
        # GE: signed, PixelPaddingValue -2000 with intercept -1024 already reads -3024: kept
        (np.int16, 16, -1024.0, -2000, -2000, -3024.0),
        # Toshiba: signed, -2000 with intercept 0: kept
        (np.int16, 16, 0.0, -2000, -2000, -2000.0),
        # unsigned 12 bit with PixelPaddingValue 63536 (-2000 written as unsigned): masked to 12 bits it would
        # read 2096 - 1024 = +1072 HU (bone); set to PADDING_HU
        (np.uint16, 12, -1024.0, 63536, 63536, PADDING_HU),
        # padding value in the tissue range (stored 1064 = +40 HU): set to PADDING_HU
        (np.uint16, 16, -1024.0, 1064, 1064, PADDING_HU),
        # Siemens-like: padding 0 reads -1024 HU (air scale): kept
        (np.uint16, 12, -1024.0, 0, 0, -1024.0),
    ],
    ids=["ge-3024", "toshiba-2000", "unsigned-63536", "tissue-range", "zero"],
)
@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian], ids=["explicit", "implicit"])
def test_pixel_padding_value(tmp_path: Path, dtype: type, bits_stored: int, intercept: float, padding_value: int,
                             padding_stored: int, padding_hu: float, syntax: str) -> None:
    """PixelPaddingValue is US or SS by PixelRepresentation (resolved on reading, implicit VR too)."""
    tissue_stored = round(50.0 - intercept)
    header = CTSeriesHeader(bits_stored=bits_stored, rescale_intercept=intercept, transfer_syntax_uid=syntax,
                            extra={"PixelPaddingValue": padding_value})
    frames = _padded_frames(padding_stored, tissue_stored, dtype)
    volume = load_series(write_ct_series(tmp_path / "s", frames, header))
    assert volume.hu[0, 0, 0] == padding_hu and volume.hu[15, 15, N_SLICES - 1] == padding_hu
    assert volume.hu[8, 8, 0] == 50.0
    assert np.count_nonzero(volume.hu == 50.0) == N_SLICES * (16 * 16 - 4 * 9)


def test_pixel_padding_range_limit(tmp_path: Path) -> None:
    """PixelPaddingValue .. PixelPaddingRangeLimit (stored 0..9 here, -1000..-991 HU: air) is padding: set to
    PADDING_HU, not sampled as air."""
    header = CTSeriesHeader(rescale_intercept=-1000.0, extra={"PixelPaddingValue": 9, "PixelPaddingRangeLimit": 0})
    frames = _padded_frames(5, 1050, np.uint16)
    frames[:, 0, 0] = 0
    volume = load_series(write_ct_series(tmp_path / "s", frames, header))
    assert volume.hu[0, 0, 0] == PADDING_HU and volume.hu[1, 1, 0] == PADDING_HU
    assert volume.hu[8, 8, 0] == 50.0


def test_padding_without_padding_value_is_left_to_the_survey(tmp_path: Path) -> None:
    """Raw -3024 HU outside the circle without PixelPaddingValue stays -3024 (the tissue survey masks it)."""
    header = CTSeriesHeader(rescale_intercept=-1024.0)
    volume = load_series(write_ct_series(tmp_path / "s", _padded_frames(-2000, 1074, np.int16), header))
    assert volume.hu[0, 0, 0] == -3024.0 and volume.hu[8, 8, 0] == 50.0


def test_real_ge_slices_with_pixel_padding_value() -> None:
    """GE, signed 16 bit, PixelPaddingValue -2000, intercept -1024: the padding reads -3024 HU and stays so (a fifth
    of the image); private groups 0009/0019/0021/0045 load untouched."""
    files = [p for p in dicom_files(shared_case("dcmqi_3slice")) if p.name.startswith("ct_")]
    loaded = read_series(files, min_slices=3)
    hu = loaded.volume.hu
    assert loaded.volume.shape == (512, 512, 3)
    assert float(hu.min()) == -3024.0
    assert 0.15 < float(np.mean(hu == -3024.0)) < 0.3
    assert float(np.mean((hu > -3024.0) & (hu < -1100.0))) == 0.0  # nothing between padding and air
    assert loaded.volume.patient_age_years == pytest.approx(60.0)
    assert any(element.tag.group == 0x0045 for element in loaded.headers[0])


# ------------------------------------------------------------------------------------------- headers


def _uniform(tmp_path: Path, header: CTSeriesHeader, **kwargs: object) -> list[Path]:
    return write_ct_series(tmp_path / "s", _frames((8, 8), np.uint16, 1064, 1064), header, **kwargs)  # type: ignore[arg-type]


def test_missing_slice_thickness_falls_back_to_spacing(tmp_path: Path) -> None:
    loaded = read_series(_uniform(tmp_path, CTSeriesHeader(slice_thickness_mm=2.5, omit=("SliceThickness",))))
    assert loaded.volume.spacing_mm[2] == pytest.approx(2.5)


@pytest.mark.parametrize("thickness", [0.0, 1.0, 5.0])
def test_wrong_slice_thickness_does_not_change_the_geometry(tmp_path: Path, thickness: float) -> None:
    """SliceThickness 0 (missing in effect), thinner or thicker than the position step: the affine follows the
    ImagePositionPatient step (3 mm)."""
    header = CTSeriesHeader(slice_thickness_mm=3.0, extra={"SliceThickness": thickness})
    volume = load_series(_uniform(tmp_path, header))
    assert volume.spacing_mm[2] == pytest.approx(3.0)


@pytest.mark.filterwarnings("ignore:Invalid value for VR AS")
@pytest.mark.parametrize(
    ("extra", "omit", "age", "note"),
    [
        ({"PatientAge": "065Y"}, (), 65.0, ""),
        ({"PatientAge": "018M"}, (), 1.5, ""),
        ({}, (), 76.0, "PatientBirthDate and StudyDate"),  # writer default: born 1950-01-01, study 2026-01-01
        ({"PatientAge": "65", "AcquisitionDate": "20210101"}, (), 71.0, "PatientBirthDate and AcquisitionDate"),
        ({}, ("PatientBirthDate",), None, "patient age unknown"),
        ({"PatientAge": ""}, ("StudyDate",), None, "patient age unknown"),
        ({"PatientBirthDate": "20300101"}, (), None, "impossible age"),
    ],
    ids=["age", "months", "from-study-date", "malformed-age-acquisition-date", "no-birth-date", "no-study-date",
         "born-after-scan"],
)
def test_patient_age(tmp_path: Path, extra: dict[str, str], omit: tuple[str, ...], age: float | None,
                     note: str) -> None:
    volume = load_series(_uniform(tmp_path, CTSeriesHeader(extra=extra, omit=omit)))
    if age is None:
        assert volume.patient_age_years is None
    else:
        assert volume.patient_age_years == pytest.approx(age, abs=0.01)
    assert note in volume.extra.get("patient_age_note", "")
    assert "1950" not in volume.extra.get("patient_age_note", "")  # attribute names only, no patient data


def test_real_series_without_age() -> None:
    """The de-identified TotalSegmentator slab has neither PatientAge nor PatientBirthDate."""
    volume = load_series_folder(shared_case("ts_abdomen_slab_j2k/dicom"), min_slices=3)
    assert volume.patient_age_years is None
    assert volume.extra["patient_age_note"].startswith("patient age unknown")


PRIVATE = (
    (0x0029, 0x0010, "LO", "SIEMENS CSA HEADER"),
    (0x0029, 0x1008, "CS", "IMAGE NUM 4"),
    (0x0029, 0x1010, "OB", bytes(range(256)) * 40),  # CSA image header: 10 kB, larger than the deferral size
    (0x0029, 0x1020, "OB", b"SV10\x04\x03\x02\x01" + bytes(6000)),
    (0x0043, 0x0010, "LO", "GEMS_PARM_01"),
    (0x0043, 0x1012, "SS", [14, 14, 14]),
    (0x0043, 0x102F, "SS", 0),
    (0x2005, 0x0010, "LO", "Philips Imaging DD 001"),
    (0x2005, 0x100E, "FL", 1.0),
    (0x2005, 0x1011, "CS", "M"),
    (0x7FD1, 0x0010, "LO", "GEIIS"),
    (0x7FD1, 0x1010, "UL", 0),
)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian], ids=["explicit", "implicit"])
def test_vendor_private_tags_do_not_disturb_loading(tmp_path: Path, syntax: str) -> None:
    plain = load_series(_uniform(tmp_path / "plain", CTSeriesHeader(transfer_syntax_uid=syntax)))
    loaded = read_series(_uniform(tmp_path / "private", CTSeriesHeader(transfer_syntax_uid=syntax, private=PRIVATE)))
    assert np.array_equal(loaded.volume.hu, plain.hu)
    assert np.allclose(loaded.volume.affine_lps, plain.affine_lps)
    assert (0x0029, 0x1010) in loaded.headers[0]  # the headers handed on keep them (result objects copy nothing)


# ------------------------------------------------------------------------------------------- site model and age


class _NeedsAge:
    """A site model that, like a trained feature model, cannot answer without the age (here: raises on None)."""

    name = "site-age@1"

    def predict(self, hu_by_level: dict[V, float], sex: str, age_years: float | None) -> SitePrediction | None:
        return SitePrediction(model_name=self.name, bmd_mg_cm3=100.0 - 0.5 * float(age_years),  # type: ignore[arg-type]
                              category=None)


def _summary(settings: BmdSettings) -> PatientSummary:
    return PatientSummary(bmd_mg_cm3=110.0, levels_used=(V.L1, V.L2), category=Category.OSTEOPENIA,
                          method="L1+L2 mean", threshold_set=settings.thresholds.identifier,
                          thresholds=settings.thresholds)


@pytest.mark.parametrize("model_kind", ["raises", "feature"])
def test_site_model_without_age_is_skipped_with_a_note(tmp_path: Path, model_kind: str) -> None:
    settings = BmdSettings()
    header = CTSeriesHeader(omit=("PatientBirthDate",))
    volume = load_series(_uniform(tmp_path, header))
    assert volume.patient_age_years is None
    model = _NeedsAge() if model_kind == "raises" else FeatureModelPredictor(
        name="abdomen-bmd@1", model=_feature_model_stub())
    patient = _summary(settings)
    out = _apply_site_model(patient, model, {V.L1: 120.0, V.L2: 118.0}, volume, settings)
    assert out.bmd_mg_cm3 == 110.0 and out.category is Category.OSTEOPENIA and out.method == patient.method
    assert out.notes[-1].startswith(f"site model {model.name} not applied: patient age unknown")


def test_site_model_with_age_from_birth_date_answers(tmp_path: Path) -> None:
    settings = BmdSettings()
    volume = load_series(_uniform(tmp_path, CTSeriesHeader()))
    out = _apply_site_model(_summary(settings), _NeedsAge(), {V.L1: 120.0}, volume, settings)
    assert out.bmd_mg_cm3 == pytest.approx(100.0 - 0.5 * 76.0, abs=0.01)


def _feature_model_stub() -> FeatureModel:
    """A FeatureModel is never asked to predict here: the predictor skips before (age unknown)."""
    return object.__new__(FeatureModel)
