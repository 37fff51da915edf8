"""Patient / density model of the phantom."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from service.domain.levels import VertebraLevel
from service.offline.phantom import density


def test_hu_bmd_relation_roundtrip_and_kvp() -> None:
    for kvp in density.SUPPORTED_KVP:
        slope, intercept = density.hu_to_bmd_line(kvp)
        for bmd in (0.0, 55.0, 80.0, 150.0):
            hu = density.bmd_to_hu(bmd, kvp)
            assert slope * hu + intercept == pytest.approx(bmd)
            assert density.bmd_from_hu(hu, kvp) == pytest.approx(bmd)
    # lower kVp -> higher bone HU for the same BMD
    assert (density.bmd_to_hu(100, 80) > density.bmd_to_hu(100, 100) > density.bmd_to_hu(100, 120)
            > density.bmd_to_hu(100, 140))
    assert density.bmd_to_hu(100, 120, contrast=True) > density.bmd_to_hu(100, 120)
    with pytest.raises(ValueError, match="kvp"):
        density.hu_to_bmd_line(90)


@pytest.mark.parametrize("kvp", [80, 100, 120, 140])
def test_rods_follow_the_bone_line(kvp: int) -> None:
    """HA rods lie on the bone's line exactly (same mineral, same base); K2HPO4 rods match it in the reference beam
    (120 kVp) and drift by the K2HPO4 / HA difference of attenuation elsewhere (by less than 2 %)."""
    bone = density.hu_to_bmd_line(kvp)
    ha = np.polyfit([density.rod_hu(d, "hydroxyapatite", kvp) for d in (0, 50, 100, 200)], [0, 50, 100, 200], 1)
    assert ha == pytest.approx(bone, abs=1e-9)
    k2 = np.polyfit([density.rod_hu(d, "k2hpo4", kvp) for d in (0, 50, 100, 200)], [0, 50, 100, 200], 1)
    assert k2[0] == pytest.approx(bone[0], rel=1e-9 if kvp == 120 else 0.02)
    assert k2[1] == pytest.approx(bone[1], abs=1e-9)


def test_cohort_mix_and_gradient() -> None:
    rng = np.random.default_rng(123)
    patients = [density.draw_patient(rng) for _ in range(2000)]
    counts = Counter(p.category for p in patients)
    assert counts["normal"] / 2000 == pytest.approx(0.22, abs=0.04)
    assert counts["osteopenia"] / 2000 == pytest.approx(0.42, abs=0.04)
    assert counts["osteoporosis"] / 2000 == pytest.approx(0.36, abs=0.04)
    females = sum(p.sex == "F" for p in patients) / 2000
    assert 0.55 < females < 0.70
    # thoracic higher than lumbar, roughly linear T5 -> L2
    idx = np.arange(1, 11)
    slopes = []
    for p in patients[:300]:
        bmd = [p.bmd_by_level[lv] for lv in VertebraLevel if lv.xiong_index is not None]
        slopes.append(np.polyfit(idx, bmd, 1)[0])
    assert np.median(slopes) < -0.5
    for p in patients:
        assert p.category == density.category_of(p.l1_l2_bmd_mg_cm3)
        assert set(p.bmd_by_level) == set(density.PHANTOM_LEVELS)


def test_forced_category_sex_age_and_determinism() -> None:
    for cat in density.CATEGORIES:
        rng = np.random.default_rng(5)
        ps = [density.draw_patient(rng, category=cat, sex="female", age_years=70) for _ in range(50)]
        assert all(p.category == cat and p.sex == "F" and p.age_years == 70 for p in ps)
    a = density.draw_patient(np.random.default_rng(9))
    b = density.draw_patient(np.random.default_rng(9))
    assert a == b
    # older women have lower BMD on average than young men
    rng = np.random.default_rng(1)
    old_f = np.mean([density.draw_patient(rng, sex="F", age_years=80).l1_l2_bmd_mg_cm3 for _ in range(200)])
    young_m = np.mean([density.draw_patient(rng, sex="M", age_years=35).l1_l2_bmd_mg_cm3 for _ in range(200)])
    assert old_f < young_m - 40
    with pytest.raises(ValueError, match="category"):
        density.draw_patient(rng, category="bad")


def test_forced_l1_l2_bmd_keeps_the_gradient() -> None:
    p = density.draw_patient(np.random.default_rng(3), category="normal")
    q = density.with_l1_l2_bmd(p, 70.0)
    assert q.l1_l2_bmd_mg_cm3 == pytest.approx(70.0)
    assert q.category == "osteoporosis"
    ratio_p = p.bmd_by_level[VertebraLevel.T5] / p.l1_l2_bmd_mg_cm3
    ratio_q = q.bmd_by_level[VertebraLevel.T5] / q.l1_l2_bmd_mg_cm3
    assert ratio_q == pytest.approx(ratio_p, rel=1e-3)
