"""Fault test: the node is killed with SIGKILL in the middle of a job.

A real node (``bmd-node serve`` in its own process group: SCP, scheduler, exporter, a spawned worker) receives
a CT series over C-STORE; its pipeline (tests.node_support.MeanHuPipeline, slowed down) is killed mid-job with
SIGKILL on the whole process group. After a restart the lease expires, the reaper re-queues the job, it runs
again and the results reach the PACS (a pynetdicom storage SCP in this test) exactly once each, with the SOP
Instance UIDs recorded in the database; there is exactly one export row per (object, peer).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import CTImageStorage
from sqlalchemy import select

from service.db.engine import make_engine, read_session
from service.db.migrate import upgrade
from service.db.tables import Export, Job, ResultObject
from service.queue.jobs import job_events
from tests.node_support import write_ct_series
from tests.support.net import free_port
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
PIPELINE = "tests.node_support:make_mean_hu_pipeline"


class Pacs:
    """A storage SCP that records every SOP Instance UID it is sent."""

    def __init__(self, port: int) -> None:
        self.received: list[str] = []
        self._lock = threading.Lock()
        ae = AE(ae_title="PACS")
        ae.supported_contexts = AllStoragePresentationContexts
        self.server = ae.start_server(("127.0.0.1", port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._on_store)])

    def _on_store(self, event: evt.Event) -> int:
        with self._lock:
            self.received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    def stop(self) -> None:
        self.server.shutdown()




@pytest.fixture
def node_env(tmp_path: Path) -> Iterator[dict[str, object]]:
    node_port, http_port, pacs_port = free_port(), free_port(), free_port()
    config = tmp_path / "node.toml"
    config.write_text(f"""
[node]
ae_title = "BMDNODE"
host = "127.0.0.1"
port = {node_port}
http_port = {http_port}
storage_dir = "{tmp_path / 'storage'}"
database_url = "sqlite:///{tmp_path / 'node.db'}"
series_stable_seconds = 1
[[peers]]
name = "pacs"
ae_title = "PACS"
host = "127.0.0.1"
port = {pacs_port}
send_results = true
[[peers]]
name = "modality"
ae_title = "SENDER"
host = "127.0.0.1"
port = 104
send_results = false
[worker]
processes = 1
lease_seconds = 6
heartbeat_seconds = 1
poll_seconds = 0.2
max_attempts = 5
[series]
min_slices = 10
scheduler_poll_seconds = 0.2
[exporter]
poll_seconds = 0.2
""")
    url = f"sqlite:///{tmp_path / 'node.db'}"
    upgrade(url)
    pacs = Pacs(pacs_port)
    env = {**os.environ, "BMD_NODE_CONFIG": str(config), "BMD_TEST_PIPELINE_DELAY": "8",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield {"env": env, "url": url, "node_port": node_port, "pacs": pacs, "procs": procs, "tmp": tmp_path}
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        pacs.stop()


def _start_node(ctx: dict[str, object], log_name: str) -> subprocess.Popen[bytes]:
    log = open(Path(ctx["tmp"]) / log_name, "wb")  # type: ignore[arg-type]  # noqa: SIM115 (closed with the process)
    proc = subprocess.Popen([sys.executable, "-m", "service", "serve", "--pipeline", PIPELINE], cwd=REPO_ROOT,
                            env=ctx["env"], stdout=log, stderr=subprocess.STDOUT,  # type: ignore[arg-type]
                            start_new_session=True)
    ctx["procs"].append(proc)  # type: ignore[attr-defined]
    return proc


def _send_series(paths: list[Path], port: int) -> None:
    ae = AE(ae_title="SENDER")
    ae.add_requested_context(CTImageStorage)
    deadline = time.monotonic() + 60
    while True:
        assoc = ae.associate("127.0.0.1", port, ae_title="BMDNODE")
        if assoc.is_established:
            break
        if time.monotonic() > deadline:
            raise AssertionError("the node's SCP did not accept an association within 60 s")
        time.sleep(0.5)
    try:
        for path in paths:
            status = assoc.send_c_store(pydicom.dcmread(path))
            assert status and int(status.Status) == 0
    finally:
        assoc.release()


def test_sigkill_mid_job_then_restart_delivers_each_result_once(node_env: dict[str, object]) -> None:
    ctx = node_env
    url = str(ctx["url"])
    engine = make_engine(url)
    paths = write_ct_series(Path(ctx["tmp"]) / "ct", n_slices=12, size=16)  # type: ignore[arg-type]
    first = _start_node(ctx, "node-1.log")
    _send_series(paths, int(ctx["node_port"]))  # type: ignore[call-overload]

    def running_job() -> int | None:
        with read_session(engine) as s:
            return s.scalar(select(Job.id).where(Job.status == "running"))

    job_id = wait_until(running_job, "a running job", 90, poll_s=0.2)
    time.sleep(1.5)  # well inside the 8 s pipeline
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    with read_session(engine) as s:
        job = s.get(Job, job_id)
        assert job is not None and job.status == "running"  # nobody left to say otherwise
        assert s.scalars(select(ResultObject)).all() == []

    _start_node(ctx, "node-2.log")

    def delivered() -> bool:
        with read_session(engine) as s:
            statuses = s.scalars(select(Export.status)).all()
            return bool(statuses) and set(statuses) == {"sent"}

    wait_until(delivered, "the job to succeed after the restart and its exports to be sent", 120, poll_s=0.2)
    with read_session(engine) as s:
        job = s.get(Job, job_id)
        # 2 runs: the killed one and the one after the restart (a third only if a heartbeat of the second was
        # starved past the lease on a loaded machine; the results are still recorded once)
        assert job is not None and job.status == "succeeded" and job.attempts >= 2
        objects = s.scalars(select(ResultObject).where(ResultObject.job_id == job_id)).all()
        exports = s.scalars(select(Export)).all()
    transitions = [(f, t, actor) for _, f, t, actor, _ in job_events(engine, job_id)]
    # issue 19 pt 8: the killed worker's lease is reclaimed at once (its holder is gone), not left to expire
    assert ("running", "queued", "reclaim") in transitions, transitions
    assert len(objects) == 2
    assert Counter((e.result_object_id, e.peer_name) for e in exports) == {(o.id, "pacs"): 1 for o in objects}
    pacs: Pacs = ctx["pacs"]  # type: ignore[assignment]
    time.sleep(1.0)  # nothing more should arrive
    assert Counter(pacs.received) == {o.sop_instance_uid: 1 for o in objects}
    for obj in objects:  # the file that went out is the one recorded
        assert str(pydicom.dcmread(obj.path, stop_before_pixels=True).SOPInstanceUID) == obj.sop_instance_uid
    engine.dispose()
