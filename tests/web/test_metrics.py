"""Prometheus metrics gathered from the database: values checked against counts made here, not by the collector."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy
from prometheus_client.parser import text_string_to_metric_families

from service.db.queries import record_instance
from service.domain.status import JobStatus
from service.queue import jobs
from service.web import metrics
from service.web.metrics import Histogram, NodeCollector, metrics_registry, render_metrics, stage_durations
from tests.node_support import _success_for_tests, record


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_histogram_buckets_are_cumulative() -> None:
    h = Histogram.of([0.5, 3, 3, 70, 5000], bounds=(1, 5, 60, 600))
    assert h.buckets() == [("1.0", 1.0), ("5.0", 3.0), ("60.0", 3.0), ("600.0", 4.0), ("+Inf", 5.0)]
    assert h.total_seconds == 5076.5


def test_stage_durations_from_job_events() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    events = [(1, JobStatus.QUEUED.value, t0), (1, JobStatus.RUNNING.value, t0 + timedelta(seconds=4)),
              (1, JobStatus.QUEUED.value, t0 + timedelta(seconds=10)),  # a crash: reaped, queued again
              (1, JobStatus.RUNNING.value, t0 + timedelta(seconds=40)),
              (1, JobStatus.SUCCEEDED.value, t0 + timedelta(seconds=100)),
              (2, JobStatus.QUEUED.value, t0), (2, JobStatus.RUNNING.value, t0 + timedelta(seconds=1))]
    assert stage_durations(events) == {"queue_wait": [4.0, 30.0, 1.0], "run": [6.0, 60.0]}


def test_metrics_follow_the_database(sqlite_engine: sqlalchemy.Engine, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "CACHE_SECONDS", 0.0)  # every scrape reads the database in this test
    registry = metrics_registry(NodeCollector(sqlite_engine, tmp_path, lambda: {"scp": True, "worker-0": False}))
    before = _samples(render_metrics(registry).decode())
    assert before[("bmd_node_instances_received_total", (("status", "stored"),))] == 0
    assert before[("bmd_node_component_up", (("component", "worker-0"),))] == 0
    for i in range(3):
        record_instance(sqlite_engine, record("1.2.9", f"1.2.9.{i}"))
    record_instance(sqlite_engine, record("1.2.8", "1.2.8.1", status="rejected"))
    job_id = jobs.enqueue(sqlite_engine, "1.2.9", max_attempts=1)
    assert job_id is not None and jobs.claim_next(sqlite_engine, worker_id="w", lease_seconds=60) is not None
    assert jobs.finish(sqlite_engine, job_id, worker_id="w", success=_success_for_tests(job_id), peer_names=["pacs"])
    after = _samples(render_metrics(registry).decode())
    assert after[("bmd_node_instances_received_total", (("status", "stored"),))] == 3
    assert after[("bmd_node_instances_received_total", (("status", "rejected"),))] == 1
    assert after[("bmd_node_received_bytes_total", (("status", "stored"),))] == 3000
    assert after[("bmd_node_jobs", (("status", "succeeded"),))] == 1
    assert after[("bmd_node_exports", (("peer", "pacs"), ("status", "pending")))] == 2
    assert after[("bmd_node_queue_depth", (("queue", "exports"),))] == 2
    assert after[("bmd_node_stage_duration_seconds_count", (("stage", "run"),))] == 1
    assert after[("bmd_node_stage_duration_seconds_count", (("stage", "queue_wait"),))] == 1
    assert after[("bmd_node_disk_free_bytes", ())] > 0


def test_database_down_is_a_metric_not_an_error(tmp_path: Path) -> None:
    (tmp_path / "not-a-dir").write_text("x")
    broken = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'not-a-dir' / 'x.db'}")
    samples = _samples(render_metrics(metrics_registry(NodeCollector(broken, tmp_path))).decode())
    assert samples[("bmd_node_database_up", ())] == 0
