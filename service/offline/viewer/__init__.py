"""Our result objects in the OHIF web viewer: Orthanc (DICOMweb) + OHIF on one origin + headless Chromium.

Used by tests/viewer and by ``python -m service.offline.viewer.screenshots`` (docs/viewer/README.md). The node never
imports this package.
"""
