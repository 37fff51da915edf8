"""``bmd-node serve``: the whole node as one process tree.

Main process threads: the SCP (network side), the scheduler, the exporter and the HTTP server (dashboard, /health,
/metrics; service/web).
Child processes (spawned, not forked: torch and the SCP's threads do not survive fork): N workers, each loading
the segmentation model once. A worker that dies (e.g. killed by the OOM killer) is restarted; its job's lease
expires and the reaper re-queues it. SIGTERM / SIGINT stop everything: workers finish the job in hand.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from service import __version__
from service.config import Config
from service.db.engine import make_engine
from service.db.migrate import ensure_schema
from service.export.exporter import run_exporter
from service.queue.scheduler import run_scheduler
from service.queue.worker import run_worker_process
from service.receive.scp import run_scp
from service.web.server import run_http

log = logging.getLogger(__name__)

WORKER_RESTART_DELAY_SECONDS = 5.0
SHUTDOWN_GRACE_SECONDS = 30.0


def install_stop_signals(*events: Any) -> None:
    """SIGINT / SIGTERM set ``events``. The handler hands the set() to a new thread: calling Event.set() in the
    handler itself can deadlock when the signal interrupts the main thread inside Event.wait() on the same event
    (both take the event's non-reentrant lock)."""

    def handler(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        for event in events:
            threading.Thread(target=event.set, name="stop-signal", daemon=True).start()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)


def _worker_child(config: Config, stop_event: Any, pipeline_spec: str | None) -> None:
    """A worker process of ``serve``: Ctrl-C reaches the whole process group, but only the parent decides when
    workers stop (through ``stop_event``), so that a job in hand is finished rather than interrupted."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=stop_event.set, daemon=True).start())
    run_worker_process(config, stop_event, pipeline_spec)


def _thread(name: str, target: Callable[..., None], config: Config, engine: Any, stop: threading.Event,
            failed: list[str]) -> threading.Thread:
    """A part of the node in a thread. A part that ends on its own (e.g. the SCP cannot bind its port) stops the
    whole node with an error, so that a supervisor (systemd) restarts it instead of a half-working node running."""

    def runner() -> None:
        try:
            target(config, engine, stop)
        except Exception:
            log.exception("%s stopped with an error", name)
        if not stop.is_set():
            log.error("%s ended unexpectedly: stopping the node", name)
            failed.append(name)
            stop.set()

    thread = threading.Thread(target=runner, name=name, daemon=True)
    thread.start()
    return thread


def prepare_schema(database_url: str) -> None:
    """``serve``'s startup schema step: a new, empty SQLite database gets the schema; a database at another
    revision is not upgraded silently (SchemaError says to run ``bmd-node db upgrade``)."""
    if ensure_schema(database_url, create_empty_sqlite=True):
        log.info("created the database schema in the new, empty SQLite database")


def serve(config: Config, *, workers: int | None = None, pipeline_spec: str | None = None,
          stop_event: threading.Event | None = None) -> int:
    """Run the node until SIGINT / SIGTERM or ``stop_event``; 1 when a part of it failed. Raises SchemaError
    (before anything starts) when the database is not at the schema revision this code needs."""
    prepare_schema(config.node.database_url)
    n_workers = config.worker.processes if workers is None else workers
    stop = stop_event or threading.Event()
    context = multiprocessing.get_context("spawn")
    worker_stop = context.Event()
    if threading.current_thread() is threading.main_thread():
        install_stop_signals(stop, worker_stop)

    log.info("bmd-node %s serving: AE %s on %s:%s, HTTP %s:%s, %d worker(s), %d result destination(s)",
             __version__, config.node.ae_title, config.node.host, config.node.port, config.node.http_host,
             config.node.http_port, n_workers, len(config.result_destinations))
    engine = make_engine(config.node.database_url)
    failed: list[str] = []
    threads: list[threading.Thread] = []
    processes: dict[int, Any] = {}

    def components() -> dict[str, bool]:
        alive = {t.name: t.is_alive() for t in threads}
        alive.update({f"worker-{i}": p.is_alive() for i, p in processes.items()})
        return alive

    def run_http_with_components(c: Config, e: Any, s: threading.Event) -> None:
        run_http(c, e, s, components=components)

    threads += [_thread(name, target, config, engine, stop, failed)
                for name, target in (("scp", run_scp), ("scheduler", run_scheduler), ("exporter", run_exporter),
                                     ("http", run_http_with_components))]

    def start_worker(index: int) -> Any:
        process = context.Process(target=_worker_child, args=(config, worker_stop, pipeline_spec),
                                  name=f"worker-{index}", daemon=False)
        process.start()
        return process

    processes.update({i: start_worker(i) for i in range(n_workers)})
    try:
        while not stop.wait(1.0):
            for index, process in list(processes.items()):
                if not process.is_alive():
                    log.error("worker-%d exited with code %s; restarting in %.0f s", index, process.exitcode,
                              WORKER_RESTART_DELAY_SECONDS)
                    if stop.wait(WORKER_RESTART_DELAY_SECONDS):
                        break
                    processes[index] = start_worker(index)
    finally:
        log.info("stopping")
        stop.set()
        worker_stop.set()
        deadline = time.monotonic() + SHUTDOWN_GRACE_SECONDS
        for process in processes.values():
            process.join(timeout=max(0.1, deadline - time.monotonic()))
            if process.is_alive():
                log.warning("%s did not stop in time; terminating (its job will be re-queued)", process.name)
                process.terminate()
                process.join(timeout=5)
        for thread in threads:
            thread.join(timeout=10)
        engine.dispose()
        log.info("stopped%s", f" after a failure of: {', '.join(failed)}" if failed else "")
    return 1 if failed else 0
