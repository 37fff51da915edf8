"""``bmd-node serve``: the whole node as one process tree.

Main process threads: the SCP (network side), the scheduler, the exporter and the HTTP server (dashboard, /health,
/metrics; service/web).
Child processes (spawned, not forked: torch and the SCP's threads do not survive fork): N workers, each loading
the segmentation model once. A worker that dies (e.g. killed by the OOM killer) is restarted; its job's lease
is reclaimed (its holder is gone) and the job re-queued. SIGTERM / SIGINT stop everything: workers finish the job
in hand.

Start-up preflight (issue 19 pt 6): the node does not listen on its DICOM port before its pipeline can run.
1. In this process, without torch: every file of the configured model bundles present, readable, not empty, its
   JSON valid, the weights a whole zip archive (service/segmentation/preflight.py); a missing or truncated file
   stops ``serve`` within a second or two.
2. Each worker, as it starts, builds its pipeline and warms it (for the screening recipe: the weights opened by
   torch, the model loaded, one forward pass on a small block) and reports ready or the error to this process
   through a pipe, then runs its loop with that same pipeline (loaded once). No model is loaded in this process
   (torch would stay in the SCP's process for its whole life: ~400 MB) and none in a throw-away process (one more
   ~6 s load).
Only when every worker is ready do the SCP, scheduler, exporter and HTTP server start; a failure stops ``serve``
with EXIT_PREFLIGHT_FAILED and a message naming the file. With ``--workers 0`` this node runs no pipeline and
checks none. A worker restarted after a crash is not checked through the pipe; its own warm-up stops it on a
broken model.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection as mp_connection
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from service import __version__
from service.config import Config
from service.db.engine import make_engine
from service.db.migrate import ensure_schema
from service.export.exporter import run_exporter
from service.logging import setup_logging
from service.pipeline.types import ScreeningPipeline
from service.queue.scheduler import run_scheduler
from service.queue.worker import load_pipeline_factory, run_worker_process
from service.receive.scp import run_scp
from service.segmentation.preflight import ModelPreflightError, check_model_files
from service.web.server import run_http

log = logging.getLogger(__name__)

WORKER_RESTART_DELAY_SECONDS = 5.0
SHUTDOWN_GRACE_SECONDS = 30.0
PREFLIGHT_TIMEOUT_SECONDS = 600.0
"""How long the workers may take to load and warm the pipeline before ``serve`` gives up (a cold disk cache and
a CPU-only torch import on a busy server take tens of seconds; a healthy start takes about 6 s)."""
EXIT_PREFLIGHT_FAILED = 3
"""Exit status of ``serve`` (and of a worker process) whose pipeline cannot run: the model is missing or broken."""


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


def _worker_child(config: Config, stop_event: Any, pipeline_spec: str | None, ready: Any = None) -> None:
    """A worker process of ``serve``: Ctrl-C reaches the whole process group, but only the parent decides when
    workers stop (through ``stop_event``), so that a job in hand is finished rather than interrupted. ``ready``
    (the sending end of a pipe): the pipeline check's outcome goes there first, None when it can run, else the
    error; a worker whose pipeline cannot run exits with EXIT_PREFLIGHT_FAILED instead of failing every job."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=stop_event.set, daemon=True).start())
    checked: ScreeningPipeline | None = None
    if ready is not None:
        setup_logging(config.logging)
        checked, problem = check_pipeline(config, pipeline_spec)
        ready.send(problem)
        ready.close()
        if problem is not None:
            sys.exit(EXIT_PREFLIGHT_FAILED)
    run_worker_process(config, stop_event, pipeline_spec, pipeline=checked)  # the checked pipeline: loaded once


def check_pipeline(config: Config, pipeline_spec: str | None) -> tuple[ScreeningPipeline | None, str | None]:
    """Build the configured pipeline and warm it as a worker does (the screening recipe: model loaded and one
    forward pass): (the pipeline, None) when it can run, else (None, what is wrong; a ModelPreflightError names the
    file)."""
    try:
        pipeline = load_pipeline_factory(pipeline_spec)(config)
        warm_up = getattr(pipeline, "warm_up", None)
        if callable(warm_up):
            warm_up()
    except ModelPreflightError as exc:
        return None, str(exc)
    except Exception as exc:  # whatever stops the pipeline from loading stops the node, with its type and message
        return None, f"the pipeline cannot be loaded: {type(exc).__name__}: {exc}"
    return pipeline, None


def preflight_model_files(config: Config, pipeline_spec: str | None, n_workers: int) -> str | None:
    """The cheap first check, in this process: the configured model's files (default pipeline, with workers)."""
    if n_workers == 0 or pipeline_spec is not None:
        return None
    try:
        check_model_files(config.segmentation)
    except ModelPreflightError as exc:
        return str(exc)
    return None


def await_workers_ready(pending: dict[str, tuple[Any, Any]], stop: threading.Event,
                        timeout_s: float = PREFLIGHT_TIMEOUT_SECONDS) -> str | None:
    """Wait for each worker's pipeline check (name -> (process, receiving end)); the first problem, or None when
    all are ready (or ``stop`` was set)."""
    waiting = {conn: (name, process) for name, (process, conn) in pending.items()}
    deadline = time.monotonic() + timeout_s
    while waiting and not stop.is_set():
        for readable in mp_connection.wait(list(waiting), timeout=0.5):
            conn: Any = readable
            name, process = waiting.pop(conn)
            try:
                problem: str | None = conn.recv()
            except EOFError:  # it died before reporting (killed, crashed in an import)
                process.join(timeout=5)
                problem = f"the worker process exited (code {process.exitcode}) before its pipeline was ready"
            conn.close()
            if problem is not None:
                return f"{name}: {problem}"
        if waiting and time.monotonic() > deadline:
            return f"{', '.join(n for n, _ in waiting.values())}: pipeline not ready within {timeout_s:.0f} s"
    return None


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
    """Run the node until SIGINT / SIGTERM or ``stop_event``; 1 when a part of it failed, EXIT_PREFLIGHT_FAILED
    when its pipeline cannot run (nothing listened). Raises SchemaError (before anything starts) when the database
    is not at the schema revision this code needs."""
    prepare_schema(config.node.database_url)
    n_workers = config.worker.processes if workers is None else workers
    problem = preflight_model_files(config, pipeline_spec, n_workers)
    if problem is not None:
        log.critical("start-up check failed: %s; bmd-node not started", problem)
        return EXIT_PREFLIGHT_FAILED
    stop = stop_event or threading.Event()
    context = multiprocessing.get_context("spawn")
    worker_stop = context.Event()
    if threading.current_thread() is threading.main_thread():
        install_stop_signals(stop, worker_stop)
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

    def start_worker(index: int, *, check: bool = False) -> tuple[Any, Any]:
        receiving, sending = context.Pipe(duplex=False) if check else (None, None)
        process = context.Process(target=_worker_child, args=(config, worker_stop, pipeline_spec, sending),
                                  name=f"worker-{index}", daemon=False)
        process.start()
        if sending is not None:
            sending.close()  # the child holds its own copy: its exit reads as EOF here
        processes[index] = process
        return process, receiving

    try:
        checking = {f"worker-{i}": start_worker(i, check=True) for i in range(n_workers)}
        problem = await_workers_ready(checking, stop)
        if problem is not None:
            log.critical("start-up check failed: %s; bmd-node not started", problem)
            return EXIT_PREFLIGHT_FAILED
        if stop.is_set():  # SIGTERM while the workers were loading: nothing else was started
            return 0
        log.info("bmd-node %s serving: AE %s on %s:%s, HTTP %s:%s, %d worker(s) ready, %d result destination(s)",
                 __version__, config.node.ae_title, config.node.host, config.node.port, config.node.http_host,
                 config.node.http_port, n_workers, len(config.result_destinations))
        threads += [_thread(name, target, config, engine, stop, failed)
                    for name, target in (("scp", run_scp), ("scheduler", run_scheduler), ("exporter", run_exporter),
                                         ("http", run_http_with_components))]
        while not stop.wait(1.0):
            for index, process in list(processes.items()):
                if not process.is_alive():
                    log.error("worker-%d exited with code %s; restarting in %.0f s", index, process.exitcode,
                              WORKER_RESTART_DELAY_SECONDS)
                    if stop.wait(WORKER_RESTART_DELAY_SECONDS):
                        break
                    start_worker(index)
    finally:
        _shut_down(stop, worker_stop, processes, threads)
        engine.dispose()
        log.info("stopped%s", f" after a failure of: {', '.join(failed)}" if failed else "")
    return 1 if failed else 0


def _shut_down(stop: threading.Event, worker_stop: Any, processes: dict[int, Any],
               threads: list[threading.Thread]) -> None:
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
