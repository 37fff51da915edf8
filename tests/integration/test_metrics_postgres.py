"""/metrics' database reads on PostgreSQL: the screening step durations are read from the result documents in SQL
(JSONB there, json_extract on SQLite), and the queue lag gauges (issue 19 pt 6, issue 20 pt 2)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import timedelta

import pytest
import sqlalchemy
from prometheus_client.parser import text_string_to_metric_families

from service.db.engine import make_engine
from service.db.migrate import upgrade
from service.db.queries import record_instance
from service.db.tables import utcnow
from service.pipeline.timings import SCREENING_STEPS
from service.queue import jobs
from service.web import metrics
from service.web.health import read_queue_lag
from service.web.metrics import NodeCollector, metrics_registry, render_metrics
from tests.node_support import _success_for_tests, record

pytestmark = [pytest.mark.integration]


@pytest.fixture
def pg_engine(postgres_url: str) -> Iterator[sqlalchemy.Engine]:
    upgrade(postgres_url)
    engine = make_engine(postgres_url)
    try:
        yield engine
    finally:
        engine.dispose()


def test_step_durations_and_lag_on_postgres(pg_engine: sqlalchemy.Engine, tmp_path: object,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "CACHE_SECONDS", 0.0)
    timings = {"load": 1.5, "segment": 42.25, "assess": 0.75, "objects": 3.0}
    for n, series in enumerate(("1.2.40", "1.2.41")):
        record_instance(pg_engine, record(series, f"{series}.1"))
        job_id = jobs.enqueue(pg_engine, series, max_attempts=1)
        assert job_id is not None and jobs.claim_next(pg_engine, worker_id="w", lease_seconds=60) is not None
        success = _success_for_tests(job_id, tag=str(n))
        if n == 0:  # the second job is a pipeline without step durations (the test pipelines): not counted
            success = dataclasses.replace(success, result_json={**success.result_json,
                                                                "extra": {"timings_s": timings}})
        assert jobs.finish(pg_engine, job_id, worker_id="w", success=success, peer_names=["pacs"],
                           now=utcnow() - timedelta(seconds=500))
    record_instance(pg_engine, record("1.2.42", "1.2.42.1"))
    assert jobs.enqueue(pg_engine, "1.2.42", max_attempts=1, now=utcnow() - timedelta(seconds=900)) is not None

    registry = metrics_registry(NodeCollector(pg_engine, tmp_path))  # type: ignore[arg-type]
    samples = {(s.name, s.labels.get("stage", ""), *([s.labels["le"]] if "le" in s.labels else [])): s.value
               for family in text_string_to_metric_families(render_metrics(registry).decode())
               for s in family.samples}
    for step in SCREENING_STEPS:
        assert samples[("bmd_node_stage_duration_seconds_count", step)] == 1
        assert samples[("bmd_node_stage_duration_seconds_sum", step)] == timings[step]
    assert samples[("bmd_node_stage_duration_seconds_bucket", "segment", "30.0")] == 0  # 42.25 s
    assert samples[("bmd_node_stage_duration_seconds_bucket", "segment", "60.0")] == 1
    assert 900 <= samples[("bmd_node_oldest_queued_job_age_seconds", "")] < 960
    assert 500 <= samples[("bmd_node_oldest_pending_export_age_seconds", "")] < 560
    lag = read_queue_lag(pg_engine)
    assert lag.jobs_waiting == 1
