"""SIGKILL of the whole node in the middle of a job; results in the PACS within 60 s of the restart (issue 19,
done-when "SIGKILL mid-job").

A real node (``bmd-node serve``: SCP receiver processes, scheduler, exporter, a spawned worker, all in the node's
own process group) receives a CT series from DCMTK ``storescu``; its pipeline (tests.node_support.MeanHuPipeline,
slowed to 8 s) is running when every process of the node is killed with SIGKILL. The node is restarted on the same
database and storage, with the default 300 s job lease: the job must not wait for the lease to expire (the restarted
node reclaims the lease of its dead previous run at once). Within 60 s of the restart the results are in a real
Orthanc: each recorded SOP Instance UID stored there, and for each kind of result object one UID only (at-least-once
delivery with stable UIDs: a resend would be the same instance, never a second one).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from service.db.engine import make_engine, read_session
from service.db.migrate import upgrade
from service.db.tables import Job, ResultObject
from service.queue.jobs import job_events
from tests.integration.dicom_net_support import storescu, write_series
from tests.integration.orthanc import OrthancServer
from tests.support.net import free_port, wait_for_port
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
PIPELINE = "tests.node_support:make_mean_hu_pipeline"
PIPELINE_DELAY_S = 8
RESULTS_AFTER_RESTART_S = 60.0
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture
def site(tmp_path: Path) -> Iterator[dict[str, Any]]:
    node_port, http_port = free_port(), free_port()
    orthanc = OrthancServer(tmp_path / "orthanc", node_ae_title="BMDNODE", node_port=node_port, lua_script=None)
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
name = "orthanc"
ae_title = "{orthanc.ae_title}"
host = "127.0.0.1"
port = {orthanc.dicom_port}
send_results = true
[[peers]]
name = "modality"
ae_title = "MODALITY"
host = "127.0.0.1"
port = 104
send_results = false
[worker]
processes = 1
poll_seconds = 0.2
[series]
min_slices = 10
scheduler_poll_seconds = 0.2
[exporter]
poll_seconds = 0.2
backoff_initial_seconds = 1.0
""")
    url = f"sqlite:///{tmp_path / 'node.db'}"
    upgrade(url)
    env = {**os.environ, "BMD_NODE_CONFIG": str(config), "BMD_TEST_PIPELINE_DELAY": str(PIPELINE_DELAY_S),
           "OMP_NUM_THREADS": "1", "TCP_NODELAY": "1", "PYTHONPATH": str(REPO_ROOT)}
    nodes: list[subprocess.Popen[bytes]] = []
    with orthanc:
        try:
            yield {"tmp": tmp_path, "url": url, "env": env, "port": node_port, "orthanc": orthanc, "nodes": nodes}
        finally:
            for node in nodes:
                if node.poll() is None:
                    os.killpg(node.pid, signal.SIGKILL)
                    node.wait(timeout=10)


def _start_node(ctx: dict[str, Any], log_name: str) -> subprocess.Popen[bytes]:
    log = (ctx["tmp"] / log_name).open("wb")
    node = subprocess.Popen([sys.executable, "-m", "service", "serve", "--pipeline", PIPELINE], cwd=REPO_ROOT,
                            env=ctx["env"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    ctx["nodes"].append(node)
    return node


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def _results_in_orthanc(orthanc: OrthancServer, study: str) -> dict[str, set[str]]:
    """SOP Class UID -> SOP Instance UIDs of the non-CT instances of the study in Orthanc."""
    found: dict[str, set[str]] = defaultdict(set)
    for item in orthanc.instances_in_study(study):
        if item["SOPClassUID"] != CT_IMAGE_STORAGE:
            found[str(item["SOPClassUID"])].add(str(item["SOPInstanceUID"]))
    return found


def test_sigkill_mid_job_results_in_orthanc_within_60_s_of_restart(site: dict[str, Any]) -> None:
    engine = make_engine(site["url"])
    study = generate_uid()
    ct = write_series(site["tmp"] / "ct", 12, study_instance_uid=study)
    first = _start_node(site, "node-1.log")
    wait_for_port(site["port"], timeout_s=60)
    sent = storescu(ct, port=site["port"], calling_ae="MODALITY")
    assert sent.returncode == 0, sent.stdout + sent.stderr

    def running_job() -> int | None:
        with read_session(engine) as session:
            return session.scalar(select(Job.id).where(Job.status == "running"))

    job_id = wait_until(running_job, "a running job", 60, poll_s=0.1)
    time.sleep(1.5)  # well inside the 8 s pipeline
    os.killpg(first.pid, signal.SIGKILL)  # every process of the node: parent, receivers, worker
    first.wait(timeout=10)
    wait_until(lambda: _group_gone(first.pid), "every process of the killed node to be gone", 10)
    with read_session(engine) as session:
        job = session.get(Job, job_id)
        assert job is not None and job.status == "running"  # nobody was left to say otherwise
        assert session.scalars(select(ResultObject)).all() == []
    assert _results_in_orthanc(site["orthanc"], study) == {}

    restarted_at = time.monotonic()
    second = _start_node(site, "node-2.log")

    def delivered() -> dict[str, set[str]] | None:
        assert second.poll() is None, (site["tmp"] / "node-2.log").read_text(errors="replace")[-3000:]
        found = _results_in_orthanc(site["orthanc"], study)
        return found if len(found) >= 2 else None

    wait_until(delivered, "both result objects in Orthanc", RESULTS_AFTER_RESTART_S, poll_s=0.5)
    seconds = time.monotonic() - restarted_at
    print(f"results in Orthanc {seconds:.1f} s after the restart")
    assert seconds < RESULTS_AFTER_RESTART_S

    with read_session(engine) as session:
        job = session.get(Job, job_id)
        assert job is not None and job.status == "succeeded" and job.attempts >= 2
        objects = {o.kind: (o.sop_class_uid, o.sop_instance_uid)
                   for o in session.scalars(select(ResultObject).where(ResultObject.job_id == job_id))}
    transitions = [(before, after, actor) for _, before, after, actor, _ in job_events(engine, job_id)]
    assert ("running", "queued", "reclaim") in transitions, transitions  # not left to the 300 s lease
    time.sleep(1.0)  # a late duplicate would show now
    in_orthanc = _results_in_orthanc(site["orthanc"], study)
    assert set(objects) == {"sr", "key_image"}
    assert in_orthanc == {sop_class: {sop_instance} for sop_class, sop_instance in objects.values()}
    assert len(site["orthanc"].instances_in_study(study)) == 2  # the CT went to the node only
    engine.dispose()
