"""Throughput: studies per hour with N worker processes on PostgreSQL.

For each N a fresh database gets the same K studies recorded as received (their files in place, one queued job
per series, as the SCP and scheduler leave them), then N ``bmd-node worker`` processes (timed recipe, model loaded
at start) drain the queue. Studies/hour = K / (last job finished - first job claimed); the wall time with the
workers' start-up is kept too. On a machine with C cores each worker gets max(1, C // N) BLAS/OpenMP threads.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from sqlalchemy import select

from bench import procs
from bench.data import SeriesSet
from service.db.engine import make_engine, read_session
from service.db.queries import InstanceRecord, record_instance
from service.db.tables import Job
from service.queue import jobs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ThroughputRun:
    workers: int
    threads_per_worker: int
    studies: int
    span_s: float
    """First job claimed -> last job finished."""
    wall_s: float
    """Workers started -> every job finished (includes model loading)."""
    job_s: tuple[float, ...]
    stage_s: dict[str, float]
    """Mean per study of each pipeline stage."""
    truth_fallback: bool
    truth_fallback_s: float = 0.0
    """Total seconds the workers spent loading phantom truth labels (benchmark artefact, inside the span)."""

    @property
    def studies_per_hour(self) -> float:
        return self.studies * 3600.0 / self.span_s


def populate(database_url: str, studies: Sequence[SeriesSet]) -> None:
    """Record every file as a stored instance and queue one job per series (what SCP + scheduler do)."""
    engine = make_engine(database_url)
    try:
        for s in studies:
            for path in s.files:
                ds = dcmread(path, stop_before_pixels=True)
                record_instance(engine, InstanceRecord(
                    sop_instance_uid=str(ds.SOPInstanceUID), sop_class_uid=str(ds.SOPClassUID),
                    study_instance_uid=str(ds.StudyInstanceUID), series_instance_uid=str(ds.SeriesInstanceUID),
                    modality=str(ds.Modality), transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
                    path=str(path), size_bytes=path.stat().st_size, calling_ae_title=procs.SENDER_AE,
                    status="stored", reason=None))
            if jobs.enqueue(engine, s.series_instance_uid, max_attempts=1) is None:
                raise RuntimeError(f"could not queue a job for {s.folder}")
    finally:
        engine.dispose()


def _job_rows(database_url: str) -> list[tuple[str, Any, Any, str | None]]:
    engine = make_engine(database_url)
    try:
        with read_session(engine) as session:
            return [(j.status, j.started_at, j.finished_at, j.last_error) for j in session.scalars(select(Job))]
    finally:
        engine.dispose()


def run_workers(pg: procs.Postgres, studies: Sequence[SeriesSet], folder: Path, *, workers: int, bundle_dir: Path,
                truth_map: Path, timeout_s: float = 1800) -> ThroughputRun:
    shutil.rmtree(folder, ignore_errors=True)  # no stale timing files of an earlier run
    folder.mkdir(parents=True)
    url = pg.create_database(f"bench_throughput_{workers}")
    config = procs.write_toml(folder / "bmd-node.toml", {
        "node": {"ae_title": procs.NODE_AE, "host": "127.0.0.1", "port": 0, "http_port": 0,
                 "storage_dir": str(folder / "storage"), "database_url": url},
        "worker": {"processes": workers, "poll_seconds": 0.2},
        "segmentation": {"bundle_dir": str(bundle_dir)},
    }, [{"name": "sender", "ae_title": procs.SENDER_AE, "host": "127.0.0.1", "port": 104, "send_results": False}])
    procs.run_node_cli(config, "db", "upgrade")
    populate(url, studies)
    threads = max(1, (os.cpu_count() or 1) // workers)
    timings_dir = folder / "timings"
    env = procs.node_env(threads, {"BMD_BENCH_TRUTH_MAP": str(truth_map), "BMD_BENCH_TIMINGS_DIR": str(timings_dir)})
    started = time.monotonic()
    with _Workers(config, folder, env, workers):
        deadline = time.monotonic() + timeout_s
        while True:
            rows = _job_rows(url)
            if all(status in ("succeeded", "failed", "dead") for status, *_ in rows):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{workers} worker(s): jobs not done within {timeout_s} s")
            time.sleep(0.5)
    wall = time.monotonic() - started
    shutil.rmtree(folder / "storage", ignore_errors=True)  # result files; logs and timings stay
    bad = [(status, error) for status, _, _, error in rows if status != "succeeded"]
    if bad:
        raise RuntimeError(f"{len(bad)} job(s) did not succeed: {bad[0]}")
    first = min(r[1] for r in rows)
    last = max(r[2] for r in rows)
    records = [json.loads(p.read_text()) for p in timings_dir.glob("*.json") if not p.name.startswith("ready-")]
    stage_means: dict[str, float] = {}
    for record in records:
        for k, v in record["timings"].items():
            stage_means[k] = stage_means.get(k, 0.0) + float(v) / len(records)
    artefact = sum(float(r.get("truth_fallback_s", 0.0)) for r in records)
    return ThroughputRun(workers, threads, len(studies), (last - first).total_seconds(), wall,
                         tuple((r[2] - r[1]).total_seconds() for r in rows), stage_means,
                         any(r["truth_fallback"] for r in records), artefact)


class _Workers:
    """N ``bmd-node worker`` subprocesses, stopped (SIGTERM) on exit."""

    def __init__(self, config: Path, folder: Path, env: dict[str, str], n: int) -> None:
        self.config, self.folder, self.env, self.n = config, folder, env, n
        self.stack: Any = None

    def __enter__(self) -> _Workers:
        self.stack = contextlib.ExitStack()
        for i in range(self.n):
            self.stack.enter_context(procs.node_process(
                self.config, ["worker", "--pipeline", "bench.pipeline:make_timed_pipeline", "--worker-id", f"w{i}"],
                self.folder / f"worker{i}.log", env=self.env))
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.close()
