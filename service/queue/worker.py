"""The worker: claim a job, run the screening pipeline under a heartbeat, store the results, report.

Result files are written (atomically) before the job's success is committed; the success transaction
(queue/jobs.finish) records them with their exports. A crash before that commit leaves only orphan files in the
job's result folder, which the next attempt clears; nothing of that attempt is ever exported.

A job whose series holds no vertebra (steps.NoVertebraFoundError) ends failed with that reason; with
``[results] report_unassessable`` the worker first records and sends an "indeterminate" report naming the series
(queue/job_results.py; one per series, so a re-run or a crash before the failure is recorded sends no second one).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import sqlalchemy
from pydicom.errors import InvalidDicomError
from sqlalchemy import select

from service.config import Config
from service.db.engine import make_engine, read_session, write_session
from service.db.lease_owner import current_owner
from service.db.patient_identity import StudyFacts, erase_expired_identity, find_prior_study, record_job_facts
from service.db.queries import stored_instance_paths
from service.db.tables import ResultObject, utcnow
from service.domain.trend import TrendPoint, dicom_date
from service.logging import setup_logging
from service.pipeline import memory, storage
from service.pipeline.types import JobInput, PipelineRejectedError, PreviousResult, ScreeningPipeline
from service.queue import jobs
from service.queue.job_results import (
    SCOPE_SERIES,
    JobSuccess,
    NamedReason,
    StoredObject,
    no_vertebra_report_key,
    produce_indeterminate_report,
    record_indeterminate_report,
)
from service.segmentation.preflight import ModelPreflightError

log = logging.getLogger(__name__)

REAP_INTERVAL_SECONDS = 5.0
IDENTITY_CLEANUP_INTERVAL_SECONDS = 3600.0
"""How often a worker erases patient identifiers older than ``[results] patient_identity_retention_days``."""
_FACT_TAGS = ("PatientID", "IssuerOfPatientID", "StudyDate", "KVP")

PipelineFactory = Callable[[Config], ScreeningPipeline]


def default_worker_id() -> str:
    """Host, boot, PID and process start time: a restarted node reclaims this worker's lease at once when it is
    gone (db.lease_owner)."""
    return str(current_owner("worker"))


class Worker:
    def __init__(self, config: Config, engine: sqlalchemy.Engine, pipeline: ScreeningPipeline, *,
                 worker_id: str | None = None) -> None:
        self.config = config
        self.engine = engine
        self.pipeline = pipeline
        self.worker_id = worker_id or default_worker_id()
        self.retry_policy = jobs.job_retry_policy(config.worker)
        self._next_reap = 0.0
        self._next_identity_cleanup = 0.0

    def run(self, stop_event: threading.Event | None = None) -> None:
        """Process jobs until ``stop_event`` is set (the job in hand is finished first)."""
        stop_event = stop_event or threading.Event()
        log.info("worker %s started", self.worker_id)
        while not stop_event.is_set():
            try:
                worked = self.run_once()
            except sqlalchemy.exc.OperationalError as exc:  # database briefly unavailable: wait, then go on
                log.warning("worker %s: database error: %s", self.worker_id, exc.orig)
                worked = False
            if not worked:
                stop_event.wait(self.config.worker.poll_seconds)
        log.info("worker %s stopped", self.worker_id)

    def run_once(self) -> bool:
        """Reap expired leases (at most every few seconds), then claim and process one job. True if it did."""
        if time.monotonic() >= self._next_reap:
            jobs.reap_expired(self.engine)
            self._next_reap = time.monotonic() + REAP_INTERVAL_SECONDS
        if time.monotonic() >= self._next_identity_cleanup:
            self._erase_expired_identity()
            self._next_identity_cleanup = time.monotonic() + IDENTITY_CLEANUP_INTERVAL_SECONDS
        claimed = jobs.claim_next(self.engine, worker_id=self.worker_id,
                                  lease_seconds=self.config.worker.lease_seconds)
        if claimed is None:
            return False
        self.process(claimed)
        return True

    def process(self, claimed: jobs.ClaimedJob) -> None:
        job_id = claimed.job_id
        log.info("job %s: attempt %d/%d started by %s", job_id, claimed.attempts, claimed.max_attempts,
                 self.worker_id)
        folder = storage.result_dir(self.config.node.storage_dir, job_id)
        storage.clear_dir(folder)  # leftovers of an attempt that never committed
        stop_heartbeat = threading.Event()
        lease_lost = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(job_id, stop_heartbeat, lease_lost),
                                name=f"heartbeat-{job_id}", daemon=True)
        beat.start()
        written: list[Path] = []
        try:
            job_input = self._job_input(claimed)
            estimate = memory.check_job_fits(job_input.paths, self.config.worker.memory_limit_mb)
            log.info("job %s: estimated peak %.0f MiB", job_id, estimate.peak_mib)
            output = self.pipeline.run(job_input)
            stored = []
            for obj in output.objects:
                path, digest = storage.write_object(folder, obj)
                written.append(path)
                stored.append(StoredObject(obj.kind, obj.sop_class_uid, obj.sop_instance_uid,
                                                obj.study_instance_uid, obj.series_instance_uid, str(path),
                                                len(obj.data), digest))
            document = output.result.to_json_dict()
            written.append(storage.write_result_json(folder, document))
            peers = [p.name for p in self.config.result_destinations]
            ok = jobs.finish(self.engine, job_id, worker_id=self.worker_id,
                             success=JobSuccess(output.result, tuple(stored), str(folder), document),
                             peer_names=peers)
            if ok:
                log.info("job %s: succeeded, %d object(s) queued for %d peer(s)", job_id, len(stored), len(peers))
            else:
                self._discard(written)
        except PipelineRejectedError as exc:
            log.warning("job %s: input rejected: %s", job_id, exc.reason)
            self._discard(written)
            if self.config.results.report_unassessable and _is_no_vertebra(exc):
                self._report_no_vertebra(claimed, exc.reason)  # before the failure: a crash between sends no twin
            jobs.fail(self.engine, job_id, worker_id=self.worker_id, error=exc.reason, retryable=False)
        except MemoryError:
            # not retried blindly: only a first attempt on a node with several workers (another job may have held
            # the memory) runs again; a job that does not fit alone fails with a reason an operator can act on
            self._discard(written)
            retry = claimed.attempts < 2 and self.config.worker.processes > 1
            reason = (f"out of memory (attempt {claimed.attempts}; [worker] memory_limit_mb is "
                      f"{self.config.worker.memory_limit_mb}): {'retried once' if retry else 'not retried'}")
            log.error("job %s: %s", job_id, reason)
            jobs.fail(self.engine, job_id, worker_id=self.worker_id, error=reason, retryable=retry,
                      policy=self.retry_policy)
        except Exception as exc:
            log.exception("job %s: attempt %d failed", job_id, claimed.attempts)
            self._discard(written)
            status = jobs.fail(self.engine, job_id, worker_id=self.worker_id,
                               error=f"{type(exc).__name__}: {exc}", retryable=True, policy=self.retry_policy)
            log.info("job %s: now %s", job_id, status)
        finally:
            stop_heartbeat.set()
            beat.join(timeout=10)

    def _job_input(self, claimed: jobs.ClaimedJob) -> JobInput:
        paths = tuple(Path(p) for p in stored_instance_paths(self.engine, claimed.series_instance_uid))
        if not paths:
            raise PipelineRejectedError("the series has no stored instances")
        return JobInput(job_id=claimed.job_id, study_instance_uid=claimed.study_instance_uid,
                        series_instance_uid=claimed.series_instance_uid, paths=paths,
                        previous=self._previous_result(claimed.supersedes_job_id),
                        prior=self._prior_study(claimed, paths))

    def _prior_study(self, claimed: jobs.ClaimedJob, paths: tuple[Path, ...]) -> TrendPoint | None:
        """Record the job's study facts (and, unless retention is 0, the patient's identifiers) and return the
        patient's prior study on this node, for the BMD trend. Never fails the job: a problem only means no trend."""
        try:
            facts = _study_facts(paths)
            if facts is None:
                return None
            record_job_facts(self.engine, claimed.job_id, facts,
                             store_identity=self.config.results.patient_identity_retention_days > 0, now=utcnow())
            prior = find_prior_study(self.engine, facts, claimed.study_instance_uid)
        except (sqlalchemy.exc.SQLAlchemyError, ValueError) as exc:
            log.warning("job %s: no trend (prior study lookup failed: %s)", claimed.job_id, type(exc).__name__)
            return None
        if prior is not None:
            log.info("job %s: prior study of %s found for the trend", claimed.job_id, prior.study_date)
        return prior

    def _erase_expired_identity(self) -> None:
        days = self.config.results.patient_identity_retention_days
        try:
            erase_expired_identity(self.engine, recorded_before=utcnow() - dt.timedelta(days=days))
        except sqlalchemy.exc.OperationalError as exc:
            log.warning("patient identity cleanup failed: %s", exc.orig)

    def _previous_result(self, job_id: int | None) -> PreviousResult | None:
        if job_id is None:
            return None
        with read_session(self.engine) as session:
            sr = session.scalars(select(ResultObject).where(ResultObject.job_id == job_id,
                                                            ResultObject.kind == "sr")).first()
            if sr is None or not Path(sr.path).is_file():
                return None
            return PreviousResult(job_id, Path(sr.path), sr.sop_instance_uid, sr.sop_class_uid,
                                  sr.study_instance_uid, sr.series_instance_uid)

    def _report_no_vertebra(self, claimed: jobs.ClaimedJob, reason: str) -> None:
        """Record and send the indeterminate report of the series (once per series); never stops the failure."""
        try:
            with write_session(self.engine) as session:
                report_id = record_indeterminate_report(
                    session, scope=SCOPE_SERIES, dedup_key=no_vertebra_report_key(claimed.series_instance_uid),
                    study_instance_uid=claimed.study_instance_uid, series_instance_uid=claimed.series_instance_uid,
                    job_id=claimed.job_id, reasons=[NamedReason(claimed.series_instance_uid, reason)], now=utcnow())
            if report_id is None:
                log.info("job %s: the series' indeterminate report was recorded before; none added", claimed.job_id)
                return
            produce_indeterminate_report(self.engine, report_id, storage_dir=self.config.node.storage_dir,
                                         peer_names=[p.name for p in self.config.result_destinations])
        except Exception:  # the scheduler builds a report left pending; the job's failure is recorded regardless
            log.exception("job %s: indeterminate report not sent", claimed.job_id)

    def _heartbeat(self, job_id: int, stop: threading.Event, lost: threading.Event) -> None:
        settings = self.config.worker
        while not stop.wait(settings.heartbeat_seconds):
            try:
                if not jobs.heartbeat(self.engine, job_id, worker_id=self.worker_id,
                                      lease_seconds=settings.lease_seconds):
                    log.warning("job %s: lease lost (reaped or taken over); its results will be discarded", job_id)
                    lost.set()
                    return
            except sqlalchemy.exc.OperationalError as exc:
                log.warning("job %s: heartbeat failed: %s", job_id, exc.orig)

    @staticmethod
    def _discard(paths: list[Path]) -> None:
        for path in paths:
            with contextlib.suppress(OSError):
                path.unlink()


def _study_facts(paths: tuple[Path, ...]) -> StudyFacts | None:
    """Patient ID, issuer, Study Date and kVp from the first readable header of the series."""
    for path in sorted(paths)[:3]:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(_FACT_TAGS))
        except (InvalidDicomError, OSError, ValueError, EOFError):
            continue
        kvp = ds.get("KVP")
        try:
            kvp_value = float(kvp) if kvp not in (None, "") and float(kvp) > 0 else None
        except (TypeError, ValueError):
            kvp_value = None
        return StudyFacts(patient_id=str(ds.get("PatientID", "") or "").strip()[:64],
                          issuer_of_patient_id=str(ds.get("IssuerOfPatientID", "") or "").strip()[:64],
                          study_date=dicom_date(str(ds.get("StudyDate", "") or "")), kvp=kvp_value)
    return None


def _is_no_vertebra(exc: PipelineRejectedError) -> bool:
    # Deferred: the steps module loads the calibration stack; a worker process has it loaded with its pipeline.
    from service.pipeline.steps import NoVertebraFoundError  # noqa: PLC0415

    return isinstance(exc, NoVertebraFoundError)


def load_pipeline_factory(spec: str | None) -> PipelineFactory:
    """``"package.module:callable"`` -> a factory taking the Config; None -> the screening recipe."""
    if not spec:
        # Deferred on purpose: the recipe loads scipy, highdicom and the calibration stack (~2 s). Only a worker
        # process needs it; the serve parent and every other CLI command import this module without it.
        from service.pipeline.screening import build_screening_pipeline  # noqa: PLC0415

        return build_screening_pipeline
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"pipeline must be 'module:callable', got {spec!r}")
    if os.getcwd() not in sys.path:  # like `python -m`: a factory module may live in the working directory
        sys.path.insert(0, os.getcwd())
    factory = getattr(importlib.import_module(module_name), attribute)
    if not callable(factory):
        raise ValueError(f"pipeline {spec!r} is not callable")
    return factory  # type: ignore[no-any-return]


def run_worker_process(config: Config, stop_event: threading.Event | None = None,
                       pipeline_spec: str | None = None, worker_id: str | None = None,
                       pipeline: ScreeningPipeline | None = None) -> None:
    """Entry point of one worker process (``bmd-node worker`` / ``serve``): own engine, pipeline loaded once.
    ``pipeline``: one already built and warmed (``serve``'s start-up check), used as it is."""
    setup_logging(config.logging)
    engine = make_engine(config.node.database_url)
    try:
        warm_up = None
        if pipeline is None:
            pipeline = load_pipeline_factory(pipeline_spec)(config)
            warm_up = getattr(pipeline, "warm_up", None)
        if callable(warm_up):
            try:
                warm_up()
            except ModelPreflightError as exc:  # a missing or broken model file: every job would fail; stop here
                log.critical("model check failed: %s; worker not started", exc)
                raise SystemExit(3) from exc
            except Exception as exc:  # jobs will fail (and retry) with the same error; the worker keeps polling
                log.error("pipeline warm-up failed: %s: %s", type(exc).__name__, exc)
        Worker(config, engine, pipeline, worker_id=worker_id).run(stop_event)
    finally:
        engine.dispose()
