"""``bmd-node`` command line.

Node roles: ``serve`` (everything in one process tree), or separately ``scp``, ``scheduler``, ``worker``,
``exporter`` (scale-out: several workers/exporters may share one database). Operations: ``db upgrade``,
``jobs list|show|retry``, ``series list``, ``exports list|retry``, ``echo PEER``, ``send DIR --to PEER``,
``analyze INPUT --out DIR``, ``config show``. Other packages add commands through ``service/<pkg>/commands.py``
(see docs/dev/HELPERS_COMMON.md) under the root and the ``train`` / ``evaluate`` / ``calibrate`` / ``cohort``
parents.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from service import __version__
from service.config import Config, ConfigError, load_config

log = logging.getLogger(__name__)

PLUGIN_MODULES = (
    "service.offline.phantom.commands",
    "service.offline.evaluation.commands",
    "service.cli.calibrate",
    "service.offline.cohort.commands",
)
PARENTS = ("train", "evaluate", "calibrate", "cohort")

Handler = Callable[[argparse.Namespace], int]


# --- helpers ---------------------------------------------------------------------------------------------


def _config(args: argparse.Namespace) -> Config:
    config: Config = args._config_cache if getattr(args, "_config_cache", None) else load_config(args.config)
    args._config_cache = config
    return config


def _engine(config: Config) -> Any:
    from service.db.engine import make_engine

    return make_engine(config.node.database_url)


def _require_schema(config: Config) -> None:
    from service.db.migrate import current_revision, heads

    current = current_revision(config.node.database_url)
    if current not in heads():
        raise SystemExit(f"database schema is at {current or 'nothing'}, expected {heads()[0]}: "
                         "run `bmd-node db upgrade` first")


def _print_rows(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    text = [[str(h) for h in header]] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in text) for i in range(len(header))]
    for row in text:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _ts(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else ""


# --- node roles ------------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from service.serve import serve

    config = _config(args)
    _require_schema(config)
    return serve(config, workers=args.workers, pipeline_spec=args.pipeline)


def _run_threaded(name: str, target: Callable[..., None], config: Config) -> int:
    import threading

    from service.serve import install_stop_signals

    _require_schema(config)
    engine = _engine(config)
    stop = threading.Event()
    install_stop_signals(stop)
    log.info("%s starting", name)
    try:
        target(config, engine, stop)
    finally:
        engine.dispose()
    return 0


def cmd_scp(args: argparse.Namespace) -> int:
    from service.receive.scp import run_scp

    return _run_threaded("scp", run_scp, _config(args))


def cmd_scheduler(args: argparse.Namespace) -> int:
    from service.queue.scheduler import run_scheduler

    return _run_threaded("scheduler", run_scheduler, _config(args))


def cmd_exporter(args: argparse.Namespace) -> int:
    from service.export.exporter import run_exporter

    return _run_threaded("exporter", run_exporter, _config(args))


def cmd_worker(args: argparse.Namespace) -> int:
    import threading

    from service.queue.worker import run_worker_process
    from service.serve import install_stop_signals

    config = _config(args)
    _require_schema(config)
    stop = threading.Event()
    install_stop_signals(stop)
    run_worker_process(config, stop, pipeline_spec=args.pipeline, worker_id=args.worker_id)
    return 0


# --- database --------------------------------------------------------------------------------------------


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from service.config import redact_url
    from service.db.migrate import current_revision, upgrade

    config = _config(args)
    upgrade(config.node.database_url, args.revision)
    print(f"database {redact_url(config.node.database_url)} at revision "
          f"{current_revision(config.node.database_url)}")
    return 0


def cmd_db_downgrade(args: argparse.Namespace) -> int:
    from service.db.migrate import current_revision, downgrade

    config = _config(args)
    downgrade(config.node.database_url, args.revision)
    print(f"database at revision {current_revision(config.node.database_url) or 'base'}")
    return 0


def cmd_db_current(args: argparse.Namespace) -> int:
    from service.db.migrate import current_revision, heads

    config = _config(args)
    print(f"current: {current_revision(config.node.database_url) or 'none'}  head: {', '.join(heads())}")
    return 0


# --- jobs, series, exports -------------------------------------------------------------------------------


def cmd_jobs_list(args: argparse.Namespace) -> int:
    from service.queue.jobs import list_jobs

    rows = list_jobs(_engine(_config(args)), status=args.status, limit=args.limit)
    _print_rows(("job", "status", "attempts", "instances", "category", "BMD", "created", "series / error"),
                [(j.job_id, j.status, f"{j.attempts}/{j.max_attempts}", j.instance_count, j.summary_category,
                  None if j.summary_bmd_mg_cm3 is None else f"{j.summary_bmd_mg_cm3:.1f}", _ts(j.created_at),
                  (j.last_error or "")[:80] if j.status in ("failed", "dead") else j.series_instance_uid)
                 for j in rows])
    return 0


def cmd_jobs_show(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from service.db.engine import read_session
    from service.db.tables import Export, Job, ResultObject
    from service.pipeline.report import vertebra_table
    from service.queue.jobs import job_events

    engine = _engine(_config(args))
    with read_session(engine) as session:
        job = session.get(Job, args.job_id)
        if job is None:
            print(f"job {args.job_id} does not exist", file=sys.stderr)
            return 1
        print(f"job {job.id}: {job.status} (attempt {job.attempts}/{job.max_attempts})")
        print(f"  study  {job.study_instance_uid}\n  series {job.series_instance_uid} ({job.instance_count} instances)")
        if job.supersedes_job_id:
            print(f"  replaces the results of job {job.supersedes_job_id}")
        if job.last_error:
            print(f"  last error: {job.last_error}")
        print("events:")
        for at, from_status, to_status, actor, detail in job_events(engine, job.id):
            print(f"  {_ts(at)}  {from_status or '-':>9} -> {to_status:<9} {actor or ''}  {detail or ''}")
        if job.result_json:
            print("\n" + vertebra_table(json.loads(job.result_json)))
        objects = session.scalars(select(ResultObject).where(ResultObject.job_id == job.id)).all()
        if objects:
            print("\nresult objects:")
        for obj in objects:
            sends = session.scalars(select(Export).where(Export.result_object_id == obj.id)).all()
            state = ", ".join(f"{e.peer_name}: {e.status} ({e.attempts} attempts)" for e in sends) or "no exports"
            superseded = f" [replaced by job {obj.superseded_by_job_id}]" if obj.superseded_by_job_id else ""
            print(f"  {obj.kind:<9} {obj.sop_instance_uid}  {obj.path}  -> {state}{superseded}")
    return 0


def cmd_jobs_retry(args: argparse.Namespace) -> int:
    from service.queue.jobs import JobStateError, retry

    try:
        retry(_engine(_config(args)), args.job_id)
    except (KeyError, JobStateError) as exc:
        print(str(exc).strip("'\""), file=sys.stderr)
        return 1
    print(f"job {args.job_id} queued again")
    return 0


def cmd_series_list(args: argparse.Namespace) -> int:
    from service.db.queries import list_series

    rows = list_series(_engine(_config(args)), limit=args.limit)
    _print_rows(("series", "modality", "instances", "status", "last received", "reason"),
                [(s.series_instance_uid, s.modality, s.instance_count, s.status, _ts(s.last_received_at),
                  s.reason or "") for s in rows])
    return 0


def cmd_exports_list(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from service.db.engine import read_session
    from service.db.tables import Export, ResultObject

    with read_session(_engine(_config(args))) as session:
        query = select(Export, ResultObject).join(ResultObject).order_by(Export.id.desc()).limit(args.limit)
        if args.status:
            query = query.where(Export.status == args.status)
        rows = session.execute(query).tuples().all()
        _print_rows(("export", "peer", "status", "attempts", "kind", "SOP instance", "next attempt", "error"),
                    [(e.id, e.peer_name, e.status, e.attempts, o.kind, o.sop_instance_uid,
                      _ts(e.next_attempt_at) if e.status == "pending" else "", (e.last_error or "")[:60])
                     for e, o in rows])
    return 0


def cmd_exports_retry(args: argparse.Namespace) -> int:
    from service.export.outbox import requeue_dead_exports

    count = requeue_dead_exports(_engine(_config(args)), export_ids=args.export_ids or None)
    print(f"{count} dead export(s) queued again")
    return 0


# --- network tools ---------------------------------------------------------------------------------------


def cmd_echo(args: argparse.Namespace) -> int:
    from service.export.cstore_scu import echo

    config = _config(args)
    try:
        peer = config.peer(args.peer)
    except KeyError as exc:
        print(str(exc).strip("'\""), file=sys.stderr)
        return 2
    ok = echo(peer, config)
    print(f"echo {peer.name} ({peer.ae_title}@{peer.host}:{peer.port}): {'success' if ok else 'FAILED'}")
    return 0 if ok else 1


def cmd_send(args: argparse.Namespace) -> int:
    from service.export.cstore_scu import send_files
    from service.series.volume_loader import dicom_files

    config = _config(args)
    try:
        peer = config.peer(args.to)
    except KeyError as exc:
        print(str(exc).strip("'\""), file=sys.stderr)
        return 2
    source = Path(args.path)
    paths = dicom_files(source) if source.is_dir() else [source]
    if not paths:
        print(f"no DICOM files under {source}", file=sys.stderr)
        return 2
    statuses = send_files(paths, peer, config)
    failed = [s for s in statuses if s not in (0x0000,) and not (0xB000 <= s <= 0xBFFF)]
    print(f"sent {len(paths)} file(s) to {peer.name}: {len(paths) - len(failed)} accepted, {len(failed)} failed")
    return 0 if not failed else 1


# --- analyze ---------------------------------------------------------------------------------------------


def cmd_analyze(args: argparse.Namespace) -> int:
    from service.pipeline.report import vertebra_table
    from service.pipeline.storage import atomic_write_bytes, write_result_json
    from service.pipeline.types import JobInput, PipelineRejectedError
    from service.queue.worker import load_pipeline_factory
    from service.series.volume_loader import dicom_files, read_headers

    config = _config(args)
    source = Path(args.input)
    paths = dicom_files(source) if source.is_dir() else [source]
    if not paths:
        print(f"no DICOM files under {source}", file=sys.stderr)
        return 2
    headers = read_headers(paths[:1])
    job = JobInput(job_id=0, study_instance_uid=str(headers[0].StudyInstanceUID),
                   series_instance_uid=str(headers[0].SeriesInstanceUID), paths=tuple(paths))
    pipeline = load_pipeline_factory(args.pipeline)(config)
    try:
        output = pipeline.run(job)
    except PipelineRejectedError as exc:
        print(f"rejected: {exc.reason}", file=sys.stderr)
        return 3
    except Exception as exc:
        log.debug("analyze failed", exc_info=True)
        print(f"analyze failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    document = output.result.to_json_dict()
    write_result_json(out, document)
    for obj in output.objects:
        atomic_write_bytes(out / f"{obj.kind}.dcm", obj.data)
    print(vertebra_table(document))
    print(f"\nwrote {out / 'result.json'} and {', '.join(f'{o.kind}.dcm' for o in output.objects) or 'no objects'}")
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    config = _config(args)
    print(json.dumps({"source": config.source, **config.redacted()}, indent=2))
    return 0


# --- parser ----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bmd-node", description="DICOM node for opportunistic osteoporosis "
                                     "screening on routine CT")
    parser.add_argument("--config", metavar="PATH", default=None,
                        help="TOML configuration (default: env BMD_NODE_CONFIG, else embedded defaults)")
    parser.add_argument("--log-level", default=None, choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--version", action="version", version=f"bmd-node {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

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

    db = sub.add_parser("db", help="database schema").add_subparsers(dest="db_command", metavar="ACTION",
                                                                      required=True)
    p = db.add_parser("upgrade", help="apply the migrations")
    p.add_argument("--revision", default="head")
    p.set_defaults(func=cmd_db_upgrade)
    p = db.add_parser("downgrade", help="revert migrations down to REVISION ('base' = empty)")
    p.add_argument("revision")
    p.set_defaults(func=cmd_db_downgrade)
    db.add_parser("current", help="show the schema revision").set_defaults(func=cmd_db_current)

    jobs = sub.add_parser("jobs", help="screening jobs").add_subparsers(dest="jobs_command", metavar="ACTION",
                                                                        required=True)
    p = jobs.add_parser("list")
    p.add_argument("--status", choices=["queued", "running", "succeeded", "failed", "dead"])
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_jobs_list)
    p = jobs.add_parser("show")
    p.add_argument("job_id", type=int)
    p.set_defaults(func=cmd_jobs_show)
    p = jobs.add_parser("retry", help="queue a failed or dead job again")
    p.add_argument("job_id", type=int)
    p.set_defaults(func=cmd_jobs_retry)

    series = sub.add_parser("series", help="received series").add_subparsers(dest="series_command",
                                                                              metavar="ACTION", required=True)
    p = series.add_parser("list", help="series with status and rejection reasons")
    p.add_argument("--limit", type=int, default=100)
    p.set_defaults(func=cmd_series_list)

    exports = sub.add_parser("exports", help="result objects to send").add_subparsers(
        dest="exports_command", metavar="ACTION", required=True)
    p = exports.add_parser("list")
    p.add_argument("--status", choices=["pending", "sending", "sent", "dead", "cancelled"])
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_exports_list)
    p = exports.add_parser("retry", help="send dead-letter exports again")
    p.add_argument("export_ids", type=int, nargs="*")
    p.set_defaults(func=cmd_exports_retry)

    p = sub.add_parser("echo", help="C-ECHO a configured peer")
    p.add_argument("peer")
    p.set_defaults(func=cmd_echo)
    p = sub.add_parser("send", help="C-STORE a DICOM file or folder to a configured peer")
    p.add_argument("path")
    p.add_argument("--to", required=True, metavar="PEER")
    p.set_defaults(func=cmd_send)
    p = sub.add_parser("analyze", help="run the screening pipeline on a folder with one series (no network/DB)")
    p.add_argument("input")
    p.add_argument("--out", required=True)
    p.add_argument("--pipeline", default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_analyze)
    cfg = sub.add_parser("config", help="configuration").add_subparsers(dest="config_command", metavar="ACTION",
                                                                        required=True)
    cfg.add_parser("show", help="the effective configuration, secrets redacted").set_defaults(func=cmd_config_show)

    parents = {name: sub.add_parser(name, help=f"{name} commands").add_subparsers(
        dest=f"{name}_command", metavar="WHAT", required=True) for name in PARENTS}
    _register_plugins(sub, parents)
    return parser


def _register_plugins(root: Any, parents: dict[str, Any]) -> None:
    for module_name in PLUGIN_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue  # that package has no commands (yet)
            print(f"bmd-node: commands of {module_name} unavailable: {exc}", file=sys.stderr)
            continue
        except Exception as exc:  # a broken plugin must not take the node's own commands down
            print(f"bmd-node: commands of {module_name} unavailable: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        if hasattr(module, "register"):
            module.register(root)
        for parent in PARENTS:
            function = getattr(module, f"register_{parent}", None)
            if function is not None:
                function(parents[parent])


def main(argv: Sequence[str] | None = None) -> int:
    from service.logging import setup_logging

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"bmd-node: configuration error: {exc}", file=sys.stderr)
        return 2
    args._config_cache = config
    settings = config.logging
    if args.log_level:
        import dataclasses

        settings = dataclasses.replace(settings, level=args.log_level)
    setup_logging(settings)
    if args.func in (cmd_serve, cmd_scp, cmd_scheduler, cmd_worker, cmd_exporter):
        log.info("configuration from %s: %s", config.source, json.dumps(config.redacted()))
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
