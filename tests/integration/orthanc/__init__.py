"""A real Orthanc (Debian package) for integration tests: loopback ports, config in a temp dir, Lua auto-routing.

``OrthancServer`` writes ``orthanc.json`` from the template next to this file, starts ``/usr/sbin/Orthanc`` with
``TCP_NODELAY=1`` (Orthanc stalls ~40 ms per PDU without it), waits for its REST API, and offers the few REST calls
the tests need (urllib only).
"""

from __future__ import annotations

import json
import shutil
import string
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.integration.dicom_net_support import PEER_ENV
from tests.support.net import free_port

HERE = Path(__file__).resolve().parent
LUA_FORWARD_CT = HERE / "forward_ct.lua"
CONFIG_TEMPLATE = HERE / "orthanc.json.template"
ORTHANC_BINARY_CANDIDATES = ("/usr/sbin/Orthanc", "Orthanc")


def orthanc_binary() -> str:
    for candidate in ORTHANC_BINARY_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    raise RuntimeError("Orthanc is not installed (Debian package 'orthanc'; `make install` installs it)")


@dataclass
class OrthancServer:
    work_dir: Path
    node_ae_title: str
    node_port: int
    ae_title: str = "ORTHANC"
    stable_age_s: int = 2
    lua_script: Path | None = LUA_FORWARD_CT
    http_port: int = field(default_factory=free_port)
    dicom_port: int = field(default_factory=free_port)
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def log_path(self) -> Path:
        return self.work_dir / "orthanc.log"

    def write_config(self) -> Path:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        storage = self.work_dir / "db"
        storage.mkdir(exist_ok=True)
        lua = self.lua_script or (self.work_dir / "empty.lua")
        if self.lua_script is None:
            lua.write_text("-- no auto-routing\n")
        text = string.Template(CONFIG_TEMPLATE.read_text()).substitute(
            storage_dir=str(storage),
            lua_script=str(lua),
            http_port=self.http_port,
            ae_title=self.ae_title,
            dicom_port=self.dicom_port,
            node_ae_title=self.node_ae_title,
            node_port=self.node_port,
            stable_age_s=self.stable_age_s,
        )
        json.loads(text)  # the template must stay valid JSON
        path = self.work_dir / "orthanc.json"
        path.write_text(text)
        return path

    def start(self, timeout_s: float = 60.0) -> OrthancServer:
        config = self.write_config()
        log = self.log_path.open("wb")
        self._proc = subprocess.Popen([orthanc_binary(), str(config)], env=PEER_ENV, stdout=log,
                                      stderr=subprocess.STDOUT, cwd=self.work_dir)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self._proc.returncode}: {self.log_tail()}")
            try:
                self.get("/system")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.2)
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

    def __enter__(self) -> OrthancServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, n_chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n_chars:]
        except OSError:
            return "(no log)"

    # --- REST -------------------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None) -> Any:
        request = urllib.request.Request(self.base_url + path, data=body, method=method)
        if content_type:
            request.add_header("Content-Type", content_type)
        with urllib.request.urlopen(request, timeout=30) as response:
            payload = response.read()
        return json.loads(payload) if payload else None

    def get(self, path: str) -> Any:
        return self._request("GET", path)

    def post_json(self, path: str, body: Any) -> Any:
        return self._request("POST", path, json.dumps(body).encode(), "application/json")

    def upload(self, path: Path) -> str:
        """Store one DICOM file through the REST API; returns Orthanc's instance id."""
        answer = self._request("POST", "/instances", path.read_bytes(), "application/dicom")
        return str(answer["ID"])

    def instances_in_study(self, study_instance_uid: str) -> list[dict[str, Any]]:
        """Every instance of the study, with its SOP Class UID and Modality (from the stored file's tags)."""
        found = self.post_json("/tools/find", {"Level": "Instance", "Query": {"StudyInstanceUID": study_instance_uid},
                                               "Expand": True})
        out = []
        for item in found:
            tags = self.get(f"/instances/{item['ID']}/simplified-tags")
            out.append({"id": item["ID"], "SOPInstanceUID": tags.get("SOPInstanceUID"),
                        "SOPClassUID": tags.get("SOPClassUID"), "Modality": tags.get("Modality"),
                        "SeriesInstanceUID": tags.get("SeriesInstanceUID")})
        return out
