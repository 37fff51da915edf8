"""Prometheus metrics (exposition format, ``prometheus_client``) gathered from the database at scrape time.

The node is several processes (spawned workers, possibly several SCP or exporter processes, other hosts sharing a
PostgreSQL database): counters kept in the HTTP process would miss what the others did. So one custom collector
reads what the database knows when Prometheus scrapes, and every process's work is counted once:

* ``bmd_node_instances_received_total{status}`` and ``bmd_node_received_bytes_total{status}``: instances rows
  (stored / ignored / rejected) and their bytes;
* ``bmd_node_series{status}``, ``bmd_node_jobs{status}``: rows by state;
* ``bmd_node_exports{peer,status}``: exports by outcome, per peer (sent, dead, pending, sending, cancelled);
* ``bmd_node_queue_depth{queue}``: jobs queued, exports pending or sending;
* ``bmd_node_stage_duration_seconds{stage}``: histograms from the job events: ``queue_wait`` (queued -> running)
  and ``run`` (running -> succeeded / failed / dead / queued again); and of the screening recipe's steps
  ``load``, ``segment``, ``assess``, ``objects`` from the step durations each succeeded job's result document
  carries (service/pipeline/timings.py; read in SQL, the documents are not parsed here);
* ``bmd_node_oldest_queued_job_age_seconds``, ``bmd_node_oldest_pending_export_age_seconds``: seconds since the
  oldest queued job / unsent export was created (0 when none waits), the lag /health compares with
  ``[node] max_queue_lag_seconds``;
* ``bmd_node_disk_free_bytes``, ``bmd_node_database_up``, ``bmd_node_component_up{component}``, ``bmd_node_info``.

No metric carries patient data: labels are statuses, peer names and component names only. Results are cached for
``CACHE_SECONDS`` so that several scrapers at once cost one set of queries.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Float, func, select
from sqlalchemy.dialects.postgresql import JSONB

from service import __version__
from service.db.engine import read_session
from service.db.tables import Export, Instance, Job, JobEvent, Series
from service.domain.status import ExportStatus, InstanceStatus, JobStatus, SeriesStatus
from service.pipeline.timings import EXTRA_KEY, SCREENING_STEPS, TIMINGS_KEY
from service.web.association_metrics import AssociationCollector
from service.web.health import QueueLag, disk_free_bytes, read_queue_lag

log = logging.getLogger(__name__)

CACHE_SECONDS = 5.0
DURATION_BUCKETS_SECONDS: tuple[float, ...] = (0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


@dataclass(frozen=True)
class Histogram:
    """Cumulative bucket counts (Prometheus ``le`` semantics) and the sum of observations."""

    bounds: tuple[float, ...]
    cumulative: tuple[int, ...]
    """One count per bound, then the +Inf count (= all observations)."""
    total_seconds: float

    @classmethod
    def of(cls, values: Sequence[float], bounds: tuple[float, ...] = DURATION_BUCKETS_SECONDS) -> Histogram:
        ordered = sorted(values)
        cumulative = (*(bisect.bisect_right(ordered, b) for b in bounds), len(ordered))
        return cls(bounds, cumulative, float(sum(ordered)))

    def buckets(self) -> list[tuple[str, float]]:
        return [(_le(b), float(c)) for b, c in zip(self.bounds, self.cumulative, strict=False)] + [
            ("+Inf", float(self.cumulative[-1]))]


def _le(bound: float) -> str:
    return str(float(bound))


@dataclass(frozen=True)
class DbSnapshot:
    instances: dict[str, tuple[int, int]] = field(default_factory=dict)
    """status -> (count, bytes)."""
    series: dict[str, int] = field(default_factory=dict)
    jobs: dict[str, int] = field(default_factory=dict)
    exports: dict[tuple[str, str], int] = field(default_factory=dict)
    """(peer, status) -> count."""
    durations: dict[str, Histogram] = field(default_factory=dict)
    lag: QueueLag | None = None


def stage_durations(rows: Sequence[tuple[int, str, datetime]]) -> dict[str, list[float]]:
    """``queue_wait`` and ``run`` durations in seconds from job events (job id, to_status, at) in event order."""
    out: dict[str, list[float]] = {"queue_wait": [], "run": []}
    last: dict[int, tuple[str, datetime]] = {}
    for job_id, to_status, at in rows:
        previous = last.get(job_id)
        if previous is not None:
            was, since = previous
            seconds = max(0.0, (at - since).total_seconds())
            if was == JobStatus.QUEUED and to_status == JobStatus.RUNNING:
                out["queue_wait"].append(seconds)
            elif was == JobStatus.RUNNING:
                out["run"].append(seconds)
        last[job_id] = (to_status, at)
    return out


def read_snapshot(engine: sqlalchemy.Engine) -> DbSnapshot:
    with read_session(engine) as session:
        instances = {status: (int(n), int(b or 0)) for status, n, b in session.execute(
            select(Instance.status, func.count(), func.sum(Instance.size_bytes)).group_by(Instance.status))}
        series = {s: int(n) for s, n in session.execute(select(Series.status, func.count()).group_by(Series.status))}
        jobs = {s: int(n) for s, n in session.execute(select(Job.status, func.count()).group_by(Job.status))}
        exports = {(peer, s): int(n) for peer, s, n in session.execute(
            select(Export.peer_name, Export.status, func.count()).group_by(Export.peer_name, Export.status))}
        events = session.execute(select(JobEvent.job_id, JobEvent.to_status, JobEvent.at)
                                 .order_by(JobEvent.job_id, JobEvent.id)).tuples().all()
        steps = step_durations(session.execute(select(*_step_columns(engine.dialect.name)).where(
            Job.status == JobStatus.SUCCEEDED, Job.result_json.is_not(None))).tuples().all())
    durations = {stage: Histogram.of(values) for stage, values in (stage_durations(events) | steps).items()}
    return DbSnapshot(instances, series, jobs, exports, durations, read_queue_lag(engine))


def _step_columns(dialect: str) -> list[sqlalchemy.ColumnElement[Any]]:
    """One column per screening step: its seconds from the result document, NULL where it has none."""
    if dialect == "postgresql":
        document = sqlalchemy.cast(Job.result_json, JSONB)
        return [document[(EXTRA_KEY, TIMINGS_KEY, step)].astext.cast(Float) for step in SCREENING_STEPS]
    return [func.json_extract(Job.result_json, f"$.{EXTRA_KEY}.{TIMINGS_KEY}.{step}") for step in SCREENING_STEPS]


def step_durations(rows: Sequence[Sequence[Any]]) -> dict[str, list[float]]:
    """Seconds per screening step (rows: one value per SCREENING_STEPS entry, None where a job has none)."""
    out: dict[str, list[float]] = {step: [] for step in SCREENING_STEPS}
    for row in rows:
        for step, value in zip(SCREENING_STEPS, row, strict=True):
            if isinstance(value, int | float) and value >= 0:
                out[step].append(float(value))
    return out


class NodeCollector(Collector):
    """Yields the node's metrics from the database (cached ``CACHE_SECONDS``) and from this process's view of its
    components and disk."""

    def __init__(self, engine: sqlalchemy.Engine, storage_dir: Path,
                 components: Callable[[], dict[str, bool]] | None = None, ae_title: str = "") -> None:
        self.engine = engine
        self.storage_dir = storage_dir
        self.components = components
        self.ae_title = ae_title
        self._lock = threading.Lock()
        self._cached: tuple[float, DbSnapshot | None] = (-CACHE_SECONDS - 1, None)

    def _snapshot(self) -> DbSnapshot | None:
        with self._lock:
            at, snapshot = self._cached
            if time.monotonic() - at < CACHE_SECONDS:
                return snapshot
            try:
                snapshot = read_snapshot(self.engine)
            except sqlalchemy.exc.SQLAlchemyError as exc:
                log.warning("metrics: database not readable (%s)", type(exc).__name__)
                snapshot = None
            self._cached = (time.monotonic(), snapshot)
            return snapshot

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily("bmd_node_info", "Version and AE title of this node", labels=["version", "ae_title"])
        info.add_metric([__version__, self.ae_title], 1.0)
        yield info
        yield from self._process_metrics()
        snapshot = self._snapshot()
        up = GaugeMetricFamily("bmd_node_database_up", "1 when the database answered the last scrape")
        up.add_metric([], 0.0 if snapshot is None else 1.0)
        yield up
        if snapshot is not None:
            yield from _db_metrics(snapshot)

    def _process_metrics(self) -> Iterator[Metric]:
        free = disk_free_bytes(self.storage_dir)
        if free is not None:
            disk = GaugeMetricFamily("bmd_node_disk_free_bytes", "Free bytes on the file system of storage_dir")
            disk.add_metric([], float(free))
            yield disk
        if self.components is not None:
            parts = GaugeMetricFamily("bmd_node_component_up", "1 while a part of the node runs",
                                      labels=["component"])
            for name, alive in sorted(self.components().items()):
                parts.add_metric([name], 1.0 if alive else 0.0)
            yield parts


def _db_metrics(s: DbSnapshot) -> Iterator[Metric]:
    received = CounterMetricFamily("bmd_node_instances_received", "DICOM instances received, by outcome",
                                   labels=["status"])
    size = CounterMetricFamily("bmd_node_received_bytes", "Bytes of DICOM instances received, by outcome",
                               labels=["status"])
    instances = {status.value: (0, 0) for status in InstanceStatus} | s.instances  # 0 before the first one
    for status, (count, n_bytes) in sorted(instances.items()):
        received.add_metric([status], float(count))
        size.add_metric([status], float(n_bytes))
    yield received
    yield size
    for name, doc, counts, statuses in (("bmd_node_series", "Received series by state", s.series, SeriesStatus),
                                        ("bmd_node_jobs", "Screening jobs by state", s.jobs, JobStatus)):
        family = GaugeMetricFamily(name, doc, labels=["status"])
        for status, count in sorted(({v.value: 0 for v in statuses} | counts).items()):
            family.add_metric([status], float(count))
        yield family
    exports = GaugeMetricFamily("bmd_node_exports", "Result objects to send, by peer and outcome",
                                labels=["peer", "status"])
    for (peer, status), count in sorted(s.exports.items()):
        exports.add_metric([peer, status], float(count))
    yield exports
    depth = GaugeMetricFamily("bmd_node_queue_depth", "Work waiting: queued jobs, exports not yet sent",
                              labels=["queue"])
    depth.add_metric(["jobs"], float(s.jobs.get(JobStatus.QUEUED, 0)))
    depth.add_metric(["exports"], float(sum(n for (_, status), n in s.exports.items()
                                            if status in (ExportStatus.PENDING, ExportStatus.SENDING))))
    yield depth
    if s.lag is not None:
        for name, doc, age in (
                ("bmd_node_oldest_queued_job_age_seconds", "Seconds since the oldest queued job was created (0: "
                 "none queued)", s.lag.oldest_queued_job_age_seconds),
                ("bmd_node_oldest_pending_export_age_seconds", "Seconds since the oldest result object not yet sent "
                 "was queued for a peer (0: none)", s.lag.oldest_pending_export_age_seconds)):
            gauge = GaugeMetricFamily(name, doc)
            gauge.add_metric([], age or 0.0)
            yield gauge
    durations = HistogramMetricFamily("bmd_node_stage_duration_seconds",
                                      "Time of a job in a stage: queue_wait (queued to running), run (running to "
                                      "its outcome); the screening steps load, segment, assess, objects of each "
                                      "succeeded job", labels=["stage"])
    for stage, histogram in sorted(s.durations.items()):
        durations.add_metric([stage], histogram.buckets(), histogram.total_seconds)
    yield durations


def metrics_registry(collector: NodeCollector) -> CollectorRegistry:
    """A registry of its own (not prometheus_client's global one, which holds this process's internals only)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    registry.register(AssociationCollector())  # the SCP's association counts, summed over its receiver processes
    return registry


def render_metrics(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
