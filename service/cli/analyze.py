"""``bmd-node analyze INPUT --out DIR``: the screening pipeline on one series, without network or database."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from service.cli.common import CommandParser, config_of
from service.pipeline.report import vertebra_table
from service.pipeline.storage import atomic_write_bytes, write_result_json
from service.pipeline.types import JobInput, PipelineRejectedError
from service.queue.worker import load_pipeline_factory
from service.series.volume_loader import dicom_files, read_headers

log = logging.getLogger(__name__)

EXIT_FAILED = 1
EXIT_NO_INPUT = 2
EXIT_REJECTED = 3


def cmd_analyze(args: argparse.Namespace) -> int:
    config = config_of(args)
    source = Path(args.input)
    paths = dicom_files(source) if source.is_dir() else [source]
    if not paths:
        print(f"no DICOM files under {source}", file=sys.stderr)
        return EXIT_NO_INPUT
    headers = read_headers(paths[:1])
    job = JobInput(job_id=0, study_instance_uid=str(headers[0].StudyInstanceUID),
                   series_instance_uid=str(headers[0].SeriesInstanceUID), paths=tuple(paths))
    pipeline = load_pipeline_factory(args.pipeline)(config)
    try:
        output = pipeline.run(job)
    except PipelineRejectedError as exc:
        print(f"rejected: {exc.reason}", file=sys.stderr)
        return EXIT_REJECTED
    except Exception as exc:
        log.debug("analyze failed", exc_info=True)
        print(f"analyze failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    document = output.result.to_json_dict()
    write_result_json(out, document)
    for obj in output.objects:
        atomic_write_bytes(out / f"{obj.kind}.dcm", obj.data)
    print(vertebra_table(document))
    print(f"\nwrote {out / 'result.json'} and {', '.join(f'{o.kind}.dcm' for o in output.objects) or 'no objects'}")
    return 0


def register(sub: argparse._SubParsersAction[CommandParser]) -> None:
    p = sub.add_parser("analyze", help="run the screening pipeline on a folder with one series (no network/DB)")
    p.add_argument("input")
    p.add_argument("--out", required=True)
    p.add_argument("--pipeline", default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_analyze)
