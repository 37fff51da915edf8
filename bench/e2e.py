"""End-to-end latency through the whole node: ``bmd-node serve`` (SCP, scheduler, 1 worker, exporter; SQLite) with
a DCMTK storescp as the receiving PACS. For each study: storescu sends the series (one association); the clock
starts when storescu has its last C-STORE acknowledged and ends at the ``sent_at`` of the last result object's
export (the PACS acknowledged it). The configured stable-series wait is subtracted. The worker runs
bench.pipeline's timed recipe, so the pipeline part is broken into its stages; the rest comes from the job and
export timestamps in the node's database:

    detect_s        last ack -> job queued, minus the stable wait (scheduler poll + series checks)
    queue_s         job queued -> claimed by the worker
    <stages>        bench.pipeline.STAGES
    store_commit_s  claimed -> success committed, minus the pipeline (input query, result files written + fsync)
    export_s        success committed -> last object acknowledged by the PACS (exporter poll + C-STORE)

The worker loads the model before the first study is sent (as a running node has), so no run pays it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from bench import procs
from bench.data import SeriesSet
from bench.pipeline import STAGES
from service.db.engine import make_engine, read_session
from service.db.tables import Export, Job, ResultObject, Series
from tests.support.net import free_port

log = logging.getLogger(__name__)

POLL_S = 0.2
STABLE_SECONDS = 1.0


@dataclass(frozen=True)
class E2ERun:
    slices: int
    send_s: float
    latency_s: float
    """last instance acknowledged -> last result acknowledged by the PACS, minus the stable wait (and minus the
    benchmark's own truth-label loading when it falls back to the phantom's labels)."""
    parts: dict[str, float]
    truth_fallback: bool
    objects: int
    worker_max_rss_mib: float | None
    notes: tuple[str, ...] = field(default=())


def e2e_config(folder: Path, *, node_port: int, pacs_port: int, bundle_dir: Path, stable_s: float) -> Path:
    return procs.write_toml(folder / "bmd-node.toml", {
        "node": {"ae_title": procs.NODE_AE, "host": "127.0.0.1", "port": node_port, "http_port": 0,
                 "storage_dir": str(folder / "storage"), "database_url": f"sqlite:///{folder / 'node.db'}",
                 "series_stable_seconds": stable_s},
        "series": {"scheduler_poll_seconds": POLL_S},
        "worker": {"processes": 1, "poll_seconds": POLL_S},
        "exporter": {"poll_seconds": POLL_S},
        "segmentation": {"bundle_dir": str(bundle_dir)},
    }, [
        {"name": "sender", "ae_title": procs.SENDER_AE, "host": "127.0.0.1", "port": 104, "send_results": False},
        {"name": "pacs", "ae_title": procs.PACS_AE, "host": "127.0.0.1", "port": pacs_port, "send_results": True},
    ])


def _wait_ready(timings_dir: Path, proc: Any, log_path: Path, timeout_s: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = sorted(timings_dir.glob("ready-*.json"))
        if found:
            return dict(json.loads(found[0].read_text()))
        if proc.poll() is not None:
            raise RuntimeError(f"bmd-node serve exited ({proc.returncode}): "
                               f"{log_path.read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)
    raise TimeoutError(f"the worker did not load its model within {timeout_s} s")


@dataclass(frozen=True)
class _JobState:
    status: str
    error: str | None
    created: dt.datetime | None
    started: dt.datetime | None
    finished: dt.datetime | None
    exports: tuple[tuple[str, dt.datetime | None], ...]


def job_state(engine: Any, series_instance_uid: str) -> _JobState | None:
    with read_session(engine) as session:
        job = session.scalars(select(Job).where(Job.series_instance_uid == series_instance_uid)
                              .order_by(Job.id.desc())).first()
        if job is None:
            series = session.scalars(select(Series).where(Series.series_instance_uid == series_instance_uid)).first()
            if series is not None and series.status in ("rejected", "not_selected"):
                raise RuntimeError(f"the node did not queue the series: {series.status} ({series.reason})")
            return None
        rows = session.execute(select(Export.status, Export.sent_at).join(ResultObject)
                               .where(ResultObject.job_id == job.id)).tuples().all()
        return _JobState(job.status, job.last_error, job.created_at, job.started_at, job.finished_at,
                         tuple((status, sent) for status, sent in rows))


def _wait_done(engine: Any, series: SeriesSet, proc: Any, timeout_s: float) -> _JobState:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = job_state(engine, series.series_instance_uid)
        if state is not None:
            if state.status in ("failed", "dead"):
                raise RuntimeError(f"job for {series.folder.name} ended {state.status}: {state.error}")
            if state.status == "succeeded" and all(s in ("sent", "dead") for s, _ in state.exports):
                if any(s == "dead" for s, _ in state.exports):
                    raise RuntimeError(f"an export of {series.folder.name} went to the dead letter")
                return state
        if proc.poll() is not None:
            raise RuntimeError(f"bmd-node serve exited with {proc.returncode}")
        time.sleep(0.05)
    raise TimeoutError(f"{series.folder.name}: results not delivered within {timeout_s} s")


def run_e2e(studies: Sequence[SeriesSet], folder: Path, *, bundle_dir: Path, truth_map: Path,
            threads: int | None = None, stable_s: float = STABLE_SECONDS, timeout_s: float = 900) -> list[E2ERun]:
    """Each study once through a running node (one serve process for all of them)."""

    shutil.rmtree(folder, ignore_errors=True)  # no stale ready/timing files of an earlier run
    folder.mkdir(parents=True)
    node_port, pacs_port = free_port(), free_port()
    config = e2e_config(folder, node_port=node_port, pacs_port=pacs_port, bundle_dir=bundle_dir, stable_s=stable_s)
    timings_dir = folder / "timings"
    env = procs.node_env(threads, {"BMD_BENCH_TRUTH_MAP": str(truth_map), "BMD_BENCH_TIMINGS_DIR": str(timings_dir)})
    procs.run_node_cli(config, "db", "upgrade", env=env)
    engine = make_engine(f"sqlite:///{folder / 'node.db'}")
    runs = []
    log_path = folder / "serve.log"
    serve_args = ["serve", "--workers", "1", "--pipeline", "bench.pipeline:make_timed_pipeline"]
    try:
        with procs.storescp(folder / "pacs", pacs_port, ae_title=procs.PACS_AE), \
                procs.node_process(config, serve_args, log_path, env=env, wait_port=node_port) as proc:
            _wait_ready(timings_dir, proc, log_path)
            for series in studies:
                started = time.perf_counter()
                procs.send_series(series.files, node_port, procs.NODE_AE)
                ack = dt.datetime.now(dt.UTC)
                send_s = time.perf_counter() - started
                state = _wait_done(engine, series, proc, timeout_s)
                runs.append(_run_from(series, state, ack, send_s, timings_dir, stable_s))
                log.info("e2e %s: %.1f s (%s)", series.folder.name, runs[-1].latency_s,
                         ", ".join(f"{k} {v:.1f}" for k, v in runs[-1].parts.items()))
    finally:
        engine.dispose()
        for bulky in ("storage", "pacs"):  # received CT + results: GBs; logs and timings stay for inspection
            shutil.rmtree(folder / bulky, ignore_errors=True)
    return runs


def _seconds(a: dt.datetime | None, b: dt.datetime | None) -> float:
    if a is None or b is None:
        raise ValueError("a job timestamp is missing")
    return (b - a).total_seconds()


def _run_from(series: SeriesSet, state: _JobState, ack: dt.datetime, send_s: float, timings_dir: Path,
              stable_s: float) -> E2ERun:
    record_path = timings_dir / f"{series.series_instance_uid}.json"
    record = json.loads(record_path.read_text())
    sent = [s for _, s in state.exports if s is not None]
    notes = []
    end = max(sent) if sent else state.finished
    if not sent:
        notes.append(record.get("objects_missing") or "no result object was exported")
    pipeline = record["timings"]
    parts: dict[str, float] = {"detect_s": _seconds(ack, state.created) - stable_s,
                               "queue_s": _seconds(state.created, state.started)}
    parts.update({k: float(pipeline.get(k, 0.0)) for k in STAGES})
    parts.update({k: float(v) for k, v in sorted(record.get("object_parts", {}).items())})
    artefact = float(record.get("truth_fallback_s", 0.0))  # loading the phantom's true labels: not node work
    parts["store_commit_s"] = _seconds(state.started, state.finished) - float(record["pipeline_s"]) - artefact
    parts["export_s"] = _seconds(state.finished, end)
    latency = _seconds(ack, end) - stable_s - artefact
    if artefact:
        notes.append(f"{artefact:.1f} s of loading the phantom's true labels (benchmark fallback) subtracted")
    return E2ERun(series.slices, send_s, latency, parts, bool(record["truth_fallback"]), len(sent),
                  record.get("max_rss_mib"), tuple(notes))
