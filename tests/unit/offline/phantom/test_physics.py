"""The phantom's physics against published numbers that were not used to build its tables."""

from __future__ import annotations

import pytest

from service.offline.phantom import density, physics


def test_mixture_rule_reproduces_nist_water() -> None:
    """NIST SRD 126 Table 4 lists liquid water itself (0.2059 cm2/g at 60 keV, 0.1837 at 80, 0.3756 at 30); the
    phantom builds water from its H and O elements."""
    for energy, nist in ((30.0, 0.3756), (60.0, 0.2059), (80.0, 0.1837)):
        assert physics.mass_attenuation("water", energy) == pytest.approx(nist, rel=0.005)


def test_fat_reads_about_minus_100_at_120_kvp_and_lower_at_lower_kvp() -> None:
    """Subcutaneous fat on unenhanced 120 kVp CT: -90..-120 HU (Lamba et al., AJR 2014), more negative at lower kVp."""
    fat = {kvp: physics.beam(kvp).hu("adipose") for kvp in physics.SUPPORTED_KVP}
    assert -115.0 <= fat[120] <= -90.0
    assert fat[80] < fat[100] < fat[120] < fat[140]


def test_soft_tissues_and_cortical_bone_in_their_clinical_ranges() -> None:
    beam = physics.beam(120)
    assert 35.0 <= beam.hu("muscle") <= 60.0  # skeletal muscle 40-60 HU
    assert 30.0 <= beam.hu("blood") <= 60.0  # unenhanced blood 35-55 HU
    assert 45.0 <= beam.hu("liver") <= 70.0  # unenhanced liver 50-65 HU
    assert beam.hu("cortical_bone") > 1000.0  # compact bone (1.92 g/cm3) well above 1000 HU


def test_iodine_enhancement_rises_as_kvp_falls() -> None:
    """About 25-27 HU per mg/mL iodine at 120 kVp; ~ 1.5-1.8 times that at 80 kVp (low-kVp contrast CT)."""
    per_mg = {kvp: physics.beam(kvp).hu_per_mg("iodine") for kvp in physics.SUPPORTED_KVP}
    assert per_mg[80] > per_mg[100] > per_mg[120] > per_mg[140]
    assert 22.0 <= per_mg[120] <= 30.0
    assert 1.4 <= per_mg[80] / per_mg[120] <= 1.9


def test_k2hpo4_and_hydroxyapatite_per_mg_at_120_kvp() -> None:
    """HA: ~ 1.3 HU per mg/cm3 at 120 kVp (QCT phantoms; the 0.7-0.8 mg/cm3 per HU of published lines); K2HPO4
    solutions attenuate less per mg than HA (lighter K and P than Ca)."""
    beam = physics.beam(120)
    assert 1.15 <= beam.hu_per_mg("hydroxyapatite") <= 1.45
    assert 0.95 <= beam.hu_per_mg("k2hpo4") <= beam.hu_per_mg("hydroxyapatite")


def test_beam_hardening_grows_with_size_and_water_stays_at_zero() -> None:
    slim, large = physics.beam(120, 18.0), physics.beam(120, 38.0)
    assert large.mean_energy_kev > slim.mean_energy_kev
    assert slim.hu("water") == pytest.approx(0.0, abs=1e-9) and large.hu("water") == pytest.approx(0.0, abs=1e-9)
    assert large.hu_per_mg("hydroxyapatite") < slim.hu_per_mg("hydroxyapatite")
    assert density.bmd_to_hu(150.0, 120, water_path_cm=38.0) < density.bmd_to_hu(150.0, 120, water_path_cm=18.0)


def test_scanner_and_validation() -> None:
    assert physics.Scanner(1.02, -3.0).apply(100.0) == pytest.approx(99.0)
    with pytest.raises(ValueError, match="kvp"):
        physics.Beam(90)
    with pytest.raises(ValueError, match="gain"):
        physics.Scanner(gain=1.5)
    with pytest.raises(ValueError, match="material"):
        physics.mass_attenuation("unobtainium", 60.0)
