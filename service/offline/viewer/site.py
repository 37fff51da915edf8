"""The viewer site of the tests and of the screenshot command: Orthanc with DICOMweb behind OHIF, one origin.

    with viewer_site(work_dir) as site, chromium() as driver:
        site.orthanc.upload_all(files)
        page = OhifPage(driver, site.server.origin)
        page.open_study(study_instance_uid)

OHIF comes from ``viewer/node_modules/@ohif/app/dist`` (``make install`` runs ``npm ci`` in ``viewer/``, pinned by
version and integrity in ``viewer/package-lock.json``); its configuration is ``viewer/app-config.js``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from service.offline.viewer.orthanc import DicomWebOrthanc
from service.offline.viewer.server import SiteFiles, ViewerServer

REPO_ROOT = Path(__file__).resolve().parents[3]
VIEWER_DIR = REPO_ROOT / "viewer"
OHIF_DIST = VIEWER_DIR / "node_modules" / "@ohif" / "app" / "dist"
APP_CONFIG = VIEWER_DIR / "app-config.js"


def site_files() -> SiteFiles:
    """OHIF's dist and our app-config.js; a clear error when ``npm ci`` has not run."""
    if not OHIF_DIST.is_dir():
        raise RuntimeError(f"OHIF is not installed: {OHIF_DIST} missing (`make install` runs npm ci in {VIEWER_DIR})")
    return SiteFiles(OHIF_DIST, APP_CONFIG)


@dataclass(frozen=True)
class ViewerSite:
    orthanc: DicomWebOrthanc
    server: ViewerServer


@contextmanager
def viewer_site(work_dir: Path) -> Iterator[ViewerSite]:
    """Orthanc (DICOMweb) and the same-origin server, both stopped on exit."""
    files = site_files()
    with DicomWebOrthanc(work_dir / "orthanc") as orthanc, ViewerServer(files, orthanc.http_port) as server:
        yield ViewerSite(orthanc, server)
