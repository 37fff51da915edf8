"""Rod finding on a synthetic phantom slab, the per-scanner store, and `calibrate phantom` on DICOM files."""

from __future__ import annotations

import argparse
import json
from datetime import date
from pathlib import Path

import numpy as np
import pytest

from service.calibration.linear import reference_line
from service.calibration.phantom import (
    FoundRod,
    _along_own_stretch,
    _measured_along,
    calibrate_from_volume,
    find_rods,
    load_definition,
    match_rods,
)
from service.calibration.store import CalibrationStore, ScannerKey, StoredCalibration
from service.cli.calibrate import register_calibrate
from service.domain.volume import CTVolume
from service.offline.phantom import density
from tests.support.ct_series import CTSeriesHeader, write_ct_series

DEFINITION = Path(__file__).resolve().parents[3] / "models" / "calibration" / "k2hpo4_0_50_100_200.json"
RODS_X_MM = (-60.0, -20.0, 20.0, 60.0)


def _phantom_hu(kvp: int, noise_sd: float, seed: int = 0, shape: tuple[int, int, int] = (200, 200, 12),
                pixel_mm: float = 0.8) -> np.ndarray:
    """A resin block (5 HU) with four 18 mm rods on the declared relation, in air, with noise."""
    rng = np.random.default_rng(seed)
    n0, n1, _ = shape
    x = (np.arange(n0) - n0 / 2) * pixel_mm
    y = (np.arange(n1) - n1 / 2) * pixel_mm
    xx, yy = np.meshgrid(x, y, indexing="ij")
    img = np.full((n0, n1), -1000.0)
    img[(np.abs(xx) <= 75) & (np.abs(yy) <= 20)] = 5.0
    for cx, d in zip(RODS_X_MM, (0.0, 50.0, 100.0, 200.0), strict=True):
        img[(xx - cx) ** 2 + yy**2 <= 9.0**2] = density.rod_hu(d, "k2hpo4", kvp)
    hu = np.repeat(img[:, :, None], shape[2], axis=2)
    return (hu + rng.normal(0.0, noise_sd, hu.shape)).astype(np.float32)


def test_definition_files_load() -> None:
    d = load_definition(DEFINITION)
    assert d.material == "k2hpo4" and d.densities_mg_cm3 == (0.0, 50.0, 100.0, 200.0)
    ha = load_definition(DEFINITION.parent / "hydroxyapatite_0_50_100_200.json")
    assert ha.material == "hydroxyapatite"


@pytest.mark.parametrize("kvp", [100, 120, 140])
def test_rods_recover_the_declared_line(kvp: int) -> None:
    hu = _phantom_hu(kvp, noise_sd=20.0, seed=kvp)
    vol = CTVolume(hu=hu, affine_lps=np.diag([0.8, 0.8, 2.0, 1.0]), kvp=float(kvp))
    definition = load_definition(DEFINITION)
    rods = find_rods(vol, definition)
    assert len(rods) >= 4  # block regions between rods may also pass the filter; matching must ignore them
    cal = match_rods(rods, definition, require_all=True)
    assert cal is not None and [d for d, _ in cal.rods] == [0.0, 50.0, 100.0, 200.0]
    slope, intercept = density.hu_to_bmd_line(kvp)
    assert cal.fit.slope == pytest.approx(slope, rel=0.02)
    assert cal.fit.intercept == pytest.approx(intercept, abs=2.0)


def test_match_rods_tolerates_a_missing_rod_but_not_nonsense() -> None:
    definition = load_definition(DEFINITION)
    rods = [FoundRod((40.0 * n, 100.0), density.bmd_to_hu(d), 5)
            for n, d in enumerate((50.0, 100.0, 200.0))]  # 0 rod unseen
    cal = match_rods(rods, definition)
    assert cal is not None and [d for d, _ in cal.rods] == [50.0, 100.0, 200.0]
    assert match_rods(rods, definition, require_all=True) is not None  # one missing rod is allowed
    assert match_rods(rods[1:], definition) is None  # two rods never make a calibration
    junk = [FoundRod((40.0 * n, 100.0), h, 5) for n, h in enumerate((-100.0, 40.0, 45.0, 900.0))]
    assert match_rods(junk, definition) is None
    # right HU but not in a row (scattered soft-tissue blobs): rejected
    scattered = [FoundRod(xy, density.bmd_to_hu(d), 5)
                 for xy, d in zip([(0.0, 0.0), (40.0, 60.0), (-50.0, 90.0)], (50.0, 100.0, 200.0), strict=True)]
    assert match_rods(scattered, definition) is None


def test_store_finds_newest_valid_calibration(tmp_path: Path) -> None:
    store = CalibrationStore(tmp_path / "cal")
    key = ScannerKey("SIEMENS", "Sensation 16", "CT1", 120.0)
    old = StoredCalibration(key, 0.74, 4.0, 0.999, "2026-01-01", "2026-02-01", "k2hpo4")
    new = StoredCalibration(key, 0.76, 6.0, 0.999, "2026-01-20", "2026-02-20", "k2hpo4")
    store.save(old)
    store.save(new)
    (tmp_path / "cal" / "broken.json").write_text("{not json")
    assert store.find(key, date(2026, 1, 25)).slope == 0.76
    assert store.find(key, date(2026, 1, 10)).slope == 0.74
    assert store.find(key, date(2026, 3, 1)) is None  # expired
    other_kvp = ScannerKey("siemens", "sensation  16", "ct1", 100.0)
    assert store.find(other_kvp, date(2026, 1, 25)) is None
    same_normalised = ScannerKey("siemens", "sensation  16", "ct1", 120.0)
    found = store.find(same_normalised, date(2026, 1, 25))
    assert found is not None and found.to_linear().valid_until == "2026-02-20"
    with pytest.raises(ValueError, match="before scan_date"):
        StoredCalibration(key, 0.7, 0.0, 1.0, "2026-02-01", "2026-01-01", "x")


def _write_series(folder: Path, hu: np.ndarray, kvp: int, spacing: tuple[float, float, float]) -> None:
    """``hu`` (columns, rows, slices) as a scanner QA series; ``spacing`` along the columns, rows and slices."""
    header = CTSeriesHeader(pixel_spacing_mm=(spacing[1], spacing[0]), slice_thickness_mm=spacing[2],
                            rescale_intercept=0.0,
                            extra={"Manufacturer": "ACME", "ManufacturerModelName": "Phantom CT", "StationName": "QA1",
                                   "KVP": kvp, "StudyDate": "20260115", "AcquisitionDate": "20260115"})
    write_ct_series(folder, np.round(hu).astype(np.int16).T, header, file_name=lambda k: f"{k:03d}.dcm")


def test_calibrate_phantom_command_stores_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write_series(tmp_path / "scan", _phantom_hu(120, noise_sd=15.0, shape=(200, 200, 10)), 120, (0.8, 0.8, 2.0))
    parser = argparse.ArgumentParser()
    register_calibrate(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["phantom", str(tmp_path / "scan"), "--definition", str(DEFINITION),
                              "--store", str(tmp_path / "store")])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    slope, intercept = density.hu_to_bmd_line(120)
    assert out["slope"] == pytest.approx(slope, rel=0.02) and out["intercept"] == pytest.approx(intercept, abs=2.0)
    assert out["valid_until"] == "2026-02-15"
    found = CalibrationStore(tmp_path / "store").find(ScannerKey("ACME", "Phantom CT", "QA1", 120.0),
                                                      date(2026, 1, 20))
    assert found is not None and found.slope == pytest.approx(out["slope"], abs=1e-4)


def test_a_row_missing_its_50_rod_is_ambiguous_unless_an_expected_slope_resolves_it() -> None:
    """0/100/200 mg/cm3 rods (50 unseen) fit 0/50/100 just as well with half the slope: both rows are evenly spaced."""
    definition = load_definition(DEFINITION)
    rods = [FoundRod((40.0 * n, 100.0), density.bmd_to_hu(d), 5) for n, d in ((0, 0.0), (2, 100.0), (3, 200.0))]
    assert match_rods(rods, definition) is None  # two readings, nothing to tell them apart: no calibration
    true_slope = density.hu_to_bmd_line(120)[0]  # the phantom's physics, not the calibration's reference line
    cal = match_rods(rods, definition, expected_slope=1.2 * true_slope)
    assert cal is not None and [d for d, _ in cal.rods] == [0.0, 100.0, 200.0]
    assert cal.fit.slope == pytest.approx(true_slope, rel=0.02)
    low = match_rods(rods, definition, expected_slope=0.55 * true_slope)  # nearer the halved reading
    assert low is not None and [d for d, _ in low.rods] == [0.0, 50.0, 100.0]
    assert match_rods(rods, definition, expected_slope=4.0 * true_slope) is None  # neither reading plausible


def test_a_row_of_body_blobs_at_twice_the_reference_slope_is_not_the_phantom() -> None:
    """BMD set s11 case_27 (low dose, 2 mm): four blobs of the patient's back in a row (their HU as measured there)
    fit the declared densities with R2 0.999 but slope 1.59 mg/cm3/HU, twice the reference line's at 120 kVp; the
    real row, whose 50 mg/cm3 rod read 20 HU high, fits only with three rods. The real row must win."""
    definition = load_definition(DEFINITION)
    blobs = [FoundRod((-60.0 + 30.0 * n, 110.0), h, 5) for n, h in enumerate((-42.9, -13.1, 16.6, 82.6))]
    real = [FoundRod((-67.5 + 45.0 * n, 200.0), density.bmd_to_hu(d, 120) + (20.0 if d == 50.0 else 0.0), 5)
            for n, d in enumerate((0.0, 50.0, 100.0, 200.0))]
    expected = reference_line(120.0)[0]
    cal = match_rods(blobs + real, definition, require_all=True, expected_slope=expected)
    assert cal is not None and all(abs(hu - density.bmd_to_hu(d, 120)) < 1.0 for d, hu in cal.rods)
    assert cal.fit.slope == pytest.approx(density.hu_to_bmd_line(120)[0], rel=0.02)


def test_spots_whose_hu_wanders_along_the_scan_are_not_rods() -> None:
    """BMD set s11 case_27 after the slope check: three spots of the back (low dose, 2 mm) in a row fit 0/50/100
    mg/cm3 with R2 0.999 and a plausible slope (0.80), but their inner mean HU wandered by 71-78 HU (plain SD, as
    here) between the sampled slices, where a rod is uniform along its length: the line's slope is then too
    uncertain to be a calibration.  The same spots, uniform, would have passed; real rods at low dose (BMD set s10
    case_17, noise SD 71 HU: spreads 8-26 HU on 4-9 slices) still do."""
    definition = load_definition(DEFINITION)
    expected = reference_line(120.0)[0]
    spots = [(-42.9, 77.1, 4), (16.6, 78.4, 4), (82.6, 70.8, 5)]
    wandering = [FoundRod((-60.0 + 45.0 * n, 110.0), h, k, sd) for n, (h, sd, k) in enumerate(spots)]
    assert match_rods(wandering, definition, require_all=True, expected_slope=expected) is None
    uniform = [FoundRod((-60.0 + 45.0 * n, 110.0), h, k, 5.0) for n, (h, _, k) in enumerate(spots)]
    assert match_rods(uniform, definition, require_all=True, expected_slope=expected) is not None
    low_dose = [FoundRod((-67.5 + 45.0 * n, 200.0), density.bmd_to_hu(d, 100), k, sd)
                for n, (d, sd, k) in enumerate(((0.0, 8.3, 4), (50.0, 20.2, 8), (100.0, 11.7, 9), (200.0, 26.1, 9)))]
    cal = match_rods(low_dose, definition, require_all=True, expected_slope=reference_line(100.0)[0])
    assert cal is not None and [d for d, _ in cal.rods] == [50.0, 100.0, 200.0]  # the 0 rod: 4 of 9 slices
    assert cal.fit.slope == pytest.approx(density.hu_to_bmd_line(100)[0], rel=0.02)


def test_find_rods_reports_how_uniform_each_rod_is() -> None:
    vol = CTVolume(hu=_phantom_hu(120, noise_sd=20.0), affine_lps=np.diag([0.8, 0.8, 2.0, 1.0]), kvp=120.0)
    rods = find_rods(vol, load_definition(DEFINITION))
    assert len(rods) >= 4
    assert all(0.0 < r.hu_spread < 10.0 for r in rods)


def test_matched_rods_are_measured_on_every_slice_of_their_stretch() -> None:
    """At low dose the rods' HU from the few sampled slices where the matched filter fired is noisy (and biased
    towards slices whose noise raised the contrast); the calibration measures the matched rods on every slice of
    the row's stretch and refits.  A row whose rods, measured so, no longer make a line is not used: here four
    "rods" claim the whole scan while the phantom fills only its first third."""
    kvp = 120
    hu = _phantom_hu(kvp, noise_sd=120.0, seed=3, shape=(200, 200, 90))
    vol = CTVolume(hu=hu, affine_lps=np.diag([0.8, 0.8, 2.0, 1.0]), kvp=float(kvp))
    definition = load_definition(DEFINITION)
    cal = calibrate_from_volume(vol, definition, require_all=True)
    assert cal is not None and len(cal.rods) >= 3
    assert all(abs(h - density.rod_hu(d, "k2hpo4", kvp)) < 6.0 for d, h in cal.rods)  # ~70 slices, not 15
    assert cal.fit.slope == pytest.approx(density.hu_to_bmd_line(kvp)[0], rel=0.03)
    short = hu.copy()
    short[:, :, 30:] = np.where(short[:, :, 30:] > -500.0, 5.0, short[:, :, 30:])  # rods end after 30 slices
    centre_mm = 100 * 0.8  # _phantom_hu centres the block in the 200 x 200 slice
    claimed = [FoundRod((centre_mm + x, centre_mm), density.rod_hu(d, "k2hpo4", kvp), 5, 10.0, (0, 89))
               for x, d in zip(RODS_X_MM, (0.0, 50.0, 100.0, 200.0), strict=True)]
    row = match_rods(claimed, definition, require_all=True)
    assert row is not None  # the sampled HU alone fit the line
    short_vol = CTVolume(hu=short, affine_lps=np.diag([0.8, 0.8, 2.0, 1.0]), kvp=float(kvp))
    assert _measured_along(row, claimed, short_vol, reference_line(kvp)[0]) is None


def test_a_candidate_is_read_on_every_slice_of_its_stretch_before_matching() -> None:
    """s12 case_27 (sharp kernel, low dose): the 50 and 100 mg/cm3 rods' medians over the few slices where the
    matched filter fired read 20-25 HU high, so the row did not fit a line and no phantom calibration was made. Each
    candidate is now read on every slice of its stretch before matching; its spread stays the sampled one."""
    kvp = 120
    hu = _phantom_hu(kvp, noise_sd=120.0, seed=4, shape=(200, 200, 90))
    vol = CTVolume(hu=hu, affine_lps=np.diag([0.8, 0.8, 2.0, 1.0]), kvp=float(kvp))
    centre_mm = 100 * 0.8
    truth = density.rod_hu(100.0, "k2hpo4", kvp)
    sampled = FoundRod((centre_mm + RODS_X_MM[2], centre_mm), truth + 25.0, 5, 12.0, (9, 80))
    along = _along_own_stretch(sampled, vol, 9.0)
    assert abs(along.hu - truth) < 5.0
    assert (along.n_slices, along.hu_spread, along.slice_range) == (5, 12.0, (9, 80))
