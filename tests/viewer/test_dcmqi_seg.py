"""Harness check: dcmqi's liver SEG (a SEG known to load in OHIF) shows its overlay on its CT.

This proves the setup (Orthanc DICOMweb, same-origin OHIF, software WebGL, the coloured-pixel count) before the
phantom test judges our own objects with it.
"""

from __future__ import annotations

import pydicom
import pytest

from service.offline.viewer.ohif import OhifPage
from service.offline.viewer.readings import SEG_MIN_NEW_PIXELS, read_seg
from service.offline.viewer.site import ViewerSite
from tests.shared_data import shared_case
from tests.viewer.conftest import console_report

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.viewer]


def test_dcmqi_seg_overlay_appears(site: ViewerSite, page: OhifPage) -> None:
    case = shared_case("dcmqi_3slice")
    files = sorted(case.glob("*.dcm"))
    assert {p.name for p in files} >= {"liver_seg.dcm", "ct_01.dcm"}
    site.orthanc.upload_all(files)
    seg_header = pydicom.dcmread(case / "liver_seg.dcm", stop_before_pixels=True)
    study = str(seg_header.StudyInstanceUID)

    page.open_study(study)
    seg = read_seg(page)

    assert seg.description == seg_header.SeriesDescription  # OHIF lists the SEG under its SeriesDescription
    assert seg.coloured_before < SEG_MIN_NEW_PIXELS, "the bare CT must render grey"
    assert seg.overlay_shown, (seg, console_report(page))
