"""``make demo``: a node with the embedded defaults, and this script playing the PACS.

1. start a node (SCP, scheduler, worker process, exporter, HTTP) with the embedded defaults, in a temp dir,
   on free loopback ports, with a short series_stable_seconds;
2. start a second DICOM AE, the "PACS" (storage SCP), listed as the node's peer (it sends and receives);
3. generate a synthetic abdominal CT (service.offline.phantom) and C-STORE it to the node as the PACS would;
4. wait for the job and for the result objects to arrive back at the PACS;
5. print the per-vertebra table (with the phantom's true BMD) and where each result object landed.

``python -m service.offline.demo.node_demo [--workdir DIR] [--keep] [--timeout-s N]``
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import sys
import tempfile
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import CTImageStorage
from pynetdicom import AE, AllStoragePresentationContexts, evt
from sqlalchemy import select

from service.config import DEFAULTS_TOML, build_config
from service.db.engine import make_engine, read_session
from service.db.migrate import upgrade
from service.db.tables import Export, Job, ResultObject
from service.domain.status import ExportStatus, JobStatus
from service.export.requestor import REQUESTOR_HANDLERS
from service.logging import setup_logging
from service.offline.phantom.api import PhantomSpec, generate, write_phantom
from service.pipeline.report import vertebra_table
from service.serve import serve

PACS_AE_TITLE = "DEMOPACS"
DEMO_STABLE_SECONDS = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def demo_config(workdir: Path, pacs_port: int) -> Any:
    """The embedded defaults, moved to ``workdir`` and loopback ports, with the demo PACS as the only peer."""
    raw = tomllib.loads(DEFAULTS_TOML)
    raw["node"].update(host="127.0.0.1", port=_free_port(), http_port=_free_port(),
                       storage_dir=str(workdir / "storage"), database_url=f"sqlite:///{workdir / 'bmd-node.db'}",
                       series_stable_seconds=DEMO_STABLE_SECONDS)
    raw["peers"] = [{"name": "pacs", "ae_title": PACS_AE_TITLE, "host": "127.0.0.1", "port": pacs_port,
                     "send_results": True}]
    raw["worker"] = {"processes": 1, "poll_seconds": 0.5, "heartbeat_seconds": 10, "lease_seconds": 600}
    raw["exporter"] = {"poll_seconds": 0.5}
    raw["series"] = {"scheduler_poll_seconds": 0.5}
    raw["logging"] = {"level": "WARNING"}
    return build_config(raw, source="demo: embedded defaults + temp dir")


class DemoPacs:
    """The PACS: a storage SCP that keeps what the node sends back."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder = folder
        self.received: dict[str, Path] = {}
        folder.mkdir(parents=True, exist_ok=True)
        ae = AE(ae_title=PACS_AE_TITLE)
        ae.supported_contexts = AllStoragePresentationContexts
        server = ae.start_server(("127.0.0.1", port), block=False,
                                 evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        if server is None:
            raise RuntimeError("the demo PACS could not start its server")
        self.server = server

    def _on_store(self, event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        path = self.folder / f"{ds.Modality}-{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        self.received[str(ds.SOPInstanceUID)] = path
        return 0x0000

    def send(self, paths: list[Path], node_ae: str, node_port: int) -> float:
        """C-STORE the files to the node (as the PACS's auto-routing would); returns images/s."""
        ae = AE(ae_title=PACS_AE_TITLE)
        ae.add_requested_context(CTImageStorage)
        assoc = None
        for _ in range(60):
            assoc = ae.associate("127.0.0.1", node_port, ae_title=node_ae, evt_handlers=REQUESTOR_HANDLERS)
            if assoc.is_established:
                break
            time.sleep(0.5)
        if assoc is None or not assoc.is_established:
            raise RuntimeError("the node did not accept the association")
        started = time.monotonic()
        try:
            for path in paths:
                status = assoc.send_c_store(pydicom.dcmread(path))
                if not status or int(status.Status) != 0:
                    raise RuntimeError(f"the node refused {path.name}: {status}")
        finally:
            assoc.release()
        return len(paths) / max(1e-6, time.monotonic() - started)

    def stop(self) -> None:
        self.server.shutdown()


def _wait_for_results(engine: Any, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        with read_session(engine) as s:
            job = s.scalars(select(Job).order_by(Job.id.desc())).first()
            state = f"job {job.id}: {job.status}" if job else "waiting for the series to be complete"
            if job is not None and job.status in (JobStatus.FAILED, JobStatus.DEAD):
                raise RuntimeError(f"job {job.id} {job.status}: {job.last_error}")
            if job is not None and job.status == JobStatus.SUCCEEDED:
                statuses = s.scalars(select(Export.status)).all()
                state += f", exports {sorted(statuses)}"
                if statuses and all(x == ExportStatus.SENT for x in statuses):
                    return job.id
                if any(x == ExportStatus.DEAD for x in statuses):
                    raise RuntimeError("an export ended in the dead letter")
        if state != last:
            print(f"  ... {state}", flush=True)
            last = state
        time.sleep(1.0)
    raise TimeoutError(f"no results within {timeout_s:.0f} s ({last})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.offline.demo.node_demo")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a new temp dir, removed at the end")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    parser.add_argument("--timeout-s", type=float, default=1800.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--pipeline", default=None, help=argparse.SUPPRESS)  # tests: a faster pipeline
    parser.add_argument("--matrix", type=int, default=512, choices=[256, 512],
                        help="image matrix of the phantom CT (256: 1.5 mm pixels, faster)")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bmd-node-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    pacs_port = _free_port()
    config = demo_config(workdir, pacs_port)
    setup_logging(config.logging)
    print(f"bmd-node demo in {workdir}")
    print(f"  node  {config.node.ae_title}@127.0.0.1:{config.node.port} (HTTP :{config.node.http_port}), "
          f"database {config.node.database_url}")
    print(f"  PACS  {PACS_AE_TITLE}@127.0.0.1:{pacs_port}")
    upgrade(config.node.database_url)
    engine = make_engine(config.node.database_url)
    pacs = DemoPacs(workdir / "pacs", pacs_port)
    stop = threading.Event()
    node = threading.Thread(target=serve, args=(config,), kwargs={"pipeline_spec": args.pipeline,
                                                                  "stop_event": stop}, name="node", daemon=True)
    code = 1
    try:
        node.start()
        print("generating a synthetic abdominal CT (phantom) ...", flush=True)
        spec = PhantomSpec(seed=args.seed, region="abdomen", slice_thickness_mm=2.0, rows=args.matrix,
                           columns=args.matrix, pixel_spacing_mm=0.7 * 512 / args.matrix)
        phantom = generate(spec)
        files = [p for p in write_phantom(phantom, workdir / "phantom") if p.suffix == ".dcm"]
        print(f"sending {len(files)} CT images to the node ...", flush=True)
        rate = pacs.send(sorted(files), config.node.ae_title, config.node.port)
        print(f"  sent at {rate:.0f} images/s; waiting for the screening results ...", flush=True)
        job_id = _wait_for_results(engine, args.timeout_s)
        time.sleep(0.5)
        code = _report(engine, job_id, phantom.truth, pacs)
    except Exception as exc:
        print(f"demo failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        if "bundle" in str(exc).lower() or "model" in str(exc).lower():
            print("hint: the segmentation model bundle is expected in models/vertebra_seg "
                  "(make train-segmentation)", file=sys.stderr)
    finally:
        stop.set()
        node.join(timeout=60)
        pacs.stop()
        engine.dispose()
        if args.workdir is None and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        elif args.workdir is None:
            print(f"kept {workdir}")
    return code


def _report(engine: Any, job_id: int, truth: dict[str, Any], pacs: DemoPacs) -> int:
    with read_session(engine) as s:
        job = s.get(Job, job_id)
        if job is None:
            raise RuntimeError(f"job {job_id} vanished")
        document = json.loads(job.result_json or "{}")
        objects = s.scalars(select(ResultObject).where(ResultObject.job_id == job_id)).all()
        exports = {e.result_object_id: e for e in s.scalars(select(Export)).all()}
    print(f"\njob {job_id} succeeded: per-vertebra results\n")
    print(vertebra_table(document))
    true_bmd = truth.get("patient", {}).get("bmd_by_level_mg_cm3", {})
    if true_bmd:
        shown = [f"{v['level']} {true_bmd[v['level']]:.0f}" for v in document.get("vertebrae", [])
                 if v["level"] in true_bmd]
        print(f"phantom truth (mg/cm3): {', '.join(shown)}; "
              f"L1-L2 {truth['patient'].get('l1_l2_bmd_mg_cm3')} ({truth['patient'].get('category')})")
    print("\nresult objects:")
    for obj in objects:
        export = exports.get(obj.id)
        at_pacs = pacs.received.get(obj.sop_instance_uid)
        print(f"  {obj.kind:<9} SOP Instance {obj.sop_instance_uid}")
        print(f"            node:  {obj.path}")
        print(f"            PACS:  {at_pacs or 'NOT RECEIVED'}  (export {export.status if export else '-'}, "
              f"status 0x{(export.status_code or 0) if export else 0:04X})")
    return 0 if objects and all(o.sop_instance_uid in pacs.received for o in objects) else 1


if __name__ == "__main__":
    sys.exit(main())
