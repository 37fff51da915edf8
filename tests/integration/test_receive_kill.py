"""Issue 18: every instance acknowledged 0x0000 survives a SIGKILL of the receiver the next millisecond.

Four associations (pynetdicom senders, so that exactly which C-STOREs were acknowledged 0x0000 is known) send four
studies to ``bmd-node scp`` running as its own process with two receiver processes on the port. The node's process
is killed with SIGKILL in the middle of the stream (its receiver child dies with it) and started again. Then every
acknowledged instance is on disk, whole, and in the database; no temporary file is left; files and rows agree. The
senders then re-send what was not acknowledged (as an archive retries), and the scheduler gives each series exactly
one job covering all its instances. This file runs ``spool_mode = "direct"`` (file and directory fsynced before the
response); test_receive_kill_pool.py runs the default pool mode with the same senders and the same re-send check.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import sqlalchemy
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from sqlalchemy import select

from bench.procs import port_open
from service.config import Config, load_config
from service.db.engine import make_engine, read_session
from service.db.migrate import upgrade
from service.db.tables import Instance, Job
from service.export.requestor import REQUESTOR_HANDLERS
from service.queue.scheduler import Scheduler
from tests.integration.dicom_net_support import write_series
from tests.support.net import free_port, wait_for_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
STUDIES = 4
SLICES = 60
KILL_AFTER_ACKS = 70
"""SIGKILL once this many C-STOREs (of 240) were acknowledged: well inside the stream."""


def _write_config(tmp_path: Path, port: int, spool_mode: str = "direct") -> Path:
    path = tmp_path / "node.toml"
    path.write_text(f"""
[node]
ae_title = "BMDNODE"
host = "127.0.0.1"
port = {port}
http_port = 0
storage_dir = "{tmp_path / 'storage'}"
database_url = "sqlite:///{tmp_path / 'node.db'}"
series_stable_seconds = 1
spool_mode = "{spool_mode}"
receive_processes = 2

[series]
min_slices = 10
scheduler_poll_seconds = 0.1

[[peers]]
name = "pacs"
ae_title = "PACS"
host = "127.0.0.1"
port = 4242
send_results = false
""")
    return path


def _start_receiver(config_path: Path, port: int, log_path: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BMD_NODE_")}
    with log_path.open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "service", "--config", str(config_path), "scp"], cwd=REPO_ROOT,
                                env=env, stdout=log, stderr=subprocess.STDOUT)
    wait_for_port(port, timeout_s=120.0)
    return proc


def _nothing_listens(port: int) -> bool:
    return not port_open(port)


class Sender(threading.Thread):
    """One association sending ``paths`` in order; ``acknowledged``: SOP Instance UIDs answered 0x0000."""

    def __init__(self, paths: list[Path], port: int) -> None:
        super().__init__(daemon=True)
        self.paths = paths
        self.port = port
        self.acknowledged: list[str] = []

    def run(self) -> None:
        ae = AE(ae_title="PACS")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", self.port, ae_title="BMDNODE", evt_handlers=REQUESTOR_HANDLERS)
        if not assoc.is_established:
            return
        try:
            for path in self.paths:
                ds = pydicom.dcmread(path)
                try:
                    status = assoc.send_c_store(ds)
                except (RuntimeError, OSError):
                    return
                if not status or "Status" not in status or int(status.Status) != 0:
                    return
                self.acknowledged.append(str(ds.SOPInstanceUID))
        finally:
            if assoc.is_established:
                assoc.release()


def _stored_rows(engine: sqlalchemy.Engine) -> list[Instance]:
    with read_session(engine) as session:
        return list(session.scalars(select(Instance).where(Instance.status == "stored")))


def _jobs(engine: sqlalchemy.Engine) -> list[Job]:
    with read_session(engine) as session:
        return list(session.scalars(select(Job).order_by(Job.id)))


def resend_completes_with_one_job_per_series(config: Config, engine: sqlalchemy.Engine, studies: list[list[Path]],
                                             acknowledged: set[str], port: int) -> None:
    """The archive re-sends what was not acknowledged; then every instance is stored once and every series goes
    through exactly one job."""
    storage = Path(config.node.storage_dir)
    resend = [Sender([p for p in paths if str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
                      not in acknowledged], port) for paths in studies]
    for sender in resend:
        sender.run()
        assert len(sender.acknowledged) == len(sender.paths), "a re-sent instance was not acknowledged"
    assert len(_stored_rows(engine)) == STUDIES * SLICES
    assert len(list(storage.rglob("*.dcm"))) == STUDIES * SLICES

    stop = threading.Event()
    scheduler = threading.Thread(target=Scheduler(config, engine).run, args=(stop,), daemon=True)
    scheduler.start()
    try:
        wait_until(lambda: len(_jobs(engine)) >= STUDIES, "a job per series", timeout_s=60.0)
        time.sleep(3 * config.node.series_stable_seconds)  # a second job would have been queued by now
    finally:
        stop.set()
        scheduler.join(timeout=30)
    jobs = _jobs(engine)
    series_uids = {str(pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID) for paths in studies}
    assert sorted(j.series_instance_uid for j in jobs) == sorted(series_uids)
    assert all(j.instance_count == SLICES for j in jobs)


@pytest.fixture
def studies(tmp_path: Path) -> list[list[Path]]:
    return [write_series(tmp_path / "src" / f"study{i}", SLICES, seed=100 * i) for i in range(STUDIES)]


@pytest.fixture
def receiver_logs(tmp_path: Path) -> Iterator[Path]:
    log = tmp_path / "receiver.log"
    yield log
    if log.exists():
        print(log.read_text(errors="replace")[-4000:])  # shown by pytest when the test fails


def test_sigkill_mid_stream_loses_no_acknowledged_instance(tmp_path: Path, studies: list[list[Path]],
                                                           receiver_logs: Path) -> None:
    port = free_port()
    config_path = _write_config(tmp_path, port)
    config = load_config(config_path, env={})
    upgrade(config.node.database_url)
    storage = Path(config.node.storage_dir)

    receiver = _start_receiver(config_path, port, receiver_logs)
    senders = [Sender(paths, port) for paths in studies]
    for sender in senders:
        sender.start()
    wait_until(lambda: sum(len(s.acknowledged) for s in senders) >= KILL_AFTER_ACKS, "acknowledgements",
               timeout_s=120.0)
    os.kill(receiver.pid, signal.SIGKILL)
    receiver.wait(timeout=30)
    for sender in senders:
        sender.join(timeout=60)
    acknowledged = {uid for s in senders for uid in s.acknowledged}
    assert KILL_AFTER_ACKS <= len(acknowledged) < STUDIES * SLICES, "the kill did not land mid-stream"
    wait_until(lambda: _nothing_listens(port), "the receiver child to die with the node's process", timeout_s=10.0)

    receiver = _start_receiver(config_path, port, receiver_logs)  # reconciles before it listens
    engine = make_engine(config.node.database_url)
    try:
        rows = {row.sop_instance_uid: row for row in _stored_rows(engine)}
        missing = sorted(acknowledged - set(rows))
        assert not missing, f"{len(missing)} acknowledged instances are not in the database"
        for uid in acknowledged:
            ds = pydicom.dcmread(rows[uid].path)  # whole file: pixel data read to the end
            assert str(ds.SOPInstanceUID) == uid and len(ds.PixelData) == ds.Rows * ds.Columns * 2
        assert not list(storage.rglob(".incoming-*")), "a temporary (half-written) file remains"
        spool_files = sorted(str(p) for p in storage.rglob("*.dcm"))
        assert spool_files == sorted(row.path for row in rows.values()), "spool files and database rows differ"

        resend_completes_with_one_job_per_series(config, engine, studies, acknowledged, port)
    finally:
        receiver.send_signal(signal.SIGTERM)
        receiver.wait(timeout=60)
        engine.dispose()
