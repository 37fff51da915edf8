"""Ingest: images/s received over C-STORE from DCMTK storescu by the node's SCP (with its SQLite bookkeeping and
fsync per instance), by DCMTK storescp (no database, no fsync: the C++ ceiling) and by Orthanc 1.10 (Debian
package, default SQLite index), on the same files in the same run; one association, then N concurrent ones
(one study each). The receivers run as their own processes, fresh for every run; targets are interleaved in each
repeat so that a slow phase of the machine hits all of them alike.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import procs
from bench.data import SeriesSet
from bench.scp_probe import NO_FSYNC_ENV, PROBE_ENV, PROFILE_ENV
from service.config import NodeSettings
from service.receive.spool import SPOOL_MODES
from tests.support.net import free_port

log = logging.getLogger(__name__)

MIB = 1024 * 1024

TARGETS = ("bmd-node", "storescp", "orthanc")
NO_FSYNC = "bmd-node-no-fsync"
"""Diagnostic only: the node's SCP with os.fsync made a no-op (shows what durability costs; never a target)."""
DEFAULT_SPOOL_MODE = NodeSettings().spool_mode
OTHER_SPOOL_MODE = next(mode for mode in SPOOL_MODES if mode != DEFAULT_SPOOL_MODE)
OTHER_SPOOL = f"bmd-node-spool-{OTHER_SPOOL_MODE}"
"""A/B: the node's SCP with the ``[node] spool_mode`` that is not the default, in the same round (both durable)."""


@dataclass(frozen=True)
class ReceiveRun:
    target: str
    associations: int
    images: int
    seconds: float
    stored: int
    peak_rss_mib: float
    probe_ms_per_image: dict[str, float] | None = None
    """bmd-node only: mean ms per instance inside the C-STORE handler and its parts (bench.scp_probe)."""
    cpu_ms_per_image: float | None = None
    """CPU time (user + system) of the receiver's processes during the send, per image (all its processes)."""

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds


def _send(studies: Sequence[SeriesSet], port: int, called_ae: str) -> float:
    if len(studies) == 1:
        return procs.send_series(studies[0].files, port, called_ae)
    return procs.send_parallel([s.files for s in studies], port, called_ae)


def node_scp_config(folder: Path, port: int, receive_processes: int = 0, spool_mode: str | None = None) -> Path:
    return procs.write_toml(folder / "bmd-node.toml", {
        "node": {"ae_title": procs.NODE_AE, "host": "127.0.0.1", "port": port, "http_port": 0,
                 "storage_dir": str(folder / "storage"), "database_url": f"sqlite:///{folder / 'node.db'}",
                 "series_stable_seconds": 3600, "receive_processes": receive_processes,
                 "spool_mode": spool_mode or DEFAULT_SPOOL_MODE},
    }, [{"name": "sender", "ae_title": procs.SENDER_AE, "host": "127.0.0.1", "port": 104, "send_results": False}])


def run_node(studies: Sequence[SeriesSet], folder: Path, *, fsync: bool = True, receive_processes: int = 0,
             profile_out: Path | None = None, spool_mode: str | None = None) -> ReceiveRun:
    port = free_port()
    config = node_scp_config(folder, port, receive_processes, spool_mode)
    shutil.copyfile(_template_database(folder.parent), folder / "node.db")
    probe_out = folder / "probe.json"
    extra = {PROBE_ENV: str(probe_out), NO_FSYNC_ENV: "0" if fsync else "1"}
    env = procs.node_env(extra={**extra, **({PROFILE_ENV: str(profile_out)} if profile_out else {})})
    boot = [sys.executable, "-m", "bench.scp_probe"]
    with procs.node_process(config, ["scp"], folder / "scp.log", wait_port=port, command=boot, env=env) as proc, \
            procs.RssSampler(proc.pid) as sampler:
        cpu = procs.CpuMeter(proc.pid)
        seconds = _send(studies, port, procs.NODE_AE)
        cpu_ms = cpu.ms_per_image(sum(s.slices for s in studies))
    with sqlite3.connect(folder / "node.db") as conn:
        stored = int(conn.execute("SELECT count(*) FROM instances WHERE status = 'stored'").fetchone()[0])
    target = NO_FSYNC if not fsync else OTHER_SPOOL if spool_mode not in (None, DEFAULT_SPOOL_MODE) else "bmd-node"
    return ReceiveRun(target, len(studies), sum(s.slices for s in studies), seconds,
                      stored, sampler.peak_mib, _probe_ms_per_image(probe_out), cpu_ms)


def _probe_ms_per_image(probe_out: Path) -> dict[str, float] | None:
    """Mean ms per instance of each probed part, over the SCP's processes (one probe file each)."""
    files = [probe_out, *probe_out.parent.glob(probe_out.name + ".*")]
    seconds: dict[str, float] = {}
    calls = 0
    for path in (p for p in files if p.is_file()):
        raw = json.loads(path.read_text())
        calls += int(raw["calls"].get("handler", 0))
        for key, value in raw["seconds"].items():
            seconds[key] = seconds.get(key, 0.0) + float(value)
    if not seconds:
        return None
    return {k: v * 1000 / max(1, calls) for k, v in seconds.items()}


@dataclass(frozen=True)
class ScpMemory:
    """Resident memory of the node's SCP (all its receiver processes) after one study, then after N more at once."""

    after_one_mib: float
    after_many_mib: float
    many: int
    peak_mib: float
    receive_processes: int

    @property
    def growth_mib(self) -> float:
        return self.after_many_mib - self.after_one_mib


SETTLE_S = 1.0
"""Wait after a send before reading RSS (the recorder's last batch, association threads ending)."""


def scp_memory(one: SeriesSet, many: Sequence[SeriesSet], work: Path) -> ScpMemory:
    """The SCP's summed RSS after receiving ``one`` study, then after ``many`` studies over concurrent
    associations (issue 18: at most 50 MB more after 8 than after 1). Runs in ``work/scp-memory`` (removed
    afterwards)."""
    folder = work / "scp-memory"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    try:
        return _scp_memory(one, many, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _scp_memory(one: SeriesSet, many: Sequence[SeriesSet], folder: Path) -> ScpMemory:
    port = free_port()
    config = node_scp_config(folder, port)
    shutil.copyfile(_template_database(folder.parent), folder / "node.db")
    with procs.node_process(config, ["scp"], folder / "scp.log", wait_port=port, env=procs.node_env()) as proc, \
            procs.RssSampler(proc.pid) as sampler:
        processes = 1 + sum("spawn_main" in procs.cmdline(p) for p in procs.tree_pids(proc.pid)[1:])
        _send([one], port, procs.NODE_AE)
        time.sleep(SETTLE_S)
        after_one = procs.tree_rss_mib(proc.pid)
        _send(many, port, procs.NODE_AE)
        time.sleep(SETTLE_S)
        after_many = procs.tree_rss_mib(proc.pid)
    return ScpMemory(after_one, after_many, len(many), sampler.peak_mib, processes)


SCP_MEMORY_GROWTH_MAX_MB = 50.0
"""Issue 18: the SCP's RSS after 8 concurrent studies at most 50 MB (decimal) above that after 1."""


def memory_figures(runs: Sequence[ScpMemory], figure: Callable[..., dict[str, Any]]) -> list[dict[str, Any]]:
    """Figures of ``scp_memory`` runs (``figure`` = bench.run._figure)."""
    if not runs:
        return []
    n, processes = runs[0].many, runs[0].receive_processes
    note = f"all {processes} receiver process(es) summed"
    return [
        figure("memory.scp.after_1", "SCP resident memory after 1 study", "MiB", [r.after_one_mib for r in runs],
               note),
        figure(f"memory.scp.after_{n}", f"SCP resident memory after {n} more studies at once", "MiB",
               [r.after_many_mib for r in runs], note),
        figure("memory.scp.growth", f"SCP resident memory growth, {n} concurrent studies vs 1", "MB",
               [r.growth_mib * MIB / 1e6 for r in runs], f"target <= {SCP_MEMORY_GROWTH_MAX_MB:g} MB (issue 18)"),
        figure("memory.scp.peak", "SCP peak resident memory over both sends", "MiB", [r.peak_mib for r in runs],
               note),
    ]


BREAKDOWN_BEFORE_RUN = "make bench of 2026-11-21 (commit bbc3500), before issue 18"
BREAKDOWN_BEFORE_MS = {
    "node_ms_per_image": 9.73, "node_ms.handler": 5.95, "node_ms.spool_write": 2.77, "node_ms.db_record": 2.24,
    "node_ms.parse_header": 0.37, "node_ms.outside_handler": 3.72, "durable_write_ms": 0.92,
}
"""Medians of the per-image breakdown (1 association, ms) of that run's bench/results.json: the database commit
was on the association thread then (db_record inside the handler)."""


def _template_database(work: Path) -> Path:
    """An empty, migrated SQLite database, made once per work dir and copied for every run (saves the ~2 s of
    ``bmd-node db upgrade`` per run; the copy is what ``db upgrade`` would produce)."""
    template = work / "template-node.db"
    if not template.is_file():
        folder = work / "template"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        procs.run_node_cli(node_scp_config(folder, 0), "db", "upgrade")
        shutil.copyfile(folder / "node.db", template)
        shutil.rmtree(folder, ignore_errors=True)
    return template


def run_node_no_fsync(studies: Sequence[SeriesSet], folder: Path) -> ReceiveRun:
    return run_node(studies, folder, fsync=False)


def run_node_other_spool(studies: Sequence[SeriesSet], folder: Path) -> ReceiveRun:
    return run_node(studies, folder, spool_mode=OTHER_SPOOL_MODE)


def run_storescp(studies: Sequence[SeriesSet], folder: Path) -> ReceiveRun:
    port = free_port()
    out = folder / "received"
    with procs.storescp(out, port, ae_title="STORESCP", fork=len(studies) > 1) as proc, \
            procs.RssSampler(proc.pid) as sampler:
        cpu = procs.CpuMeter(proc.pid)
        seconds = _send(studies, port, "STORESCP")
        cpu_ms = cpu.ms_per_image(sum(s.slices for s in studies))
    stored = sum(1 for p in out.iterdir() if p.is_file())
    return ReceiveRun("storescp", len(studies), sum(s.slices for s in studies), seconds, stored, sampler.peak_mib,
                      cpu_ms_per_image=cpu_ms)


def run_orthanc(studies: Sequence[SeriesSet], folder: Path) -> ReceiveRun:
    with procs.orthanc(folder) as server, procs.RssSampler(procs.orthanc_pid(server)) as sampler:
        pid = procs.orthanc_pid(server)
        cpu = procs.CpuMeter(pid)
        seconds = _send(studies, server.dicom_port, server.ae_title)
        cpu_ms = cpu.ms_per_image(sum(s.slices for s in studies))
        stored = int(server.get("/statistics")["CountInstances"])
        peak = procs.peak_rss_mib(procs.orthanc_pid(server)) or sampler.peak_mib
    return ReceiveRun("orthanc", len(studies), sum(s.slices for s in studies), seconds, stored, peak,
                      cpu_ms_per_image=cpu_ms)


RUNNERS = {"bmd-node": run_node, "storescp": run_storescp, "orthanc": run_orthanc, NO_FSYNC: run_node_no_fsync,
           OTHER_SPOOL: run_node_other_spool}


def durable_write_ms(folder: Path, size_bytes: int, n: int = 40) -> float:
    """Mean ms to write one file the way the node's spool does: temp file, fsync, rename, directory fsync."""
    folder.mkdir(parents=True, exist_ok=True)
    payload = os.urandom(size_bytes)
    started = time.perf_counter()
    for i in range(n):
        tmp, final = folder / f"{i}.tmp", folder / f"{i}.dcm"
        with tmp.open("wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, final)
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    seconds = time.perf_counter() - started
    shutil.rmtree(folder, ignore_errors=True)
    return seconds / n * 1000


def warm_page_cache(studies: Sequence[SeriesSet]) -> None:
    for s in studies:
        for p in s.files:
            p.read_bytes()


def receive_round(studies: Sequence[SeriesSet], work: Path, targets: Sequence[str] = TARGETS) -> list[ReceiveRun]:
    """Every target once on ``studies`` (one association per study, all at once)."""
    runs = []
    for target in targets:
        folder = work / f"{target}-{len(studies)}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        try:
            run = RUNNERS[target](studies, folder)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        expected = sum(s.slices for s in studies)
        if run.stored != expected:
            raise RuntimeError(f"{target} stored {run.stored} of {expected} instances")
        log.info("ingest %s x%d: %.1f images/s (%.2f s), peak RSS %.0f MiB", target, len(studies),
                 run.images_per_s, run.seconds, run.peak_rss_mib)
        runs.append(run)
    return runs
