"""Arrival order at the real network boundary: the node's SCP (pynetdicom), its real scheduler thread, a worker
with a light test pipeline (tests.node_support.MeanHuPipeline) and a real SQLite database.

Covers (issue 17): one series sent over two concurrent, interleaved associations; a whole study sent again with
the same SOP Instance UIDs; a series that grows after its job ran (a second job whose results supersede the first's).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from io import BytesIO
from pathlib import Path
from typing import TypeVar

import pydicom
import pytest
import sqlalchemy
from pydicom.uid import CTImageStorage
from pynetdicom import AE
from pynetdicom.association import Association
from sqlalchemy import select

from service.config import Config
from service.db.engine import make_engine, read_session
from service.db.migrate import upgrade
from service.db.tables import Export, Instance, Job, ResultObject, Series, utcnow
from service.pipeline.encode import encode_dataset
from service.pipeline.steps import predecessor_ref
from service.pipeline.types import JobInput, PipelineOutput, ScreeningPipeline
from service.queue.scheduler import Scheduler
from service.queue.worker import Worker
from service.receive.scp import start_scp
from tests.integration.dicom_net_support import node_config, storescu, write_series
from tests.node_support import MeanHuPipeline
from tests.support.net import free_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

STABLE_SECONDS = 1.0
"""[node] series_stable_seconds of the test node: a study is decided once it has been quiet this long."""
POLL_SECONDS = 0.1
"""[series] scheduler_poll_seconds of the test node."""
PEERS = (
    {"name": "ct-a", "ae_title": "CT_A", "host": "127.0.0.1", "port": 4242, "send_results": False},
    {"name": "ct-b", "ae_title": "CT_B", "host": "127.0.0.1", "port": 4243, "send_results": False},
    {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 4244, "send_results": True},
)

T = TypeVar("T")


@dataclass
class Node:
    """A running node without exporter: SCP + scheduler thread; the tests drive the worker themselves."""

    config: Config
    engine: sqlalchemy.Engine
    port: int

    def instances(self) -> list[Instance]:
        with read_session(self.engine) as session:
            return list(session.scalars(select(Instance).order_by(Instance.id)))

    def series(self, series_instance_uid: str) -> Series:
        with read_session(self.engine) as session:
            row = session.scalar(select(Series).where(Series.series_instance_uid == series_instance_uid))
        assert row is not None, "series not recorded"
        return row

    def jobs(self) -> list[Job]:
        with read_session(self.engine) as session:
            return list(session.scalars(select(Job).order_by(Job.id)))

    def stored_files(self) -> list[Path]:
        """Received instance files (the worker's result objects under storage/results/ not counted)."""
        storage = Path(self.config.node.storage_dir)
        return [p for p in storage.rglob("*.dcm") if p.is_file() and storage / "results" not in p.parents]

    def run_worker_once(self, pipeline: ScreeningPipeline | None = None) -> None:
        worker = Worker(self.config, self.engine, pipeline or MeanHuPipeline(), worker_id="arrival-worker")
        assert worker.run_once(), "the worker found no job to claim"


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    port = free_port()
    config = node_config(tmp_path, port=port, peers=PEERS,
                         extra={"series": {"min_slices": 10, "scheduler_poll_seconds": POLL_SECONDS}})
    assert config.node.series_stable_seconds == STABLE_SECONDS
    upgrade(config.node.database_url)
    engine = make_engine(config.node.database_url)
    server = start_scp(config, engine)
    stop = threading.Event()
    scheduler = threading.Thread(target=Scheduler(config, engine).run, args=(stop,), name="scheduler",
                                 daemon=True)
    scheduler.start()
    try:
        yield Node(config, engine, port)
    finally:
        stop.set()
        scheduler.join(timeout=30)
        server.shutdown()
        engine.dispose()




def _associate(port: int, calling_ae: str) -> Association:
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="BMDNODE")
    assert assoc.is_established, f"{calling_ae}: association not established"
    return assoc


def _send(paths: Sequence[Path], port: int, calling_ae: str = "PACS") -> None:
    assoc = _associate(port, calling_ae)
    try:
        for path in paths:
            status = assoc.send_c_store(pydicom.dcmread(path))
            assert status and int(status.Status) == 0, path.name
    finally:
        assoc.release()


def _send_interleaved(paths: Sequence[Path], port: int) -> None:
    """Two senders (CT_A: even slices, CT_B: odd slices) on two associations open at the same time, in lockstep:
    in round k both send their k-th slice concurrently, and neither starts round k + 1 before both are answered."""
    halves = {"CT_A": list(paths[0::2]), "CT_B": list(paths[1::2])}
    assert len(halves["CT_A"]) == len(halves["CT_B"])
    assocs = {ae: _associate(port, ae) for ae in halves}  # both open before the first C-STORE
    lockstep = threading.Barrier(len(halves), timeout=30)
    statuses: dict[str, list[int]] = {ae: [] for ae in halves}

    def sender(calling_ae: str) -> None:
        for path in halves[calling_ae]:
            lockstep.wait()
            status = assocs[calling_ae].send_c_store(pydicom.dcmread(path))
            statuses[calling_ae].append(int(status.Status) if status and "Status" in status else -1)
        lockstep.wait()

    threads = [threading.Thread(target=sender, args=(ae,), name=f"sender-{ae}") for ae in halves]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        for assoc in assocs.values():
            assoc.release()
    assert statuses == {ae: [0] * len(half) for ae, half in halves.items()}


class _PredecessorNamingPipeline(MeanHuPipeline):
    """MeanHuPipeline whose SR names the earlier SR the worker hands it (JobInput.previous) in its Predecessor
    Documents Sequence, through the item the screening recipe's SR gets (steps.predecessor_ref)."""

    def __init__(self) -> None:
        super().__init__()
        self.previous: list[object] = []

    def run(self, job: JobInput) -> PipelineOutput:
        self.previous.append(job.previous)
        output = super().run(job)
        if job.previous is None:
            return output
        sr_object = next(o for o in output.objects if o.kind == "sr")
        sr = pydicom.dcmread(BytesIO(sr_object.data))
        sr.PredecessorDocumentsSequence = [predecessor_ref(job.previous).to_item()]
        objects = tuple(encode_dataset("sr", sr) if o is sr_object else o for o in output.objects)
        return PipelineOutput(output.result, objects)


def _sop_uids(paths: Sequence[Path]) -> list[str]:
    return [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths]


def _series_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)


def _quiet_then_settled(node: Node, series_instance_uid: str) -> None:
    """Wait until the series has been quiet for the stable period plus a few scheduler ticks."""
    last = node.series(series_instance_uid).last_received_at
    settle_at = last + timedelta(seconds=STABLE_SECONDS + 10 * POLL_SECONDS)
    while utcnow() < settle_at:
        time.sleep(0.05)


def test_one_series_over_two_interleaved_associations_is_recorded_once_and_queued_once(
        node: Node, tmp_path: Path) -> None:
    paths = write_series(tmp_path / "ct", 20)
    series_uid = _series_uid(paths[0])
    _send_interleaved(paths, node.port)

    rows = node.instances()
    assert sorted(str(r.sop_instance_uid) for r in rows) == sorted(_sop_uids(paths))  # every instance, once
    assert {r.status for r in rows} == {"stored"}
    assert Counter(r.calling_ae_title for r in rows) == {"CT_A": 10, "CT_B": 10}
    # lockstep rounds: in arrival order each pair of rows holds one instance from each sender
    arrival = [r.calling_ae_title for r in rows]
    assert all(sorted(arrival[i:i + 2]) == ["CT_A", "CT_B"] for i in range(0, len(arrival), 2)), arrival
    assert len(node.stored_files()) == 20
    assert node.series(series_uid).instance_count == 20

    (job,) = wait_until(node.jobs, "a job for the series")
    series = node.series(series_uid)
    assert job.series_instance_uid == series_uid and job.instance_count == 20 and job.status == "queued"
    assert job.created_at >= series.last_received_at + timedelta(seconds=STABLE_SECONDS)  # after the quiet period
    assert series.status == "queued" and series.checked_instance_count == 20

    _quiet_then_settled(node, series_uid)
    assert [j.id for j in node.jobs()] == [job.id]  # still exactly one


def test_study_sent_again_with_the_same_uids_adds_no_rows_and_no_job(node: Node, tmp_path: Path) -> None:
    paths = write_series(tmp_path / "ct", 12)
    series_uid = _series_uid(paths[0])
    _send(paths, node.port)
    (job,) = wait_until(node.jobs, "the first job")
    node.run_worker_once()
    first_arrival = node.series(series_uid).last_received_at

    result = storescu(paths, port=node.port, calling_ae="PACS")  # the whole study again, by DCMTK
    assert result.returncode == 0, result.stderr

    rows = node.instances()
    assert sorted(str(r.sop_instance_uid) for r in rows) == sorted(_sop_uids(paths))  # no duplicate rows
    assert len(node.stored_files()) == 12  # the copies were acknowledged, not stored
    series = node.series(series_uid)
    assert series.instance_count == series.checked_instance_count == 12
    assert series.last_received_at > first_arrival  # duplicates still count as activity (quiet period restarts)

    _quiet_then_settled(node, series_uid)
    assert [(j.id, j.status) for j in node.jobs()] == [(job.id, "succeeded")]  # nothing changed: no second job
    later = Scheduler(node.config, node.engine).tick(now=utcnow() + timedelta(seconds=60))
    assert later.enqueued == () and later.waiting == ()
    assert node.series(series_uid).status == "queued"


def test_series_that_grows_after_its_job_ran_gets_a_new_job_superseding_the_first(
        node: Node, tmp_path: Path) -> None:
    paths = write_series(tmp_path / "ct", 16)
    series_uid = _series_uid(paths[0])
    pipeline = _PredecessorNamingPipeline()
    _send(paths[:12], node.port)
    (first,) = wait_until(node.jobs, "the first job")
    assert first.instance_count == 12
    node.run_worker_once(pipeline)

    _send(paths[12:], node.port)  # four more slices of the same series, after its job succeeded
    second = wait_until(lambda: next((j for j in node.jobs() if j.id != first.id), None), "the second job")
    assert second.supersedes_job_id == first.id and second.instance_count == 16
    assert node.series(series_uid).instance_count == 16
    node.run_worker_once(pipeline)

    jobs = {j.id: j for j in node.jobs()}
    assert set(jobs) == {first.id, second.id}
    assert jobs[first.id].status == jobs[second.id].status == "succeeded"
    with read_session(node.engine) as session:
        objects = list(session.scalars(select(ResultObject).order_by(ResultObject.id)))
        exports = {e.result_object_id: e for e in session.scalars(select(Export))}
    by_job: dict[int, list[ResultObject]] = {first.id: [], second.id: []}
    for obj in objects:
        by_job[obj.job_id].append(obj)
    assert len(by_job[first.id]) == len(by_job[second.id]) == 2
    assert all(o.superseded_by_job_id == second.id for o in by_job[first.id])
    assert all(o.superseded_by_job_id is None for o in by_job[second.id])
    # the first results were never sent (no exporter runs): their exports are cancelled, the new ones wait
    assert {exports[o.id].status for o in by_job[first.id]} == {"cancelled"}
    assert {exports[o.id].status for o in by_job[second.id]} == {"pending"}
    assert {e.peer_name for e in exports.values()} == {"pacs"}
    # the new SR names the earlier one as its predecessor (the worker hands the second run the first job's SR)
    (old_sr,) = [o for o in by_job[first.id] if o.kind == "sr"]
    (new_sr,) = [o for o in by_job[second.id] if o.kind == "sr"]
    assert pipeline.previous[0] is None and getattr(pipeline.previous[1], "job_id", None) == first.id
    item = pydicom.dcmread(new_sr.path).PredecessorDocumentsSequence[0]
    assert item.StudyInstanceUID == old_sr.study_instance_uid
    assert item.ReferencedSeriesSequence[0].SeriesInstanceUID == old_sr.series_instance_uid
    assert item.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == \
        old_sr.sop_instance_uid
    assert len(node.instances()) == 16 and node.series(series_uid).status == "queued"


def test_late_slices_while_the_job_is_still_queued_are_taken_over_by_that_job(node: Node, tmp_path: Path) -> None:
    paths = write_series(tmp_path / "ct", 16)
    series_uid = _series_uid(paths[0])
    _send(paths[:12], node.port)
    (job,) = wait_until(node.jobs, "the first job")
    assert job.instance_count == 12 and job.status == "queued"

    _send(paths[12:], node.port)  # more slices before any worker claimed the job
    wait_until(lambda: node.series(series_uid).checked_instance_count == 16, "the late slices to be decided")
    (taken_over,) = node.jobs()  # no second job: the queued one reads every stored instance when it runs
    assert taken_over.id == job.id and taken_over.instance_count == 16 and taken_over.status == "queued"
    node.run_worker_once()

    (done,) = node.jobs()
    assert done.status == "succeeded" and done.supersedes_job_id is None
    with read_session(node.engine) as session:
        objects = list(session.scalars(select(ResultObject)))
    assert len(objects) == 2 and all(o.job_id == job.id and o.superseded_by_job_id is None for o in objects)


def test_a_study_with_no_usable_series_sent_over_the_network_gets_one_indeterminate_report(
        node: Node, tmp_path: Path) -> None:
    paths = write_series(tmp_path / "ct", 4)  # fewer slices than [series] min_slices (10): rejected
    series_uid = _series_uid(paths[0])
    _send(paths, node.port)
    wait_until(lambda: node.series(series_uid).status == "rejected", "the rejection")

    def report_objects() -> list[ResultObject]:
        with read_session(node.engine) as session:
            return list(session.scalars(select(ResultObject).where(ResultObject.indeterminate_report_id.is_not(None))))

    objects = wait_until(report_objects, "the indeterminate report's objects")
    assert sorted(o.kind for o in objects) == ["key_image", "sr"] and node.jobs() == []
    sr = pydicom.dcmread(next(o.path for o in objects if o.kind == "sr"))
    assert sr.StudyInstanceUID == pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID

    result = storescu(paths, port=node.port, calling_ae="PACS")  # the same study again
    assert result.returncode == 0, result.stderr
    _quiet_then_settled(node, series_uid)
    with read_session(node.engine) as session:
        assert session.scalar(select(sqlalchemy.func.count()).select_from(ResultObject)) == 2  # no second report
        exports = list(session.scalars(select(Export)))
    assert sorted((e.peer_name, e.status) for e in exports) == [("pacs", "pending")] * 2
