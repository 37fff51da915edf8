"""One origin for the OHIF viewer and Orthanc's DICOMweb: static files with SPA fallback plus a reverse proxy.

OHIF's prebuilt ``dist/`` is a single-page app: ``/viewer?StudyInstanceUIDs=...`` is a client route, so any path
that is not a file gets ``index.html``. ``/app-config.js`` is ours (``viewer/app-config.js``), not the dist's demo
configuration. ``/dicom-web/...`` goes to Orthanc's DICOMweb plugin unchanged, with the browser's Host header kept
so that the BulkDataURIs Orthanc writes point back at this origin. Orthanc's ServeFolders plugin cannot do the SPA
fallback, hence this small stdlib server (threads; one per request).
"""

from __future__ import annotations

import http.client
import mimetypes
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

DICOMWEB_PREFIX = "/dicom-web/"
PROXY_TIMEOUT_S = 120.0
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
                        "transfer-encoding", "upgrade"})
CROSS_ORIGIN_ISOLATION = (("Cross-Origin-Opener-Policy", "same-origin"),
                          ("Cross-Origin-Embedder-Policy", "require-corp"))
"""Cross-origin isolation: cornerstone3D uses SharedArrayBuffer for volumes when the page is isolated."""
mimetypes.add_type("application/wasm", ".wasm")
mimetypes.add_type("text/javascript", ".js")


@dataclass(frozen=True)
class SiteFiles:
    """What the server serves: the OHIF dist folder and our app-config.js in its place."""

    dist_dir: Path
    app_config: Path

    def __post_init__(self) -> None:
        if not (self.dist_dir / "index.html").is_file():
            raise ValueError(f"dist_dir {self.dist_dir} has no index.html (run `make install`: npm ci in viewer/)")
        if not self.app_config.is_file():
            raise ValueError(f"app_config {self.app_config} is not a file")

    def resolve(self, url_path: str) -> Path:
        """The file for a URL path: app-config.js, a file under dist, else index.html (SPA routes)."""
        if url_path == "/app-config.js":
            return self.app_config
        candidate = (self.dist_dir / url_path.lstrip("/")).resolve()
        if candidate.is_file() and candidate.is_relative_to(self.dist_dir.resolve()):
            return candidate
        return self.dist_dir / "index.html"


def _handler_class(files: SiteFiles, orthanc_port: int) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            return

        def do_GET(self) -> None:
            self._dispatch()

        def do_HEAD(self) -> None:
            self._dispatch()

        def do_POST(self) -> None:
            self._dispatch()

        def _dispatch(self) -> None:
            path = urlsplit(self.path).path
            if path.startswith(DICOMWEB_PREFIX):
                self._proxy()
            else:
                self._static(path)

        def _static(self, path: str) -> None:
            target = files.resolve(path)
            body = target.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", mimetypes.guess_type(target.name)[0] or "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-cache")
            for name, value in CROSS_ORIGIN_ISOLATION:
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _proxy(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            upstream = http.client.HTTPConnection("127.0.0.1", orthanc_port, timeout=PROXY_TIMEOUT_S)
            try:
                upstream.request(self.command, self.path, body=body, headers=headers)
                answer = upstream.getresponse()
                self.send_response(answer.status, answer.reason)
                for name, value in answer.getheaders():
                    if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                        self.send_header(name, value)
                self.send_header("Cross-Origin-Resource-Policy", "same-origin")
                payload = answer.read()  # Orthanc answers in one piece; keep Content-Length exact for the browser
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)
            finally:
                upstream.close()

    return Handler


@dataclass
class ViewerServer:
    """OHIF + DICOMweb on ``http://127.0.0.1:<port>``; a context manager running the server in a thread."""

    files: SiteFiles
    orthanc_http_port: int
    port: int = 0
    _server: ThreadingHTTPServer | None = field(default=None, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ViewerServer:
        server = ThreadingHTTPServer(("127.0.0.1", self.port), _handler_class(self.files, self.orthanc_http_port))
        server.daemon_threads = True
        self.port = int(server.server_address[1])
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="viewer-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> ViewerServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

