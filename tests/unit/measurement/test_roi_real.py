"""The trabecular ROI on real CT against independent reference readings (issue 15, point 3): within +-10 HU.

The references (roi_reference.py) are built without roi.py: subregion label 50 of tptbox_l3_crop, and the median of
three readings of TotalSegmentator's L1 in ts_abdomen_t11_l2. The body mask is the dataset's own vertebra label."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest

from service.domain.results import RoiMethod
from service.offline.evaluation.roi_accuracy import CaseResult, evaluate_case

REPO = Path(__file__).resolve().parents[3]
DATA = REPO / ".." / "shared" / "data"
TOLERANCE_HU = 10.0  # issue 15 acceptance


@cache
def _result(name: str) -> CaseResult:
    path = DATA / name
    if not path.is_dir():
        pytest.fail(f"real test data missing: {path} (expected the shared data folder next to the repository)")
    return evaluate_case(path)


@pytest.mark.parametrize("case", ["tptbox_l3_crop", "ts_abdomen_t11_l2"])
@pytest.mark.parametrize("method", list(RoiMethod))
def test_roi_within_10_hu_of_the_reference(case: str, method: RoiMethod) -> None:
    result = _result(case)
    assert result.roi_hu[method] == pytest.approx(result.reference.hu, abs=TOLERANCE_HU), (
        case, method, result.roi_hu, result.reference.hu)


def test_tptbox_reference_is_the_annotated_interior_and_nothing_is_cut() -> None:
    result = _result("tptbox_l3_crop")
    (reading,) = result.reference.readings
    assert int(reading.mask.sum()) > 5000  # L3's annotated interior: ~6700 voxels of 1.5 mm
    assert result.check.exclusion is None and result.check.note is None
    assert result.checked_hu == pytest.approx(result.roi_hu[RoiMethod.EROSION_3MM])


def test_ts_l1_dense_focus_at_the_endplate_is_kept_and_the_roi_matches_the_reference() -> None:
    """L1 holds a dense focus (up to ~770 HU) continuous with the upper endplate, which all three reference readings
    include. check_roi keeps it (cutting it read 100.8 HU, 14 HU below the reference), so the measured ROI is the
    eroded ROI and within 10 HU of the issue's reference."""
    result = _result("ts_abdomen_t11_l2")
    assert len(result.reference.readings) == 3
    assert result.check.exclusion is None and result.check.note is None
    assert result.checked_hu == pytest.approx(result.roi_hu[RoiMethod.EROSION_3MM])
    assert result.checked_hu == pytest.approx(result.reference.hu, abs=TOLERANCE_HU)
