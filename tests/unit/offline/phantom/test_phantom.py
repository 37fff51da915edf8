"""Synthetic CT phantom: determinism, labels, HU realism, DICOM validity, geometry, BMD truth, variants."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
from functools import cache
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from service.domain.levels import VertebraLevel
from service.offline.phantom import commands
from service.offline.phantom import labels as lab
from service.offline.phantom.api import Phantom, PhantomSpec, body_mask, generate, random_spec, write_phantom
from service.series.volume_loader import load_series

os.environ.setdefault("OMP_NUM_THREADS", "1")
V = VertebraLevel

# A small acquisition grid: 2.8 mm pixels, 3 mm slices (fast, still a real DICOM series).
SMALL = {"rows": 128, "columns": 128, "pixel_spacing_mm": 2.8, "slice_thickness_mm": 3.0}


@cache
def _small(seed: int, region: str = "abdomen", **kw: object) -> Phantom:
    return generate(PhantomSpec(seed=seed, region=region, **SMALL, **kw))  # type: ignore[arg-type]


def test_deterministic_for_a_seed_and_different_between_seeds() -> None:
    spec = PhantomSpec(seed=11, region="chest", **SMALL)  # type: ignore[arg-type]
    a, b = generate(spec), generate(spec)
    assert np.array_equal(a.volume.hu, b.volume.hu)
    assert np.array_equal(a.labels, b.labels)
    assert json.dumps(a.truth, sort_keys=True) == json.dumps(b.truth, sort_keys=True)
    assert a.volume.sop_instance_uids == b.volume.sop_instance_uids
    c = generate(PhantomSpec(seed=12, region="chest", **SMALL))  # type: ignore[arg-type]
    assert not np.array_equal(a.volume.hu, c.volume.hu)
    assert c.volume.series_instance_uid != a.volume.series_instance_uid


def test_label_scheme_chest_and_abdomen() -> None:
    allowed = set(range(0, 27)) | {40 + v for v in range(1, 26)} | set(range(71, 84)) | set(range(91, 104))
    allowed |= set(range(110, 118)) | set(range(120, 138)) | set(range(150, 161)) | {200 + v for v in range(1, 26)}
    chest = _small(21, "chest")
    values = set(np.unique(chest.labels).tolist())
    assert values <= allowed, sorted(values - allowed)
    for n in range(1, 13):
        assert lab.rib("left", n) in values and lab.rib("right", n) in values, n
    assert lab.STERNUM in values and lab.LUNG_LEFT in values and lab.LUNG_RIGHT in values
    for lv in (V.T4, V.T8, V.T12):
        assert lab.body_shell(lv) in values and lab.body_core(lv) in values and lab.posterior(lv) in values
    abd = _small(22, "abdomen")
    values = set(np.unique(abd.labels).tolist())
    assert values <= allowed, sorted(values - allowed)
    assert {lab.SACRUM, lab.PELVIS, lab.DISC, lab.SPINAL_CANAL, lab.LIVER} <= values
    for lv in (V.L1, V.L2, V.L3, V.L4, V.L5, V.S1):
        assert body_mask(abd.labels, lv).sum() > 50, lv.name
    # the core lies inside the body: every core voxel has body-shell neighbours around the core's outside
    core = abd.labels == lab.body_core(V.L2)
    shell = abd.labels == lab.body_shell(V.L2)
    assert core.sum() > 0 and shell.sum() > 0
    # the body listed in truth.json is the one in the labels
    listed = {v["level"] for v in abd.truth["vertebrae"]}
    present = {VertebraLevel(int(v)).name for v in np.unique(abd.labels) if 1 <= v <= 25}
    assert listed == present


def _median_hu(p: Phantom, label: int) -> float:
    sel = p.labels == label
    assert sel.sum() > 20, f"label {label} missing"
    return float(np.median(p.volume.hu[sel]))


def test_hu_realism_per_tissue_noise_free() -> None:
    chest = generate(PhantomSpec(seed=31, region="chest-abdomen", noise_free=True, **SMALL))  # type: ignore[arg-type]
    # reference values: fat ~ -100, muscle 40-60, lung ~ -850, liver 50-65, blood ~ 40, discs 70-100
    assert -130 < _median_hu(chest, lab.SUBCUTANEOUS_FAT) < -70
    assert 35 < _median_hu(chest, lab.MUSCLE) < 65
    assert -900 < _median_hu(chest, lab.LUNG_LEFT) < -780
    assert 45 < _median_hu(chest, lab.LIVER) < 70
    assert 25 < _median_hu(chest, lab.AORTA) < 60
    assert 60 < _median_hu(chest, lab.DISC) < 110
    assert -10 < _median_hu(chest, lab.SPINAL_CANAL) < 45
    assert _median_hu(chest, lab.body_shell(V.L1)) > _median_hu(chest, lab.body_core(V.L1))
    air = chest.volume.hu[chest.labels == 0]
    assert np.median(air) < -950
    contrast = generate(PhantomSpec(seed=31, region="chest-abdomen", noise_free=True, contrast=True,
                                    **SMALL))  # type: ignore[arg-type]
    assert _median_hu(contrast, lab.AORTA) > 130
    assert _median_hu(contrast, lab.LIVER) > _median_hu(chest, lab.LIVER) + 30


def test_noise_levels_follow_dose_and_kvp() -> None:
    def sd(**kw: object) -> float:
        p = generate(PhantomSpec(seed=41, region="abdomen", **SMALL, **kw))  # type: ignore[arg-type]
        return float(p.truth["acquisition"]["noise_sd_hu"])

    assert sd(low_dose=True) > 2 * sd()
    assert sd(kvp=100) > sd(kvp=120) > sd(kvp=140)
    assert sd(noise_free=True) == 0.0


@pytest.mark.parametrize("kvp,contrast", [(120, False), (100, False), (140, True)])
def test_truth_core_recovers_bmd_within_1_mg(tmp_path: Path, kvp: int, contrast: bool) -> None:
    """Measure trabecular HU on the truth core of a noise-free series read back from DICOM."""
    spec = PhantomSpec(seed=51, region="abdomen", rows=160, columns=160, pixel_spacing_mm=0.9,
                       slice_thickness_mm=1.0, kvp=kvp, contrast=contrast, noise_free=True, l1_l2_bmd_mg_cm3=95.0,
                       fov_top_level=V.T12, fov_bottom_level=V.L3, arms_in_fov=False)
    phantom = generate(spec)
    write_phantom(phantom, tmp_path)
    volume = load_series(sorted((tmp_path / "dicom").glob("*.dcm")))
    labels = np.asarray(nib.load(tmp_path / "labels.nii.gz").dataobj)
    truth = json.loads((tmp_path / "truth.json").read_text())
    slope, intercept = truth["hu_to_bmd"]["slope"], truth["hu_to_bmd"]["intercept"]
    rise = truth["contrast_trabecular_rise_hu"]
    checked = 0
    for v in truth["vertebrae"]:
        level = VertebraLevel.from_name(v["level"])
        if v["cut_by_fov"]:
            continue
        core = labels == lab.body_core(level)
        assert core.sum() > 300, v["level"]
        hu = float(volume.hu[core].mean())
        assert hu == pytest.approx(v["trabecular_hu"], abs=0.6)
        bmd = slope * (hu - rise) + intercept
        assert abs(bmd - v["bmd_mg_cm3"]) < 1.0, (v["level"], bmd, v["bmd_mg_cm3"])
        checked += 1
    assert checked >= 2
    assert truth["patient"]["l1_l2_bmd_mg_cm3"] == pytest.approx(95.0)


def test_dciodvfy_clean_uncompressed_and_jpeg2000(tmp_path: Path) -> None:
    exe = shutil.which("dciodvfy")
    assert exe, "dciodvfy (dicom3tools) is required; install the Debian package dicom3tools"
    p = _small(61, "chest", contrast=True, calibration_phantom="k2hpo4")
    for j2k in (False, True):
        out = tmp_path / ("j2k" if j2k else "raw")
        paths = [q for q in write_phantom(p, out, jpeg2000=j2k) if q.suffix == ".dcm"]
        for path in (paths[0], paths[len(paths) // 2]):
            res = subprocess.run([exe, "-new", str(path)], capture_output=True, text=True, timeout=60)
            lines = (res.stdout + res.stderr).splitlines()
            errors = [ln for ln in lines if ln.startswith("Error")]
            assert not errors, errors
        ds = pydicom.dcmread(paths[0])
        assert ds.Manufacturer == "bmd-node phantom"
        assert ds.ContrastBolusAgent == "IODINE"
        assert ds.BodyPartExamined == "CHEST"
        assert ds.PatientSex == p.truth["patient"]["sex"]
        assert ds.PatientAge == f"{int(p.truth['patient']['age_years']):03d}Y"
        if j2k:
            assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEG2000Lossless
        # pixel data decodes to the phantom's HU
        k = next(i for i, n in enumerate(p.instance_numbers) if n == ds.InstanceNumber)
        hu = ds.pixel_array.astype(np.float32).T * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert np.array_equal(hu, p.volume.hu[:, :, k])


@pytest.mark.parametrize("feet_first", [False, True])
def test_geometry_through_the_loader(tmp_path: Path, feet_first: bool) -> None:
    p = _small(71, "abdomen", feet_first=feet_first)
    write_phantom(p, tmp_path)
    files = sorted((tmp_path / "dicom").glob("*.dcm"))
    volume = load_series(files)
    truth = json.loads((tmp_path / "truth.json").read_text())
    assert np.allclose(volume.affine_lps, np.array(truth["acquisition"]["affine_lps"]), atol=1e-3)
    assert np.array_equal(volume.hu, p.volume.hu)
    assert volume.superior_axis() == (2, -1 if feet_first else 1)
    # acquisition order: HFS superior -> inferior, FFS inferior -> superior
    first = pydicom.dcmread(tmp_path / "dicom" / "0001.dcm", stop_before_pixels=True)
    last = pydicom.dcmread(files[-1], stop_before_pixels=True)
    assert first.PatientPosition == ("FFS" if feet_first else "HFS")
    z_first, z_last = float(first.ImagePositionPatient[2]), float(last.ImagePositionPatient[2])
    assert (z_first < z_last) if feet_first else (z_first > z_last)
    # labels.nii.gz sits on the same grid (RAS affine of the same LPS affine)
    img = nib.load(tmp_path / "labels.nii.gz")
    assert np.allclose(np.diag([-1, -1, 1, 1]) @ img.affine, volume.affine_lps, atol=1e-3)
    labels = np.asarray(img.dataobj)
    for v in truth["vertebrae"]:
        level = VertebraLevel.from_name(v["level"])
        idx = np.argwhere(body_mask(labels, level)).mean(axis=0)
        centroid = volume.index_to_lps(idx)
        assert np.allclose(centroid, v["centroid_lps_mm"], atol=0.05), v["level"]
    # the L1 centroid is close to the analytic vertebra centre
    l1 = next(v for v in truth["vertebrae"] if v["level"] == "L1")
    assert np.linalg.norm(np.subtract(l1["centroid_lps_mm"], l1["model_centre_lps_mm"])) < 6.0


def test_head_and_feet_first_show_the_same_anatomy() -> None:
    hfs = _small(81, "abdomen")
    ffs = _small(81, "abdomen", feet_first=True)
    a = {v["level"]: v["centroid_lps_mm"] for v in hfs.truth["vertebrae"]}
    b = {v["level"]: v["centroid_lps_mm"] for v in ffs.truth["vertebrae"]}
    assert a.keys() == b.keys()
    for key in a:
        assert np.allclose(a[key], b[key], atol=1e-6)
    assert np.array_equal(np.flip(ffs.labels, axis=(0, 2)), hfs.labels)


def _height_along_axis(p: Phantom, level: VertebraLevel, b_norm: float) -> float:
    v = next(x for x in p.truth["vertebrae"] if x["level"] == level.name)
    centre = np.array(v["model_centre_lps_mm"])
    up = np.array(v["axis_superior"])
    post = np.array(v["axis_posterior"])
    pt = centre + post * b_norm * v["body_size_mm"]["depth"] / 2
    steps = np.arange(-40.0, 40.0, 0.1)
    pts = pt[None, :] + steps[:, None] * up[None, :]
    idx = np.rint(p.volume.lps_to_index(pts)).astype(int)
    inside = body_mask(p.labels, level)[idx[:, 0], idx[:, 1], idx[:, 2]]
    return float(inside.sum() * 0.1)


def test_wedge_fracture_heights() -> None:
    spec = PhantomSpec(seed=91, region="abdomen", rows=256, columns=256, pixel_spacing_mm=0.8,
                       slice_thickness_mm=1.0, fracture_levels=(V.L1,), fracture_kind="wedge",
                       fracture_height_loss=0.4, fov_top_level=V.T11, fov_bottom_level=V.L3, noise_free=True)
    p = generate(spec, spacing_mm=(0.8, 0.8, 0.8))
    l1 = next(v for v in p.truth["vertebrae"] if v["level"] == "L1")
    assert l1["fractured"] and l1["fracture"]["kind"] == "wedge"
    ant = _height_along_axis(p, V.L1, -0.8)  # Genant's anterior height, 10 % of the depth inside the wall
    post = _height_along_axis(p, V.L1, 0.7)  # posterior, clear of the notch of the posterior wall
    # the declared loss is that of the anterior height; 15 % inside the posterior wall a wedge loses 0.12 of it
    assert ant / post == pytest.approx((1.0 - 0.4) / (1.0 - 0.4 * (0.3 / 1.8) ** 1.2), abs=0.05), (ant, post)
    assert ant == pytest.approx(l1["heights_mm"]["anterior"], abs=2.0)
    assert post == pytest.approx(l1["heights_mm"]["posterior"], abs=2.0)
    l2 = next(v for v in p.truth["vertebrae"] if v["level"] == "L2")
    assert not l2["fractured"]
    assert _height_along_axis(p, V.L2, -0.6) / _height_along_axis(p, V.L2, 0.6) > 0.85


def test_rib_pairs_and_lumbar_variants() -> None:
    eleven = _small(101, "chest-abdomen", rib_pairs=11)
    values = set(np.unique(eleven.labels).tolist())
    assert lab.rib("left", 11) in values and lab.rib("left", 12) not in values
    assert eleven.truth["variants"]["last_rib_level"] == "T11"
    thirteen = _small(101, "chest-abdomen", rib_pairs=13)
    values = set(np.unique(thirteen.labels).tolist())
    assert lab.rib("left", 13) in values and lab.rib("right", 13) in values
    # rib 13 starts next to L1
    r13 = np.argwhere(thirteen.labels == lab.rib("left", 13))
    top = thirteen.volume.index_to_lps(r13[np.argmax(thirteen.volume.index_to_lps(r13)[:, 2])])
    l1 = next(v for v in thirteen.truth["vertebrae"] if v["level"] == "L1")
    assert abs(top[2] - l1["centroid_lps_mm"][2]) < 25.0
    lumb = _small(102, "abdomen", lumbar_variant="lumbarised_s1")
    assert lumb.truth["variants"]["lumbar_variant"] == "lumbarised_s1"
    assert lumb.truth["variants"]["lumbar_vertebra_count"] == 6
    s1 = next(v for v in lumb.truth["vertebrae"] if v["level"] == "S1")
    assert s1["kind"] == "lumbar" and body_mask(lumb.labels, V.S1).sum() > 50
    # a lumbarised S1 has a disc below it; a normal S1 is fused with the sacrum
    normal = _small(102, "abdomen")
    for p, expect in ((lumb, True), (normal, False)):
        s1z = next(v for v in p.truth["vertebrae"] if v["level"] == "S1")["centroid_lps_mm"][2]
        disc_z = p.volume.index_to_lps(np.argwhere(p.labels == lab.DISC))[:, 2]
        assert bool((disc_z < s1z - 10.0).sum() > 20) is expect
    sac = _small(102, "abdomen", lumbar_variant="sacralised_l5")
    assert sac.truth["variants"]["lumbar_vertebra_count"] == 4
    assert next(v for v in sac.truth["vertebrae"] if v["level"] == "L5")["kind"] == "sacralised"
    assert body_mask(sac.labels, V.L5).sum() > 50


def test_findings_calibration_rods_island_and_screws() -> None:
    p = _small(111, "abdomen", calibration_phantom="hydroxyapatite", noise_free=True, bone_island_level=V.L2)
    rods = p.truth["calibration_phantom"]["rods"]
    assert [r["density_mg_cm3"] for r in rods] == [0.0, 50.0, 100.0, 200.0]
    measured = []
    for r in rods:
        sel = np.argwhere(p.labels == r["label"])
        assert len(sel) > 20
        lps = p.volume.index_to_lps(sel)
        central = np.hypot(lps[:, 0] - r["centre_lps_mm"][0], lps[:, 1] - r["centre_lps_mm"][1]) < 3.0
        values = p.volume.hu[tuple(sel[central].T)]
        assert len(values) > 10
        measured.append(float(np.mean(values)))
    fit = np.polyfit(measured, [r["density_mg_cm3"] for r in rods], 1)
    assert fit[0] == pytest.approx(p.truth["hu_to_bmd"]["slope"], rel=0.02)
    assert fit[1] == pytest.approx(p.truth["hu_to_bmd"]["intercept"], abs=2.0)
    l2 = next(v for v in p.truth["vertebrae"] if v["level"] == "L2")
    assert l2["bone_island"]
    assert p.truth["findings"]["bone_island"]["level"] == "L2"
    # the island is bright bone inside the body but outside the truth core
    core = p.labels == lab.body_core(V.L2)
    assert abs(float(p.volume.hu[core].mean()) - l2["trabecular_hu"]) < 0.6
    # pedicle screws: metal label, saturated HU, levels flagged, streaks around them
    q = _small(111, "abdomen", noise_free=True, pedicle_screw_levels=(V.L4, V.L5))
    metal = q.labels == lab.METAL
    assert metal.sum() > 5 and q.volume.hu[metal].max() >= 3000
    assert {v["level"] for v in q.truth["vertebrae"] if v["metal"]} == {"L4", "L5"}


def test_random_spec_varies_and_validates() -> None:
    rng = np.random.default_rng(0)
    specs = [random_spec(rng) for _ in range(40)]
    assert len({s.region for s in specs}) == 3
    assert len({s.kvp for s in specs}) >= 2
    assert any(s.contrast for s in specs) and any(not s.contrast for s in specs)
    assert random_spec(rng, region="chest", kvp=140).kvp == 140
    coarse = generate(specs[0], spacing_mm=(4.0, 4.0, 4.0))
    assert coarse.volume.spacing_mm == pytest.approx((4.0, 4.0, 4.0))
    assert coarse.labels.shape == coarse.volume.shape
    assert PhantomSpec(seed=1, kvp=80).kvp == 80  # low-dose protocols
    for bad in ({"region": "head"}, {"kvp": 90}, {"rib_pairs": 10}, {"lumbar_variant": "x"},
                {"fracture_levels": ("Q3",)}, {"calibration_phantom": "gold"}, {"scanner_gain": 1.2},
                {"scanner_offset_hu": 40.0}):
        with pytest.raises(ValueError):
            PhantomSpec(seed=1, **bad)  # type: ignore[arg-type]


def test_cli_writes_the_three_outputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    commands.register(sub)
    args = parser.parse_args(["phantom", "--out", str(tmp_path / "ph"), "--seed", "3", "--region", "abdomen",
                              "--rows", "96", "--columns", "96", "--pixel-spacing", "3.5", "--slice-thickness", "5",
                              "--fracture", "L1", "--fracture", "L2", "--kvp", "100", "--feet-first"])
    assert args.func(args) == 0
    out = tmp_path / "ph"
    assert len(list((out / "dicom").glob("*.dcm"))) > 10
    truth = json.loads((out / "truth.json").read_text())
    fractured = {v["level"] for v in truth["vertebrae"] if v["fractured"]}
    assert fractured == {"L1", "L2"}
    assert truth["acquisition"]["kvp"] == 100 and truth["acquisition"]["patient_position"] == "FFS"
    assert {"slope", "intercept"} <= set(truth["hu_to_bmd"])
    assert (out / "labels.nii.gz").exists()
    assert "L1" in capsys.readouterr().out


def test_a_short_last_rib_keeps_its_head_and_loses_its_course() -> None:
    short = _small(101, "chest-abdomen", last_rib_scale=(0.2, 1.0))
    normal = _small(101, "chest-abdomen")
    left, right = (int((short.labels == lab.rib(side, 12)).sum()) for side in ("left", "right"))
    left_normal = int((normal.labels == lab.rib("left", 12)).sum())
    assert 0 < left < 0.35 * left_normal, (left, left_normal)
    assert right == int((normal.labels == lab.rib("right", 12)).sum())  # the other side as drawn
    assert short.truth["variants"]["last_rib_scale"] == [0.2, 1.0]
    # rib 11 is not the last rib: untouched
    assert int((short.labels == lab.rib("left", 11)).sum()) == int((normal.labels == lab.rib("left", 11)).sum())


def test_random_specs_draw_a_short_last_rib_in_about_30_percent_of_patients() -> None:
    scales = [random_spec(np.random.default_rng([5, i])).last_rib_scale for i in range(200)]
    short = [s for s in scales if min(s) < 1.0]
    assert 0.2 < len(short) / len(scales) < 0.4
    assert all(0.1 <= min(s) <= 0.6 for s in short)
    assert any(max(s) < 1.0 for s in short) and any(max(s) == 1.0 for s in short)
