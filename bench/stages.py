"""Per-stage times and peak memory of one study, in a fresh child process that is what a worker is: it loads the
segmentation model once, then screens the study ``--repeats`` times (bench.pipeline.TimedScreening), writes the
result objects as the worker does (atomic, fsync) and, with ``--pacs-port``, sends them to a PACS (pynetdicom SCU
of the node, as the exporter does). Peak RSS (ru_maxrss) of the whole child = a worker's peak for that study.

    python -m bench.stages --config CFG.toml --series-dir DIR --repeats 3 --out stages.json [--pacs-port P]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import REPO_ROOT, procs
from bench.data import SeriesSet, _read_ready
from bench.pipeline import TimedScreening, max_rss_mib
from service.config import load_config
from service.export.cstore_scu import send_files
from service.pipeline import storage
from service.pipeline.types import JobInput
from tests.support.net import free_port

log = logging.getLogger(__name__)


def stage_config(folder: Path, bundle_dir: Path, pacs_port: int | None) -> Path:
    peers = [{"name": "pacs", "ae_title": procs.PACS_AE, "host": "127.0.0.1", "port": pacs_port or 104,
              "send_results": pacs_port is not None}]
    return procs.write_toml(folder / "stages.toml", {
        "node": {"ae_title": procs.NODE_AE, "host": "127.0.0.1", "port": 0, "http_port": 0,
                 "storage_dir": str(folder / "storage"), "database_url": f"sqlite:///{folder / 'unused.db'}"},
        "segmentation": {"bundle_dir": str(bundle_dir), "device": "auto"},
        "logging": {"level": "WARNING"},
    }, peers)


def run_stages(series: SeriesSet, folder: Path, *, bundle_dir: Path, repeats: int, truth_map: Path,
               threads: int | None, pacs: bool, timeout_s: float = 1800) -> dict[str, Any]:
    """Run the child for one study; returns its JSON (records per repeat, model load, peak RSS)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    out = folder / "stages.json"
    env = procs.node_env(threads, {"BMD_BENCH_TRUTH_MAP": str(truth_map)})

    def child(pacs_port: int | None) -> dict[str, Any]:
        config = stage_config(folder, bundle_dir, pacs_port)
        cmd = [sys.executable, "-m", "bench.stages", "--config", str(config), "--series-dir", str(series.folder),
               "--repeats", str(repeats), "--out", str(out)]
        result = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout_s,
                                check=False)
        if result.returncode != 0:
            raise RuntimeError(f"stage child failed ({result.returncode}): {result.stderr[-3000:]}")
        return dict(json.loads(out.read_text()))

    if not pacs:
        return child(None)
    port = free_port()
    with procs.storescp(folder / "pacs", port, ae_title=procs.PACS_AE):
        return child(port)


def _child(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    series = _read_ready(args.series_dir)
    if series is None:
        raise SystemExit(f"no series set in {args.series_dir}")
    started = time.perf_counter()
    pipeline = TimedScreening(config)
    startup = {"model_load_s": pipeline.model_load_s, "startup_s": time.perf_counter() - started,
               "rss_after_model_load_mib": max_rss_mib()}
    records = []
    for repeat in range(args.repeats):
        job = JobInput(job_id=repeat + 1, study_instance_uid=series.study_instance_uid,
                       series_instance_uid=series.series_instance_uid, paths=series.files)
        t0 = time.perf_counter()
        output, record = pipeline.run_timed(job)
        folder = storage.result_dir(config.node.storage_dir, job.job_id)
        storage.clear_dir(folder)
        t = time.perf_counter()
        paths = [storage.write_object(folder, obj)[0] for obj in output.objects]
        storage.write_result_json(folder, output.result.to_json_dict())
        record["timings"]["write_s"] = time.perf_counter() - t
        if config.result_destinations and paths:
            t = time.perf_counter()
            statuses = send_files(paths, config.result_destinations[0], config)
            record["timings"]["export_s"] = time.perf_counter() - t
            record["export_statuses"] = statuses
        record["total_s"] = time.perf_counter() - t0
        records.append(record)
    result = {"series": str(series.folder), "slices": series.slices, "startup": startup, "records": records,
              "max_rss_mib": max_rss_mib()}
    Path(args.out).write_text(json.dumps(result, indent=1))
    shutil.rmtree(Path(config.node.storage_dir), ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--series-dir", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return _child(args)


if __name__ == "__main__":
    raise SystemExit(main())
