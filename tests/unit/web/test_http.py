from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import sqlalchemy

from service.config import Config
from service.db.queries import record_instance
from service.web.health import start_http
from tests.node_support import record


def _get(port: int, path: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_health_and_metrics(sqlite_engine: sqlalchemy.Engine) -> None:
    record_instance(sqlite_engine, record("1.2.3", "1.2.3.1"))
    server = start_http(Config().with_node(http_port=0), sqlite_engine, host="127.0.0.1")
    try:
        port = server.server_address[1]
        code, body = _get(port, "/health")
        assert code == 200 and body["status"] == "ok" and body["database"] == "ok"
        code, body = _get(port, "/metrics")
        assert code == 200 and body["instances"] == {"stored": 1} and body["series"] == {"receiving": 1}
        assert _get(port, "/nope")[0] == 404
    finally:
        server.shutdown()
        server.server_close()


def test_health_reports_unavailable_database(tmp_path: Path) -> None:
    (tmp_path / "not-a-dir").write_text("x")
    broken = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'not-a-dir' / 'x.db'}")  # cannot be opened
    server = start_http(Config().with_node(http_port=0), broken, host="127.0.0.1")
    try:
        code, body = _get(server.server_address[1], "/health")
        assert code == 503 and body["status"] == "unavailable"
    finally:
        server.shutdown()
        server.server_close()
