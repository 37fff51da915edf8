"""The job queue and the outbox on a real PostgreSQL server: SKIP LOCKED claims from two processes, leases,
the one-active-job index, and record_instance under concurrent duplicate inserts."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta

import pydicom
import pytest
import sqlalchemy
from sqlalchemy import func, select

from service.config import Config, PeerSettings
from service.db.engine import make_engine, read_session
from service.db.migrate import upgrade
from service.db.queries import record_instance
from service.db.tables import Export, Instance, Series, utcnow
from service.queue import jobs
from service.queue.scheduler import Scheduler
from service.queue.worker import Worker
from service.series.settings import SeriesSettings
from tests.node_support import (
    MeanHuPipeline,
    _success_for_tests,
    claim_all_exports,
    claim_all_jobs,
    enqueue_many,
    record,
    run_in_two_processes,
    write_ct_series,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def pg_engine(postgres_url: str) -> Iterator[sqlalchemy.Engine]:
    upgrade(postgres_url)
    engine = make_engine(postgres_url)
    try:
        yield engine
    finally:
        engine.dispose()


def test_engine_is_postgres(pg_engine: sqlalchemy.Engine) -> None:
    assert pg_engine.dialect.name == "postgresql"
    assert pg_engine.dialect.driver == "psycopg2"


def test_two_processes_claim_disjoint_jobs(pg_engine: sqlalchemy.Engine, postgres_url: str) -> None:
    ids = enqueue_many(pg_engine, 40)
    a, b = run_in_two_processes(claim_all_jobs, postgres_url)
    assert not set(a) & set(b)
    assert sorted(a + b) == sorted(ids)
    assert a and b


def test_two_processes_claim_disjoint_exports(pg_engine: sqlalchemy.Engine, postgres_url: str) -> None:
    for job_id in enqueue_many(pg_engine, 10):
        jobs.claim_next(pg_engine, worker_id="w", lease_seconds=60)
        assert jobs.finish(pg_engine, job_id, worker_id="w", success=_success_for_tests(job_id, 3),
                           peer_names=["pacs", "viewer"])
    a, b = run_in_two_processes(claim_all_exports, postgres_url)
    assert not set(a) & set(b)
    assert len(a) + len(b) == 60
    with read_session(pg_engine) as s:
        assert set(s.scalars(select(Export.status)).all()) == {"sent"}


def test_lease_expiry_and_one_active_job(pg_engine: sqlalchemy.Engine) -> None:
    (job_id,) = enqueue_many(pg_engine, 1)
    uid = jobs.get_job(pg_engine, job_id).series_instance_uid  # type: ignore[union-attr]
    assert jobs.enqueue(pg_engine, uid, max_attempts=1) is None
    now = utcnow()
    assert jobs.claim_next(pg_engine, worker_id="crashed", lease_seconds=5, now=now) is not None
    assert jobs.reap_expired(pg_engine, now=now + timedelta(seconds=6)) == [job_id]
    assert jobs.get_job(pg_engine, job_id).status == "dead"  # type: ignore[union-attr]  # max_attempts=1
    jobs.retry(pg_engine, job_id)
    claimed = jobs.claim_next(pg_engine, worker_id="w2", lease_seconds=60)
    assert claimed is not None and claimed.job_id == job_id


def test_concurrent_duplicate_instances_are_idempotent(pg_engine: sqlalchemy.Engine) -> None:
    """Eight threads store the same 20 instances at once (as several associations re-sending would)."""
    uid = "1.2.826.0.1.3680043.8.498.66"
    results: list[bool] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def store() -> None:
        barrier.wait()
        for i in range(20):
            new = record_instance(pg_engine, record(uid, f"{uid}.{i}"))
            with lock:
                results.append(new)

    threads = [threading.Thread(target=store) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results.count(True) == 20 and len(results) == 160
    with read_session(pg_engine) as s:
        assert s.scalar(select(func.count()).select_from(Instance)) == 20
        assert s.scalar(select(Series.instance_count)) == 20


def test_scheduler_and_worker_on_postgres(pg_engine: sqlalchemy.Engine, postgres_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Stable series -> scheduler -> job -> worker (small real pipeline) -> results + exports, on PostgreSQL."""
    config = Config(peers=(PeerSettings("pacs", "PACS", "127.0.0.1", 104),),
                    series=SeriesSettings(min_slices=10)).with_node(
        database_url=postgres_url, storage_dir=tmp_path / "storage", series_stable_seconds=5)
    t0 = utcnow() - timedelta(seconds=10)
    paths = write_ct_series(tmp_path / "ct", n_slices=12, size=8)
    for p in paths:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        record_instance(pg_engine, record(str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID),
                                          study_uid=str(ds.StudyInstanceUID), path=str(p)), now=t0)
    (job_id,) = Scheduler(config, pg_engine).tick(now=t0 + timedelta(seconds=6)).enqueued
    worker = Worker(config, pg_engine, MeanHuPipeline(), worker_id="pg-worker")
    assert worker.run_once()
    assert jobs.get_job(pg_engine, job_id).status == "succeeded"  # type: ignore[union-attr]
    with read_session(pg_engine) as s:
        assert sorted(s.scalars(select(Export.peer_name)).all()) == ["pacs", "pacs"]
