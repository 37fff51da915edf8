"""/health's disk field: free space under [storage] min_free_mb makes a healthy node "degraded"."""

from __future__ import annotations

import time
from pathlib import Path

from service.db.engine import make_engine
from service.web.health import disk_status, health_body

MIB = 1024 * 1024


def test_disk_under_the_reserve_makes_health_degraded(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'node.db'}")
    try:
        low = lambda: disk_status(tmp_path, 64 * MIB, lambda _: 10 * MIB)  # noqa: E731
        code, body = health_body(engine, "BMDNODE", time.monotonic(), None, low)
        assert (code, body["status"]) == (200, "degraded")
        assert body["disk"] == {"free_bytes": 10 * MIB, "min_free_bytes": 64 * MIB, "status": "low"}
        ok = lambda: disk_status(tmp_path, 64 * MIB, lambda _: 65 * MIB)  # noqa: E731
        code, body = health_body(engine, "BMDNODE", time.monotonic(), None, ok)
        assert (code, body["status"], body["disk"]["status"]) == (200, "ok", "ok")
        code, body = health_body(engine, "BMDNODE", time.monotonic(), lambda: {"scp": False}, low)
        assert (code, body["status"]) == (503, "unavailable")  # down wins over degraded
    finally:
        engine.dispose()


def test_the_real_file_system_is_measured(tmp_path: Path) -> None:
    status = disk_status(tmp_path, 10**15)  # a petabyte reserve: no test machine has that free
    assert status["status"] == "low" and 0 < status["free_bytes"] < 10**15
