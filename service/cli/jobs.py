"""``bmd-node jobs list|show|retry``, ``series list``, ``exports list|retry``: what the node did and does."""

from __future__ import annotations

import argparse
import json
import sys

from sqlalchemy import select

from service.cli.common import CommandParser, config_of, engine_of, print_rows, timestamp
from service.db.engine import read_session
from service.db.queries import list_series
from service.db.tables import Export, Job, ResultObject
from service.domain.status import ExportStatus, JobStatus
from service.export.outbox import requeue_dead_exports
from service.pipeline.report import vertebra_table
from service.queue.jobs import JobStateError, job_events, list_jobs, retry

ERROR_STATUSES = (JobStatus.FAILED, JobStatus.DEAD)
"""Jobs listed with their last error instead of their series."""


def cmd_jobs_list(args: argparse.Namespace) -> int:
    rows = list_jobs(engine_of(config_of(args)), status=args.status, limit=args.limit)
    print_rows(("job", "status", "attempts", "instances", "category", "BMD", "created", "series / error"),
               [(j.job_id, j.status, f"{j.attempts}/{j.max_attempts}", j.instance_count, j.summary_category,
                 None if j.summary_bmd_mg_cm3 is None else f"{j.summary_bmd_mg_cm3:.1f}", timestamp(j.created_at),
                 (j.last_error or "")[:80] if j.status in ERROR_STATUSES else j.series_instance_uid)
                for j in rows])
    return 0


def cmd_jobs_show(args: argparse.Namespace) -> int:
    engine = engine_of(config_of(args))
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
            print(f"  {timestamp(at)}  {from_status or '-':>9} -> {to_status:<9} {actor or ''}  {detail or ''}")
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
    try:
        retry(engine_of(config_of(args)), args.job_id)
    except (KeyError, JobStateError) as exc:
        print(str(exc).strip("'\""), file=sys.stderr)
        return 1
    print(f"job {args.job_id} queued again")
    return 0


def cmd_series_list(args: argparse.Namespace) -> int:
    rows = list_series(engine_of(config_of(args)), limit=args.limit)
    print_rows(("series", "modality", "instances", "status", "last received", "reason"),
               [(s.series_instance_uid, s.modality, s.instance_count, s.status, timestamp(s.last_received_at),
                 "; ".join(filter(None, (s.reason, s.indeterminate_report)))) for s in rows])
    return 0


def cmd_exports_list(args: argparse.Namespace) -> int:
    with read_session(engine_of(config_of(args))) as session:
        query = select(Export, ResultObject).join(ResultObject).order_by(Export.id.desc()).limit(args.limit)
        if args.status:
            query = query.where(Export.status == args.status)
        rows = session.execute(query).tuples().all()
        print_rows(("export", "peer", "status", "attempts", "kind", "SOP instance", "next attempt", "error"),
                   [(e.id, e.peer_name, e.status, e.attempts, o.kind, o.sop_instance_uid,
                     timestamp(e.next_attempt_at) if e.status == ExportStatus.PENDING else "",
                     (e.last_error or "")[:60])
                    for e, o in rows])
    return 0


def cmd_exports_retry(args: argparse.Namespace) -> int:
    count = requeue_dead_exports(engine_of(config_of(args)), export_ids=args.export_ids or None)
    print(f"{count} dead export(s) queued again")
    return 0


def register(sub: argparse._SubParsersAction[CommandParser]) -> None:
    jobs = sub.add_parser("jobs", help="screening jobs").add_subparsers(dest="jobs_command", metavar="ACTION",
                                                                        required=True)
    p = jobs.add_parser("list")
    p.add_argument("--status", choices=[status.value for status in JobStatus])
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
    p = series.add_parser("list", help="series with status and the reason of each decision")
    p.add_argument("--limit", type=int, default=100)
    p.set_defaults(func=cmd_series_list)

    exports = sub.add_parser("exports", help="result objects to send").add_subparsers(
        dest="exports_command", metavar="ACTION", required=True)
    p = exports.add_parser("list")
    p.add_argument("--status", choices=[status.value for status in ExportStatus])
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_exports_list)
    p = exports.add_parser("retry", help="send dead-letter exports again")
    p.add_argument("export_ids", type=int, nargs="*")
    p.set_defaults(func=cmd_exports_retry)
