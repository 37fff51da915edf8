"""What each receive-path change of issue 18 saves, per call, in one process (``python -m bench.receive_costs``).

Times, for the benchmark's ingest image (``write_ingest_series``, one 512 x 512 slice) and the node's AE:
* the File Meta Information: pynetdicom's ``encode_file_meta(create_file_meta(...))`` (what ``encoded_dataset``
  did per image) against ``part10.file_meta_bytes``;
* the header: ``parse_header`` (the whole-file reader) against ``parse_received_header`` (the hot path);
* the per-association copy of the supported presentation contexts: ``deepcopy`` of a plain list (pynetdicom's
  ``RequestHandler._create_association``) against ``deepcopy`` of ``SupportedContexts``.
Quiet-machine figures of a single process: they show the size of each saving, not the receive rate (``make bench``).
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

from pynetdicom.dsutils import create_file_meta, encode_file_meta

from bench.data import write_ingest_series
from service.receive.header import parse_header, parse_received_header
from service.receive.part10 import file_meta_bytes, received_part10
from service.receive.scp import build_ae
from service.receive.server import SupportedContexts
from tests.support.store_event import store_event


def _ms_per_call(call: Callable[[], object], repeats: int) -> float:
    call()
    started = time.perf_counter()
    for _ in range(repeats):
        call()
    return (time.perf_counter() - started) * 1000 / repeats


def measure(repeats: int) -> list[tuple[str, float, float]]:
    with tempfile.TemporaryDirectory() as folder:
        (path,) = write_ingest_series(Path(folder), 1)
        encoded = path.read_bytes()
    event = store_event(encoded)
    part10, offset = received_part10(event)
    sop_class, sop_instance = str(event.request.AffectedSOPClassUID), str(event.request.AffectedSOPInstanceUID)
    syntax = str(event.context.transfer_syntax)
    contexts = build_ae(SimpleNamespace(node=SimpleNamespace(ae_title="BMDNODE"))).supported_contexts
    cheap = SupportedContexts(contexts)
    return [
        ("File Meta Information",
         _ms_per_call(lambda: encode_file_meta(create_file_meta(sop_class_uid=sop_class, sop_instance_uid=sop_instance,
                                                                transfer_syntax=syntax)), repeats),
         _ms_per_call(lambda: file_meta_bytes(sop_class, sop_instance, syntax), repeats)),
        ("header parse",
         _ms_per_call(lambda: parse_header(part10), repeats),
         _ms_per_call(lambda: parse_received_header(part10, offset, syntax), repeats)),
        (f"copy of the {len(contexts)} supported presentation contexts (per association)",
         _ms_per_call(lambda: copy.deepcopy(contexts), max(1, repeats // 50)),
         _ms_per_call(lambda: copy.deepcopy(cheap), max(1, repeats // 50))),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.receive_costs", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=500)
    args = parser.parse_args(argv)
    print("| per call | before (ms) | after (ms) |\n|---|---|---|")
    for label, before, after in measure(args.repeats):
        print(f"| {label} | {before:.3f} | {after:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
