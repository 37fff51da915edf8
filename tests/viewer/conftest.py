"""Viewer tests: Orthanc (DICOMweb) + OHIF on one origin + headless Chromium, one site and browser per module.

They are integration tests (``-m integration`` selects them with the others) and slow (software WebGL). What they
need comes from ``make install``: Debian ``orthanc``, ``orthanc-dicomweb``, ``chromium``, ``chromium-driver``;
``npm ci`` in ``viewer/`` (OHIF); ``selenium`` in the dev extras. A missing part fails the test with what to install.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from service.offline.viewer.browser import chromium
from service.offline.viewer.ohif import OhifPage
from service.offline.viewer.site import ViewerSite, viewer_site


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "viewer: drives the OHIF web viewer in headless Chromium")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ViewerSite]:
    with viewer_site(tmp_path_factory.mktemp("viewer_site")) as running:
        yield running


@pytest.fixture(scope="module")
def page(site: ViewerSite) -> Iterator[OhifPage]:
    with chromium() as driver:
        ohif = OhifPage(driver, site.server.origin)
        yield ohif


def console_report(page: OhifPage, n: int = 40) -> str:
    page.console.collect(page.driver)
    return "\n".join(line[:500] for line in page.console.lines[-n:])

