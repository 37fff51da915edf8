"""A throw-away Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``) serving DICOMweb on a loopback port.

Configuration and storage live in a work folder; no DICOM port (uploads go through the REST API, as a PACS
administrator would import files). The DICOMweb root is ``/dicom-web/`` (the plugin's default), which the viewer
server forwards unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ORTHANC_BINARIES = ("/usr/sbin/Orthanc", "Orthanc")
DICOMWEB_PLUGINS = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so", "/usr/lib/orthanc/libOrthancDicomWeb.so.1.7")
REST_TIMEOUT_S = 60.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def orthanc_binary() -> str:
    for candidate in ORTHANC_BINARIES:
        found = shutil.which(candidate)
        if found:
            return found
    raise RuntimeError("Orthanc is not installed (Debian package 'orthanc'; `make install` installs it)")


def dicomweb_plugin() -> str:
    for candidate in DICOMWEB_PLUGINS:
        if Path(candidate).is_file():
            return candidate
    raise RuntimeError("Orthanc's DICOMweb plugin is missing (Debian package 'orthanc-dicomweb'; `make install`)")


def orthanc_config(storage_dir: Path, http_port: int) -> dict[str, Any]:
    return {
        "Name": "bmd-node-viewer-orthanc",
        "StorageDirectory": str(storage_dir),
        "IndexDirectory": str(storage_dir),
        "StorageCompression": False,
        "Plugins": [dicomweb_plugin()],
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": False,
        "HttpTimeout": 60,
        "OverwriteInstances": True,
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "Ssl": False,
                     "StudiesMetadata": "Full", "SeriesMetadata": "Full"},
    }


@dataclass
class DicomWebOrthanc:
    """Start with ``with DicomWebOrthanc(work_dir) as orthanc:``; ``upload`` files, then point a viewer at it."""

    work_dir: Path
    http_port: int = field(default_factory=_free_port)
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def log_path(self) -> Path:
        return self.work_dir / "orthanc.log"

    def start(self, timeout_s: float = 60.0) -> DicomWebOrthanc:
        storage = self.work_dir / "db"
        storage.mkdir(parents=True, exist_ok=True)
        config = self.work_dir / "orthanc.json"
        config.write_text(json.dumps(orthanc_config(storage, self.http_port), indent=2))
        env = {**os.environ, "TCP_NODELAY": "1"}
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen([orthanc_binary(), str(config)], stdout=log, stderr=subprocess.STDOUT,
                                          cwd=self.work_dir, env=env)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self._proc.returncode}: {self.log_tail()}")
            try:
                plugins = self.get("/plugins")
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.2)
                continue
            if "dicom-web" not in plugins:
                raise RuntimeError(f"Orthanc started without its DICOMweb plugin: {plugins}; {self.log_tail()}")
            return self
        raise TimeoutError(f"Orthanc REST API not up after {timeout_s} s: {self.log_tail()}")

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def __enter__(self) -> DicomWebOrthanc:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, n_chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n_chars:]
        except OSError:
            return "(no log)"

    def _request(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None) -> Any:
        request = urllib.request.Request(self.base_url + path, data=body, method=method)
        if content_type:
            request.add_header("Content-Type", content_type)
        with urllib.request.urlopen(request, timeout=REST_TIMEOUT_S) as response:
            payload = response.read()
        return json.loads(payload) if payload else None

    def get(self, path: str) -> Any:
        return self._request("GET", path)

    def upload(self, path: Path) -> str:
        """Store one DICOM file through the REST API; returns Orthanc's instance id."""
        answer = self._request("POST", "/instances", path.read_bytes(), "application/dicom")
        return str(answer["ID"])

    def upload_all(self, paths: Iterable[Path]) -> list[str]:
        return [self.upload(path) for path in paths]
