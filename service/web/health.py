"""The JSON bodies of ``/health`` and ``/metrics.json`` (no patient data: states, counts and component names).

GET /health       -> 200 {"status": "ok", "version", "ae_title", "uptime_s", "database": "ok", "components":
                     {"scp": true, "worker-0": true, ...} (under ``serve``)} when the database answers and every
                     part of the node is alive; 503 {"status": "unavailable", ...} otherwise. With ``disk``
                     given, also "disk": {"free_bytes", "min_free_bytes", "status": "ok" | "low" | "unknown"};
                     free space under ``[storage] min_free_mb`` (where C-STORE answers 0xA700) makes an otherwise
                     healthy node 200 {"status": "degraded", ...}: it runs and exports, but cannot receive.
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


def disk_status(storage_dir: Path, min_free_bytes: int,
                free_bytes: Callable[[Path], int | None] | None = None) -> dict[str, Any]:
    """The "disk" field of /health: free bytes on the spool's file system against the receive reserve."""
    free = (free_bytes or disk_free_bytes)(storage_dir)
    status = "unknown" if free is None else ("low" if free < min_free_bytes else "ok")
    return {"free_bytes": free, "min_free_bytes": min_free_bytes, "status": status}


def health_body(engine: sqlalchemy.Engine, ae_title: str, started_monotonic: float,
                components: Callable[[], dict[str, bool]] | None,
                disk: Callable[[], dict[str, Any]] | None = None) -> tuple[int, dict[str, Any]]:
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
    if disk is not None:
        body["disk"] = disk()
    if not healthy:
        body["status"] = "unavailable"
    elif disk is not None and body["disk"]["status"] == "low":
        body["status"] = "degraded"
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
