"""The calibration against the physics phantom: per-kVp BMD error of each route, and proof the check can fail.

The phantom's HU come from its own physics (service/offline/phantom/physics.py), the calibration keeps its literature
constants; a case is one average-size patient at L1-L2 BMD 180 mg/cm3 (a 5 % error there is 9 mg/cm3).
"""

from __future__ import annotations

import dataclasses
import os

import pytest

from service.calibration import linear
from service.calibration import phantom as calibration_phantom
from service.calibration.phantom import PhantomDefinition
from service.offline.evaluation.calibration_accuracy import TARGET_MG_CM3, case_errors

os.environ.setdefault("OMP_NUM_THREADS", "1")
BMD = 180.0
SEED = 700


def _error(kvp: int, route: str) -> float:
    (row,) = case_errors(kvp, BMD, SEED, routes=(route,))
    print(f"{route} {kvp} kVp: {row.error_mg_cm3:+.2f} mg/cm3 ({row.calibration})")
    return row.error_mg_cm3


@pytest.mark.parametrize("kvp", [80, 100, 120, 140])
@pytest.mark.parametrize("route", ["synchronous", "asynchronous"])
def test_rod_calibrations_within_3_mg(kvp: int, route: str) -> None:
    assert abs(_error(kvp, route)) <= TARGET_MG_CM3[route]


# Missed on the physics phantom (issue 15; `python -m service.offline.evaluation.calibration_accuracy`): internal
# +29.7 mg/cm3 at 80 kVp, +12.4 at 100 kVp. The calibration's mineral kVp factors (80: 1.26, 100: 1.12) are smaller
# than the phantom's physics (1.44, 1.17) and its intercept (+5) assumes fatty marrow; strict xfail, so a fix of the
# constants shows here.
@pytest.mark.parametrize("kvp", [
    pytest.param(80, marks=pytest.mark.xfail(strict=True, reason="calibration 80 kVp mineral factor 1.26 vs 1.44")),
    pytest.param(100, marks=pytest.mark.xfail(strict=True, reason="calibration 100 kVp mineral factor 1.12 vs 1.17")),
    120, 140])
def test_internal_calibration_within_10_mg(kvp: int) -> None:
    assert abs(_error(kvp, "internal")) <= TARGET_MG_CM3["internal"]


def test_k2hpo4_rods_at_120_kvp_within_3_mg() -> None:
    assert abs(_error(120, "synchronous_k2hpo4")) <= TARGET_MG_CM3["synchronous_k2hpo4"]


def test_a_5_percent_error_in_the_rod_reference_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rod densities of the phantom definition 5 % high (the rod calibration's reference line): the check fails."""
    real = calibration_phantom.load_definition

    def perturbed(path: object = None) -> PhantomDefinition:
        d = real(path)  # type: ignore[arg-type]
        return dataclasses.replace(d, densities_mg_cm3=tuple(1.05 * v for v in d.densities_mg_cm3))

    monkeypatch.setattr(calibration_phantom, "load_definition", perturbed)
    assert abs(_error(120, "synchronous")) > TARGET_MG_CM3["synchronous"]


def test_a_5_percent_error_in_the_reference_slope_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference line's slope 5 % high: the internal calibration's check at 120 kVp fails."""
    monkeypatch.setattr(linear, "REFERENCE_SLOPE_PER_HU", 1.05 * linear.REFERENCE_SLOPE_PER_HU)
    assert abs(_error(120, "internal")) > TARGET_MG_CM3["internal"]

