"""Receive-rate benchmark of the node's SCP: a CT series sent by DCMTK storescu, images per second.

    .venv/bin/python -m bench.ingest                    # 300 slices 512x512, one association, 3 runs
    .venv/bin/python -m bench.ingest --slices 100 --runs 1 --json out.json

What is measured: the wall time of ``storescu`` sending every file of the series over one association to a running
node SCP (pynetdicom, ``[node] max_pdu_bytes``) that spools each instance atomically (temp file, fsync, rename) and
records it in a real SQLite database, i.e. the full receive path of ``bmd-node scp``. Every run uses a fresh
database and spool so that no instance is a duplicate. The files are generated once with pydicom (uncompressed
Explicit VR Little Endian, 16-bit, ~0.5 MB each). TCP_NODELAY=1 is set for storescu (DCMTK otherwise stalls).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from bench.data import write_ingest_series
from bench.procs import require_tool
from service.config import build_config
from service.db.engine import make_engine, read_session
from service.db.migrate import upgrade
from service.db.tables import Instance
from service.receive.scp import start_scp
from tests.support.net import free_port

logger = logging.getLogger("bench.ingest")

SENDER_AE = "BENCHSCU"
NODE_AE = "BMDNODE"


@dataclass(frozen=True)
class IngestRun:
    slices: int
    seconds: float
    images_per_s: float
    mb_per_s: float
    stored: int


def run_once(files: list[Path], work_dir: Path) -> IngestRun:
    storescu = require_tool("storescu")
    if work_dir.exists():
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True)
    port = free_port()
    config = build_config(
        {
            "node": {
                "ae_title": NODE_AE,
                "host": "127.0.0.1",
                "port": port,
                "storage_dir": str(work_dir / "storage"),
                "database_url": f"sqlite:///{work_dir / 'node.db'}",
            },
            "peers": [{"name": "bench", "ae_title": SENDER_AE, "host": "127.0.0.1", "port": 104}],
        },
        source="bench",
    )
    upgrade(config.node.database_url)
    engine = make_engine(config.node.database_url)
    server = start_scp(config, engine)
    try:
        cmd = [storescu, "-aet", SENDER_AE, "-aec", NODE_AE, "127.0.0.1", str(port), *map(str, files)]
        env = {**os.environ, "TCP_NODELAY": "1"}
        start = time.perf_counter()
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
        seconds = time.perf_counter() - start
        if result.returncode != 0:
            raise RuntimeError(f"storescu failed ({result.returncode}): {result.stderr[-2000:]}")
        with read_session(engine) as session:
            stored = int(session.scalar(select(func.count()).select_from(Instance).where(Instance.status == "stored"))
                         or 0)
    finally:
        server.shutdown()
        engine.dispose()
    total_mb = sum(p.stat().st_size for p in files) / 1e6
    return IngestRun(len(files), seconds, len(files) / seconds, total_mb / seconds, stored)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512, help="rows = columns")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a temporary directory, removed after")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    tmp = Path(tempfile.mkdtemp(prefix="bmd-ingest-")) if args.work_dir is None else args.work_dir
    try:
        files = write_ingest_series(tmp / "series", args.slices, args.size)
        runs = [run_once(files, tmp / f"node{i}") for i in range(args.runs)]
    finally:
        if args.work_dir is None:
            shutil.rmtree(tmp, ignore_errors=True)
    rates = [r.images_per_s for r in runs]
    summary: dict[str, Any] = {
        "slices": args.slices,
        "size": args.size,
        "runs": [asdict(r) for r in runs],
        "images_per_s_median": statistics.median(rates),
        "images_per_s_min": min(rates),
        "images_per_s_max": max(rates),
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count()},
    }
    for i, r in enumerate(runs):
        print(f"run {i + 1}: {r.slices} images in {r.seconds:.2f} s = {r.images_per_s:.1f} images/s "
              f"({r.mb_per_s:.1f} MB/s), stored {r.stored}")
    print(f"median receive rate: {summary['images_per_s_median']:.1f} images/s "
          f"({args.slices} slices {args.size}x{args.size}, storescu -> bmd-node SCP, SQLite, fsync per image)")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    bad = [r for r in runs if r.stored != r.slices]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
