"""Worker and exporter lag in /health and /metrics (issue 19 pt 6): the ages come from times this test sets in the
database (jobs queued and exports created at known moments), not from the code under test."""

from __future__ import annotations

import dataclasses
import json
import time
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy
from prometheus_client.parser import text_string_to_metric_families

from service.config import Config, DashboardSettings
from service.db.queries import record_instance
from service.db.tables import utcnow
from service.queue import jobs
from service.web import metrics
from service.web.health import NO_WORKER_GRACE_SECONDS, health_body, read_queue_lag
from service.web.metrics import NodeCollector, metrics_registry, render_metrics
from service.web.server import start_http
from tests.node_support import _success_for_tests, record

HOUR = 3600.0
SERVE_PARTS = {"scp": True, "scheduler": True, "exporter": True, "http": True, "worker-0": True}


def _queue_job(engine: sqlalchemy.Engine, series: str, age_seconds: float) -> int:
    record_instance(engine, record(series, f"{series}.1"))
    job_id = jobs.enqueue(engine, series, max_attempts=1, now=utcnow() - timedelta(seconds=age_seconds))
    assert job_id is not None
    return job_id


def _health(engine: sqlalchemy.Engine, parts: dict[str, bool] | None = None) -> tuple[int, dict[str, object]]:
    return health_body(engine, "BMDNODE", time.monotonic(), (lambda: parts) if parts is not None else None,
                       max_queue_lag_seconds=HOUR)


def test_an_empty_queue_is_ok(sqlite_engine: sqlalchemy.Engine) -> None:
    code, body = _health(sqlite_engine, SERVE_PARTS)
    assert (code, body["status"]) == (200, "ok") and "reasons" not in body
    assert body["queue"] == {"oldest_queued_job_age_s": None, "oldest_pending_export_age_s": None,
                             "jobs_waiting": 0, "max_lag_s": HOUR}


def test_a_job_queued_beyond_the_limit_degrades(sqlite_engine: sqlalchemy.Engine) -> None:
    _queue_job(sqlite_engine, "1.2.10", age_seconds=600)
    code, body = _health(sqlite_engine, SERVE_PARTS)
    assert (code, body["status"]) == (200, "ok")
    assert 600 <= body["queue"]["oldest_queued_job_age_s"] < 660  # type: ignore[index]
    _queue_job(sqlite_engine, "1.2.11", age_seconds=2 * HOUR)
    code, body = _health(sqlite_engine, SERVE_PARTS)
    assert (code, body["status"]) == (200, "degraded")
    assert 2 * HOUR <= body["queue"]["oldest_queued_job_age_s"] < 2 * HOUR + 60  # type: ignore[index]
    reasons: list[str] = body["reasons"]  # type: ignore[assignment]
    assert len(reasons) == 1
    reason = reasons[0]
    assert reason.startswith("the oldest queued job has waited 720") and reason.endswith(" s (limit 3600 s)")


def test_an_export_unsent_beyond_the_limit_degrades(sqlite_engine: sqlalchemy.Engine) -> None:
    job_id = _queue_job(sqlite_engine, "1.2.12", age_seconds=5)
    assert jobs.claim_next(sqlite_engine, worker_id="w", lease_seconds=60) is not None
    sent_at = utcnow() - timedelta(seconds=3 * HOUR)
    assert jobs.finish(sqlite_engine, job_id, worker_id="w", success=_success_for_tests(job_id),
                       peer_names=["pacs"], now=sent_at)
    lag = read_queue_lag(sqlite_engine)
    assert lag.oldest_queued_job_age_seconds is None and lag.jobs_waiting == 0
    assert lag.oldest_pending_export_age_seconds is not None
    assert 3 * HOUR <= lag.oldest_pending_export_age_seconds < 3 * HOUR + 60
    code, body = _health(sqlite_engine, SERVE_PARTS)
    assert (code, body["status"]) == (200, "degraded")
    assert any("unsent export" in reason for reason in body["reasons"])  # type: ignore[attr-defined]


def test_jobs_waiting_with_no_worker_alive_degrade(sqlite_engine: sqlalchemy.Engine) -> None:
    no_workers = {name: alive for name, alive in SERVE_PARTS.items() if not name.startswith("worker-")}
    _queue_job(sqlite_engine, "1.2.13", age_seconds=NO_WORKER_GRACE_SECONDS / 3)  # due, but only just
    assert _health(sqlite_engine, no_workers)[1]["status"] == "ok"
    _queue_job(sqlite_engine, "1.2.14", age_seconds=NO_WORKER_GRACE_SECONDS + 30)
    code, body = _health(sqlite_engine, no_workers)
    assert (code, body["status"]) == (200, "degraded")
    assert body["reasons"] == ["1 job(s) waiting and no worker process alive in this node"]
    assert _health(sqlite_engine, SERVE_PARTS)[1]["status"] == "ok"  # a live worker will take it
    code, body = _health(sqlite_engine, {**SERVE_PARTS, "worker-0": False})
    assert (code, body["status"]) == (503, "unavailable")  # a dead part of the node wins over degraded
    assert "worker-0 is not running" in body["reasons"]  # type: ignore[operator]
    assert _health(sqlite_engine, None)[1]["status"] == "ok"  # a lone HTTP view knows no workers: no guess


def test_lag_gauges_in_metrics(sqlite_engine: sqlalchemy.Engine, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "CACHE_SECONDS", 0.0)
    registry = metrics_registry(NodeCollector(sqlite_engine, tmp_path))

    def gauges() -> dict[str, float]:
        return {s.name: s.value for family in text_string_to_metric_families(render_metrics(registry).decode())
                for s in family.samples if s.name.startswith("bmd_node_oldest_")}

    assert gauges() == {"bmd_node_oldest_queued_job_age_seconds": 0.0,
                        "bmd_node_oldest_pending_export_age_seconds": 0.0}
    _queue_job(sqlite_engine, "1.2.15", age_seconds=1234)
    assert 1234 <= gauges()["bmd_node_oldest_queued_job_age_seconds"] < 1294


def test_the_limit_comes_from_the_configuration(sqlite_engine: sqlalchemy.Engine, tmp_path: Path) -> None:
    config = dataclasses.replace(Config().with_node(http_port=0, storage_dir=tmp_path / "storage",
                                                    max_queue_lag_seconds=60.0),
                                 dashboard=DashboardSettings(session_secret_file=tmp_path / "session.key"))
    _queue_job(sqlite_engine, "1.2.16", age_seconds=120)
    server = start_http(config, sqlite_engine, host="127.0.0.1")
    try:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/health", timeout=5) as response:
                code, body = response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            code, body = exc.code, json.loads(exc.read())
    finally:
        server.stop()
    assert body["queue"]["max_lag_s"] == 60.0
    assert body["status"] == "degraded" and "limit 60 s" in " ".join(body["reasons"]), (code, body)
