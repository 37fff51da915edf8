"""Start the node's SCP (``python -m bench.scp_probe --config CFG scp``) with clocks around the C-STORE handler and
its parts, for the ingest benchmark's "where the time goes". The node's code is unchanged: the probe wraps, in
the SCP's processes, StoreHandler.__call__ (everything the node does per instance once pynetdicom has the dataset),
Spool.write (direct mode: temp file, fsync, rename, directory fsync; pool mode: one fdatasync), Spool.settle (pool
mode: the batched renames and directory fsyncs, on the recorder thread), record_instances (the SQLite bookkeeping, in
batches on the recorder thread since issue 18), the header parse (handlers.parse_received_header) and the Part 10
stream's assembly (handlers.received_part10). The wrappers cost about a microsecond per call. At
exit the totals go to ``$BMD_BENCH_SCP_PROBE`` (JSON), those of each extra receiver process to
``$BMD_BENCH_SCP_PROBE.<pid>``. ``BMD_BENCH_NO_FSYNC=1`` makes os.fsync and os.fdatasync no-ops (diagnostic run
only). ``BMD_BENCH_SCP_PROFILE=FILE``: cProfile in every thread, merged statistics in FILE (pstats; FILE.<pid> for
the extra receiver processes).
"""

from __future__ import annotations

import atexit
import cProfile
import json
import os
import pstats
import sys
import threading
import time
from pathlib import Path
from typing import Any

from service.db import queries
from service.receive import handlers, spool

PROBE_ENV = "BMD_BENCH_SCP_PROBE"
NO_FSYNC_ENV = "BMD_BENCH_NO_FSYNC"
PROFILE_ENV = "BMD_BENCH_SCP_PROFILE"


class _Totals:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def add(self, key: str, seconds: float) -> None:
        with self.lock:
            self.seconds[key] = self.seconds.get(key, 0.0) + seconds
            self.calls[key] = self.calls.get(key, 0) + 1


def _wrap(owner: Any, name: str, key: str, totals: _Totals) -> None:
    original = getattr(owner, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            totals.add(key, time.perf_counter() - started)

    setattr(owner, name, timed)


def install(out: Path) -> None:
    totals = _Totals()
    _wrap(handlers.StoreHandler, "__call__", "handler", totals)
    _wrap(spool.Spool, "write", "spool_write", totals)
    _wrap(spool.Spool, "settle", "spool_settle", totals)
    _wrap(queries, "record_instances", "db_record", totals)
    _wrap(handlers, "parse_received_header", "parse_header", totals)
    _wrap(handlers, "received_part10", "part10", totals)

    def dump() -> None:
        out.write_text(json.dumps({"seconds": totals.seconds, "calls": totals.calls}))

    atexit.register(dump)


def install_profiler(out: Path) -> None:
    """cProfile in every thread of this process (pynetdicom's DUL and association threads, the handlers, the
    recorder); the merged statistics go to ``out`` (pstats format) at exit. Costs ~2x CPU: profile runs only."""
    profiles: list[cProfile.Profile] = []
    lock = threading.Lock()
    original_run = threading.Thread.run

    def profiled_run(self: threading.Thread) -> None:
        profile = cProfile.Profile()
        with lock:
            profiles.append(profile)
        profile.runcall(original_run, self)

    threading.Thread.run = profiled_run  # type: ignore[method-assign]

    def dump() -> None:
        with lock:
            done = [p for p in profiles if p.getstats()]
        if done:
            stats = pstats.Stats(done[0])
            for p in done[1:]:
                stats.add(p)
            stats.dump_stats(str(out))

    atexit.register(dump)


def _install_from_env(suffix: str = "") -> None:
    if os.environ.get(PROFILE_ENV):
        install_profiler(Path(os.environ[PROFILE_ENV] + suffix))
    if os.environ.get(NO_FSYNC_ENV) == "1":
        os.fsync = lambda fd: None
        os.fdatasync = lambda fd: None
    if os.environ.get(PROBE_ENV):
        install(Path(os.environ[PROBE_ENV] + suffix))


def main() -> int:
    _install_from_env()
    # after install(): service.receive.scp binds record_instances when imported, it must bind the wrapped one
    from service.cli.main import main as node_main  # noqa: PLC0415

    return node_main(sys.argv[1:])


if __name__ == "__mp_main__":
    # a receiver process spawned by the SCP (multiprocessing imports the parent's main module under this name
    # before it unpickles the process's target): the same clocks, totals in PROBE.<pid>
    _install_from_env(f".{os.getpid()}")

if __name__ == "__main__":
    sys.exit(main())
