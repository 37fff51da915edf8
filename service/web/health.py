"""HTTP health endpoint (stdlib http.server) on ``node.http_port``.

GET /health  -> 200 {"status": "ok", ...} when the database answers and every part of the node is alive
               ("components": {"scp": true, "worker-0": true, ...} under ``serve``), 503 otherwise.
GET /metrics -> 200 {"jobs": {status: count}, "exports": {...}, "series": {...}, "instances": {...}} (JSON).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import sqlalchemy

from service import __version__
from service.config import Config
from service.db.queries import count_by_status, ping

log = logging.getLogger(__name__)


class HealthServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], config: Config, engine: sqlalchemy.Engine,
                 components: Callable[[], dict[str, bool]] | None = None) -> None:
        super().__init__(address, _Handler)
        self.config = config
        self.engine = engine
        self.components = components
        self.started = time.monotonic()


class _Handler(BaseHTTPRequestHandler):
    server: HealthServer

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        if path == "/health":
            self._health()
        elif path == "/metrics":
            self._metrics()
        else:
            self._send(404, {"error": f"unknown path {path}", "paths": ["/health", "/metrics"]})

    def _health(self) -> None:
        body: dict[str, Any] = {"status": "ok", "version": __version__, "ae_title": self.server.config.node.ae_title,
                                "uptime_s": round(time.monotonic() - self.server.started, 1)}
        healthy = True
        try:
            ping(self.server.engine)
            body["database"] = "ok"
        except Exception as exc:
            body["database"] = type(exc).__name__
            healthy = False
        if self.server.components is not None:
            components = self.server.components()
            body["components"] = components
            healthy = healthy and all(components.values())
        if not healthy:
            body["status"] = "unavailable"
        self._send(200 if healthy else 503, body)

    def _metrics(self) -> None:
        try:
            self._send(200, count_by_status(self.server.engine))
        except Exception as exc:
            self._send(503, {"error": type(exc).__name__})

    def _send(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode("utf-8")
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http: " + format, *args)


def start_http(config: Config, engine: sqlalchemy.Engine, host: str | None = None,
               components: Callable[[], dict[str, bool]] | None = None) -> HealthServer:
    """Start serving in a daemon thread; ``server.shutdown()`` stops it. ``server.server_address`` has the port.
    ``components`` reports which parts of the node are alive (part of /health)."""
    server = HealthServer((host or config.node.host, config.node.http_port), config, engine, components)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    log.info("HTTP health on %s:%s", *server.server_address[:2])
    return server


def run_http(config: Config, engine: sqlalchemy.Engine, stop_event: threading.Event,
             components: Callable[[], dict[str, bool]] | None = None) -> None:
    server = start_http(config, engine, components=components)
    try:
        stop_event.wait()
    finally:
        server.shutdown()
        server.server_close()
