"""The node's roles: ``serve`` (everything in one process tree), or separately ``scp``, ``scheduler``, ``worker``,
``exporter`` (scale-out: several workers/exporters may share one database)."""

from __future__ import annotations

import argparse
import logging
import threading
from collections.abc import Callable

from service.cli.common import CommandParser, Handler, config_of, engine_of, require_schema
from service.config import Config
from service.db.migrate import SchemaError
from service.export.exporter import run_exporter
from service.queue.scheduler import run_scheduler
from service.queue.worker import run_worker_process
from service.receive.scp import run_scp
from service.serve import install_stop_signals, serve

log = logging.getLogger(__name__)


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        return serve(config_of(args), workers=args.workers, pipeline_spec=args.pipeline)
    except SchemaError as exc:  # raised by serve's startup schema step, before anything runs
        raise SystemExit(f"bmd-node: {exc}") from exc


def _run_threaded(name: str, target: Callable[..., None], config: Config) -> int:
    require_schema(config)
    engine = engine_of(config)
    stop = threading.Event()
    install_stop_signals(stop)
    log.info("%s starting", name)
    try:
        target(config, engine, stop)
    finally:
        engine.dispose()
    return 0


def cmd_scp(args: argparse.Namespace) -> int:
    return _run_threaded("scp", run_scp, config_of(args))


def cmd_scheduler(args: argparse.Namespace) -> int:
    return _run_threaded("scheduler", run_scheduler, config_of(args))


def cmd_exporter(args: argparse.Namespace) -> int:
    return _run_threaded("exporter", run_exporter, config_of(args))


def cmd_worker(args: argparse.Namespace) -> int:
    config = config_of(args)
    require_schema(config)
    stop = threading.Event()
    install_stop_signals(stop)
    run_worker_process(config, stop, pipeline_spec=args.pipeline, worker_id=args.worker_id)
    return 0


ROLE_HANDLERS: frozenset[Handler] = frozenset({cmd_serve, cmd_scp, cmd_scheduler, cmd_worker, cmd_exporter})
"""The commands that run (a part of) the node; ``main`` logs their effective configuration."""


def register(sub: argparse._SubParsersAction[CommandParser]) -> None:
    p = sub.add_parser("serve", help="run the whole node: SCP, scheduler, workers, exporter, HTTP health")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: [worker] processes)")
    p.add_argument("--pipeline", default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_serve)
    sub.add_parser("scp", help="only the C-STORE/C-ECHO SCP").set_defaults(func=cmd_scp)
    sub.add_parser("scheduler", help="only the scheduler (stable series -> checks -> jobs)").set_defaults(
        func=cmd_scheduler)
    p = sub.add_parser("worker", help="one worker process (run several for more throughput)")
    p.add_argument("--pipeline", default=None, metavar="MODULE:FACTORY",
                   help="pipeline factory taking the Config (default: the screening recipe)")
    p.add_argument("--worker-id", default=None)
    p.set_defaults(func=cmd_worker)
    sub.add_parser("exporter", help="only the exporter (outbox -> C-STORE to peers)").set_defaults(func=cmd_exporter)
