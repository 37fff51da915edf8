"""Two processes claiming from one SQLite database never get the same job or export (BEGIN IMMEDIATE)."""

from __future__ import annotations

import sqlalchemy
from sqlalchemy import select

from service.db.engine import read_session
from service.db.tables import Export
from service.queue import jobs
from tests.node_support import (
    _success_for_tests,
    claim_all_exports,
    claim_all_jobs,
    enqueue_many,
    run_in_two_processes,
)


def test_two_processes_claim_disjoint_jobs(sqlite_engine: sqlalchemy.Engine, sqlite_url: str) -> None:
    ids = enqueue_many(sqlite_engine, 40)
    a, b = run_in_two_processes(claim_all_jobs, sqlite_url)
    assert not set(a) & set(b), "a job was claimed twice"
    assert sorted(a + b) == sorted(ids)
    assert a and b, f"one process got nothing (a={len(a)}, b={len(b)}): no real concurrency"


def test_two_processes_claim_disjoint_exports(sqlite_engine: sqlalchemy.Engine, sqlite_url: str) -> None:
    job_ids = enqueue_many(sqlite_engine, 10)
    for job_id in job_ids:
        jobs.claim_next(sqlite_engine, worker_id="w", lease_seconds=60)
        assert jobs.finish(sqlite_engine, job_id, worker_id="w", success=_success_for_tests(job_id, 3),
                           peer_names=["pacs", "viewer"])
    a, b = run_in_two_processes(claim_all_exports, sqlite_url)
    assert not set(a) & set(b)
    assert len(a) + len(b) == 60
    with read_session(sqlite_engine) as s:
        assert set(s.scalars(select(Export.status)).all()) == {"sent"}
