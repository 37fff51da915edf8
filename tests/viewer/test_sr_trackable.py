"""The TID 1410 group a level gets is one OHIF can track (list in its measurement panel); no browser needed.

What OHIF 3.13 needs is read from its installed bundle (viewer/node_modules/@ohif/app/dist), not from our code: the
Cornerstone tag its adapters match Tracking Identifiers against and the tool that reads a closed POLYLINE.
"""

from __future__ import annotations

import math
import re

import highdicom as hd
import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, generate_uid

from service.domain.levels import VertebraLevel
from service.domain.results import ExclusionReason, RoiMethod, VertebraMeasurement
from service.offline.viewer.site import OHIF_DIST
from service.results.planar_roi import PlanarEllipse, planar_roi_group, viewer_label

PIXEL_SPACING_MM = (0.7, 0.8)  # (row spacing, column spacing)


def _ohif_tag_and_tools() -> tuple[str, set[str]]:
    """The Cornerstone tag of OHIF's SR adapters and the tool names they register (``_X.init('X', ...)``)."""
    texts = [b.read_text(errors="replace") for b in sorted(OHIF_DIST.glob("*.bundle.*.js"))]
    if not texts:
        pytest.fail(f"OHIF is not installed in {OHIF_DIST} (`make install`)")
    text = "\n".join(t for t in texts if "CORNERSTONE_3D_TAG" in t)
    tags = set(re.findall(r"CORNERSTONE_3D_TAG = ['\"]([^'\"]+)['\"]", text))
    assert len(tags) == 1, tags
    return tags.pop(), set(re.findall(r"_\w+\.init\('(\w+)'", text))


def _image() -> Dataset:
    image = Dataset()
    image.SOPClassUID = CTImageStorage
    image.SOPInstanceUID = generate_uid()
    image.PixelSpacing = [str(v) for v in PIXEL_SPACING_MM]
    return image


def _measurement(level: VertebraLevel, bmd: float | None, evaluable: bool = True,
                 uncertain: bool = False) -> VertebraMeasurement:
    return VertebraMeasurement(level=level, centroid_lps_mm=(0.0, 0.0, 0.0), roi_method=next(iter(RoiMethod)),
                               trabecular_hu_mean=150.0, trabecular_hu_median=150.0, trabecular_hu_sd=10.0,
                               voxel_count=1000, roi_volume_mm3=5000.0, bmd_mg_cm3=bmd, evaluable=evaluable,
                               exclusion_reason=None if evaluable else next(iter(ExclusionReason)),
                               level_uncertain=uncertain)


def _group(ellipse: PlanarEllipse, label: str = "L1: BMD 101.25 mg/cm3") -> Dataset:
    common = {"finding_type": hd.sr.CodedConcept("T-11502", "SRT", "Vertebra"),
              "finding_sites": [hd.sr.FindingSite(hd.sr.CodedConcept("181827009", "SCT", "L1 vertebra"))]}
    group = planar_roi_group(common, generate_uid(), "L1 trabecular BMD", _image(), ellipse, label)
    return group[0]


def _items(container: Dataset, value_type: str) -> list[Dataset]:
    return [item for item in container.ContentSequence if item.ValueType == value_type]


def test_tracking_identifier_names_an_ohif_tool_that_reads_a_closed_polyline() -> None:
    tag, tools = _ohif_tag_and_tools()
    ellipse = PlanarEllipse(k=3, points=((40.0, 50.0), (80.0, 50.0), (60.0, 38.0), (60.0, 62.0)), area_pixels=1.0)
    identifier = next(i for i in _items(_group(ellipse), "TEXT")
                      if i.ConceptNameCodeSequence[0].CodeValue == "112039").TextValue
    prefix = f"{tag}:PlanarFreehandROI"
    assert "PlanarFreehandROI" in tools
    assert identifier == f"{prefix}:L1 trabecular BMD"  # OHIF matches the prefix; the level's name stays readable


def test_area_is_inferred_from_the_ellipse_outline() -> None:
    """The NUM's INFERRED FROM child is a closed POLYLINE on the same image whose vertices lie on the ellipse of the
    Image Region, and the NUM is the ellipse's area in mm2 (pi a b with the pixel spacing)."""
    a_px, b_px, centre = 20.0, 12.0, np.array([60.0, 50.0])
    points = ((40.0, 50.0), (80.0, 50.0), (60.0, 38.0), (60.0, 62.0))
    ellipse = PlanarEllipse(k=3, points=points, area_pixels=math.pi * a_px * b_px)
    group = _group(ellipse)
    region = _items(group, "SCOORD")[0]
    assert region.GraphicType == "ELLIPSE"
    np.testing.assert_allclose(np.asarray(region.GraphicData).reshape(-1, 2), points)
    area = _items(group, "NUM")[0]
    assert area.ConceptNameCodeSequence[0].CodeMeaning == "Area"
    assert area.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue == "mm2"
    expected_mm2 = math.pi * a_px * PIXEL_SPACING_MM[1] * b_px * PIXEL_SPACING_MM[0]
    assert float(area.MeasuredValueSequence[0].NumericValue) == pytest.approx(expected_mm2, rel=1e-6)
    (outline,) = area.ContentSequence
    assert (outline.RelationshipType, outline.ValueType, outline.GraphicType) == ("INFERRED FROM", "SCOORD",
                                                                                    "POLYLINE")
    xy = np.asarray(outline.GraphicData, dtype=np.float64).reshape(-1, 2)
    np.testing.assert_allclose(xy[0], xy[-1])  # closed
    assert len(xy) >= 33
    on_ellipse = ((xy[:, 0] - centre[0]) / a_px) ** 2 + ((xy[:, 1] - centre[1]) / b_px) ** 2
    np.testing.assert_allclose(on_ellipse, 1.0, atol=1e-4)
    shoelace = 0.5 * abs(np.dot(xy[:-1, 0], xy[1:, 1]) - np.dot(xy[1:, 0], xy[:-1, 1]))
    assert shoelace == pytest.approx(math.pi * a_px * b_px, rel=0.01)
    assert outline.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == \
        region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID


def test_comment_is_ohifs_name_of_the_measurement() -> None:
    ellipse = PlanarEllipse(k=0, points=((1.0, 5.0), (9.0, 5.0), (5.0, 3.0), (5.0, 7.0)), area_pixels=1.0)
    comments = [i for i in _items(_group(ellipse, "L1: BMD 101.25 mg/cm3"), "TEXT")
                if (i.ConceptNameCodeSequence[0].CodeValue, i.ConceptNameCodeSequence[0].CodingSchemeDesignator)
                == ("121106", "DCM")]
    assert [c.TextValue for c in comments] == ["L1: BMD 101.25 mg/cm3"]


@pytest.mark.parametrize(("bmd", "evaluable", "uncertain", "label"), [
    (101.254, True, False, "L1: BMD 101.25 mg/cm3"),
    (88.0, True, True, "L1?: BMD 88.00 mg/cm3"),
    (None, False, False, "L1: no BMD (not evaluable)"),
    (95.5, False, False, "L1: BMD 95.50 mg/cm3 (not evaluable)"),
])
def test_viewer_label(bmd: float | None, evaluable: bool, uncertain: bool, label: str) -> None:
    assert viewer_label(_measurement(VertebraLevel.L1, bmd, evaluable, uncertain)) == label
