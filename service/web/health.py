"""The JSON bodies of ``/health`` and ``/metrics.json`` (no patient data: states, counts and component names).

GET /health       -> 200 {"status": "ok", "version", "ae_title", "uptime_s", "database": "ok", "components":
                     {"scp": true, "worker-0": true, ...} (under ``serve``)} when the database answers and every
                     part of the node is alive; 503 {"status": "unavailable", ...} otherwise. With ``disk``
                     given, also "disk": {"free_bytes", "min_free_bytes", "status": "ok" | "low" | "unknown"};
                     free space under ``[storage] min_free_mb`` (where C-STORE answers 0xA700) makes an otherwise
                     healthy node 200 {"status": "degraded", ...}: it runs and exports, but cannot receive.
                     With ``max_queue_lag_seconds`` given, also "queue": {"oldest_queued_job_age_s",
                     "oldest_pending_export_age_s", "jobs_waiting", "max_lag_s"} (ages in seconds since the job or
                     export was created; null when none waits); an age over the limit, or jobs waiting longer than
                     NO_WORKER_GRACE_SECONDS while no worker process of this node is alive, makes the node
                     "degraded". "reasons" lists why the node is not "ok" (no patient data: counts, ages, names of
                     the node's parts).
GET /metrics.json -> 200 {"jobs": {status: count}, "exports": {...}, "series": {...}, "instances": {...}}.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy
from sqlalchemy import func, select

from service import __version__
from service.db.engine import read_session
from service.db.queries import count_by_status, ping
from service.db.tables import Export, Job, utcnow
from service.domain.status import ExportStatus, JobStatus


def disk_status(storage_dir: Path, min_free_bytes: int,
                free_bytes: Callable[[Path], int | None] | None = None) -> dict[str, Any]:
    """The "disk" field of /health: free bytes on the spool's file system against the receive reserve."""
    free = (free_bytes or disk_free_bytes)(storage_dir)
    status = "unknown" if free is None else ("low" if free < min_free_bytes else "ok")
    return {"free_bytes": free, "min_free_bytes": min_free_bytes, "status": status}


NO_WORKER_GRACE_SECONDS = 30.0
"""A job due this long with no worker process alive in this node makes /health degraded (a worker being
restarted, 5 s, does not)."""


@dataclass(frozen=True)
class QueueLag:
    """What waits: ages in seconds since creation of the oldest queued job and the oldest unsent export (pending or
    sending), None when none; ``jobs_waiting``: queued jobs due for at least NO_WORKER_GRACE_SECONDS."""

    oldest_queued_job_age_seconds: float | None
    oldest_pending_export_age_seconds: float | None
    jobs_waiting: int

    def __post_init__(self) -> None:
        if self.jobs_waiting < 0:
            raise ValueError(f"jobs_waiting must be >= 0, got {self.jobs_waiting}")


def _age_seconds(now: datetime, since: datetime | None) -> float | None:
    if since is None:
        return None
    if since.tzinfo is None:  # SQLite hands back naive UTC
        since = since.replace(tzinfo=UTC)
    return max(0.0, (now - since).total_seconds())


def read_queue_lag(engine: sqlalchemy.Engine, now: datetime | None = None) -> QueueLag:
    now = now or utcnow()
    with read_session(engine) as session:
        oldest_job = session.scalar(select(func.min(Job.created_at)).where(Job.status == JobStatus.QUEUED))
        oldest_export = session.scalar(select(func.min(Export.created_at)).where(
            Export.status.in_((ExportStatus.PENDING, ExportStatus.SENDING))))
        waiting = session.scalar(select(func.count()).select_from(Job).where(
            Job.status == JobStatus.QUEUED, Job.run_after <= now - timedelta(seconds=NO_WORKER_GRACE_SECONDS)))
    return QueueLag(_age_seconds(now, oldest_job), _age_seconds(now, oldest_export), int(waiting or 0))


def lag_reasons(lag: QueueLag, max_lag_seconds: float, components: dict[str, bool] | None) -> list[str]:
    """Why the queue makes the node degraded (empty: it does not)."""
    reasons = []
    for what, age in (("queued job", lag.oldest_queued_job_age_seconds),
                      ("unsent export", lag.oldest_pending_export_age_seconds)):
        if age is not None and age > max_lag_seconds:
            reasons.append(f"the oldest {what} has waited {age:.0f} s (limit {max_lag_seconds:.0f} s)")
    workers = [alive for name, alive in (components or {}).items() if name.startswith("worker-")]
    if components is not None and lag.jobs_waiting and not any(workers):
        reasons.append(f"{lag.jobs_waiting} job(s) waiting and no worker process alive in this node")
    return reasons


def health_body(engine: sqlalchemy.Engine, ae_title: str, started_monotonic: float,
                components: Callable[[], dict[str, bool]] | None,
                disk: Callable[[], dict[str, Any]] | None = None, *,
                max_queue_lag_seconds: float | None = None) -> tuple[int, dict[str, Any]]:
    body: dict[str, Any] = {"status": "ok", "version": __version__, "ae_title": ae_title,
                            "uptime_s": round(time.monotonic() - started_monotonic, 1)}
    down: list[str] = []
    degraded: list[str] = []
    try:
        ping(engine)
        body["database"] = "ok"
    except Exception as exc:  # any failure to reach the database makes the node unavailable
        body["database"] = type(exc).__name__
        down.append(f"database: {type(exc).__name__}")
    parts = components() if components is not None else None
    if parts is not None:
        body["components"] = parts
        down += [f"{name} is not running" for name, alive in parts.items() if not alive]
    if disk is not None:
        body["disk"] = disk()
        if body["disk"]["status"] == "low":
            degraded.append("free disk space under [storage] min_free_mb: C-STORE is refused")
    if max_queue_lag_seconds is not None and body["database"] == "ok":
        try:
            lag = read_queue_lag(engine)
        except sqlalchemy.exc.SQLAlchemyError as exc:
            down.append(f"database: {type(exc).__name__}")
        else:
            body["queue"] = {"oldest_queued_job_age_s": _rounded(lag.oldest_queued_job_age_seconds),
                             "oldest_pending_export_age_s": _rounded(lag.oldest_pending_export_age_seconds),
                             "jobs_waiting": lag.jobs_waiting, "max_lag_s": max_queue_lag_seconds}
            degraded += lag_reasons(lag, max_queue_lag_seconds, parts)
    if down or degraded:
        body["status"] = "unavailable" if down else "degraded"
        body["reasons"] = down + degraded
    return (503 if down else 200), body


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 1)


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
