"""The JSON bodies of ``/health`` and ``/metrics.json`` (no patient data: states, counts and component names).

GET /health       -> 200 {"status": "ok", "version", "ae_title", "uptime_s", "database": "ok", "components":
                     {"scp": true, "worker-0": true, ...} (under ``serve``)} when the database answers and every
                     part of the node is alive; 503 {"status": "unavailable", ...} otherwise.
GET /metrics.json -> 200 {"jobs": {status: count}, "exports": {...}, "series": {...}, "instances": {...}}.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy

from service import __version__
from service.db.queries import count_by_status, ping


def health_body(engine: sqlalchemy.Engine, ae_title: str, started_monotonic: float,
                components: Callable[[], dict[str, bool]] | None) -> tuple[int, dict[str, Any]]:
    body: dict[str, Any] = {"status": "ok", "version": __version__, "ae_title": ae_title,
                            "uptime_s": round(time.monotonic() - started_monotonic, 1)}
    healthy = True
    try:
        ping(engine)
        body["database"] = "ok"
    except Exception as exc:  # any failure to reach the database makes the node unavailable
        body["database"] = type(exc).__name__
        healthy = False
    if components is not None:
        parts = components()
        body["components"] = parts
        healthy = healthy and all(parts.values())
    if not healthy:
        body["status"] = "unavailable"
    return (200 if healthy else 503), body


def metrics_json(engine: sqlalchemy.Engine) -> tuple[int, dict[str, Any]]:
    try:
        return 200, count_by_status(engine)
    except Exception as exc:  # the database is down: say so rather than fail the request
        return 503, {"error": type(exc).__name__}


def disk_free_bytes(path: Path) -> int | None:
    """Free bytes on the file system holding ``path`` (its nearest existing parent); None when unreadable."""
    current = Path(path).resolve()
    while not current.exists() and current != current.parent:
        current = current.parent
    try:
        return int(shutil.disk_usage(current).free)
    except OSError:
        return None
