"""The scheduler: decides when a series is complete and which series of a study to screen.

Every ``series.scheduler_poll_seconds`` it looks at series with stored instances not yet decided about
(``instance_count != checked_instance_count``). A study is considered once every one of its series has been quiet
for ``node.series_stable_seconds``. Then each changed series is checked (service.series.checks.check_series on the
headers: one orientation and Frame of Reference, an axial, sagittal or coronal stack, regular spacing, no duplicates,
rescale, enough slices, thickness limit; localizer images among the slices are left out); failures are recorded as
rejected with their reasons. A sagittal or coronal series is recorded as ignored when an axial series of the same
study is selected in the same decision ("sagittal reformat; the axial series 3 of the study is screened"), whether
it passed the checks or not; without a usable axial series it is a candidate like any other (sagittal before
coronal, series/selection.py) and, when selected, queued with the reason "sagittal series analysed: no usable axial
series in the study". Before the checks, a series the node
does not screen at all is recorded as ignored with its reason and never fails the study: a localizer (every image
ImageType LOCALIZER: "localizer (scout)") and a series of a body part outside chest/abdomen/spine
(series/body_part.py). Objects that are not CT images (dose reports, secondary captures, the node's own SEG/SR/key
image coming back) never reach the scheduler: the SCP records them as ignored on arrival (receive/handlers.py).
Among the eligible series of the study (the changed ones that passed and the ones that passed before) the preferred
one (series/selection.py) gets a job; the others are recorded as not selected with the reason. Every series status
is written through the one writer, db/queries.decide_series, whose guarded UPDATE skips a series that changed
meanwhile (decided next tick).

When the decision leaves a study with no usable series (every series with stored CT instances rejected or ignored,
at least one rejected) and ``[results] report_unassessable`` is on, a pending "indeterminate" report naming each
series and its reason is recorded in the same transaction (queue/job_results.py; one per study and set of rejected
series, so a study re-sent with the same unusable series gets no second one). A study whose series are all ignored
(localizers, head CT, ...) is not chest/abdomen CT and gets none. At the end of each tick the pending reports are
built and queued for export (the scheduler thread builds them; the first one loads highdicom).

More instances arriving for a series after its job finished make it 'changed' again: once quiet it gets a new job,
whose results replace the earlier ones (queue/jobs.finish supersedes them). While the series still has an active
job, the decision waits until that job ends (at most one active job per series).
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pydicom
import sqlalchemy
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.config import Config
from service.db.engine import read_session, write_session
from service.db.queries import SeriesStateError, decide_series, stored_instance_paths
from service.db.tables import Series, utcnow
from service.domain.status import SeriesStatus
from service.export.outbox import reclaim_orphaned_exports
from service.queue import jobs
from service.queue.job_results import (
    SCOPE_STUDY,
    NamedReason,
    pending_report_ids,
    produce_indeterminate_report,
    record_indeterminate_report,
    study_report_key,
)
from service.series.body_part import body_part_decision
from service.series.checks import check_series
from service.series.planes import NON_AXIAL_PLANES, SlicePlane, non_axial_queued_reason, reformat_reason
from service.series.selection import Selection, SeriesCandidate, candidate_from_header, select_series
from service.series.volume_loader import SeriesRejectedError, read_headers

log = logging.getLogger(__name__)

PASSED_BEFORE = (SeriesStatus.QUEUED, SeriesStatus.NOT_SELECTED)
LOCALIZER_REASON = "localizer (scout)"
REPORT_SETTLE_SECONDS = 120.0
"""A "no vertebra" report is built by its worker at once; the scheduler builds it only when still pending this
long after (the worker died before building it)."""


def not_screened_reason(headers: Sequence[pydicom.Dataset]) -> str | None:
    """Why the node leaves a readable CT series alone (recorded as ignored), or None when it is for the checks."""
    if headers and all("LOCALIZER" in [str(v).upper() for v in h.get("ImageType", None) or []] for h in headers):
        return LOCALIZER_REASON
    decision = body_part_decision(headers[0]) if headers else None
    if decision is not None and not decision.screened:
        return decision.reason
    return None


@dataclass(frozen=True)
class _Checked:
    ok: bool
    reason: str | None
    candidate: SeriesCandidate | None
    failed_as: SeriesStatus = SeriesStatus.REJECTED
    """What a series that is not ok is recorded as: rejected (a check failed) or ignored (not screened at all)."""
    plane: SlicePlane | None = None
    """The plane of the slices when the checks read it (a sagittal or coronal series may be a reformat)."""
    series_number: str = ""
    """SeriesNumber, to name the series in another series' reason."""


@dataclass(frozen=True)
class SchedulerTick:
    enqueued: tuple[int, ...]
    rejected: tuple[str, ...]
    not_selected: tuple[str, ...]
    waiting: tuple[str, ...]
    """Series whose decision waits for an active job of the same series to end."""
    ignored: tuple[str, ...] = ()
    """Series left alone: localizers and body parts the node does not screen."""
    reports: tuple[int, ...] = ()
    """Indeterminate reports recorded: studies left with no usable series."""


class Scheduler:
    def __init__(self, config: Config, engine: sqlalchemy.Engine) -> None:
        self.config = config
        self.engine = engine
        self._cache: dict[tuple[str, int], _Checked] = {}

    def run(self, stop_event: threading.Event) -> None:
        log.info("scheduler started (series stable after %ss)", self.config.node.series_stable_seconds)
        while not stop_event.is_set():
            try:
                self.tick()
            except sqlalchemy.exc.OperationalError as exc:
                log.warning("scheduler: database error: %s", exc.orig)
            except Exception:
                log.exception("scheduler tick failed")
            stop_event.wait(self.config.series.scheduler_poll_seconds)
        log.info("scheduler stopped")

    def tick(self, now: datetime | None = None) -> SchedulerTick:
        now = now or utcnow()
        jobs.reclaim_orphaned(self.engine, now=now)
        reclaim_orphaned_exports(self.engine, now=now)
        jobs.reap_expired(self.engine, now=now)
        quiet_before = now - timedelta(seconds=self.config.node.series_stable_seconds)
        with read_session(self.engine) as session:
            changed = session.scalars(select(Series).where(
                Series.instance_count > 0, Series.instance_count != Series.checked_instance_count)).all()
            studies = sorted({s.study_instance_uid for s in changed})
            by_study: dict[str, list[Series]] = defaultdict(list)
            if studies:
                for s in session.scalars(select(Series).where(Series.study_instance_uid.in_(studies),
                                                              Series.instance_count > 0)).all():
                    by_study[s.study_instance_uid].append(s)
        enqueued: list[int] = []
        rejected: list[str] = []
        not_selected: list[str] = []
        waiting: list[str] = []
        ignored: list[str] = []
        reports: list[int] = []
        for study_uid in studies:
            series_rows = by_study[study_uid]
            if any(s.last_received_at > quiet_before for s in series_rows):
                continue  # the study is still arriving
            result = self._decide_study(series_rows, now)
            enqueued += result.enqueued
            rejected += result.rejected
            not_selected += result.not_selected
            waiting += result.waiting
            ignored += result.ignored
            reports += result.reports
        if self.config.results.report_unassessable:
            self._produce_reports(now)
        return SchedulerTick(tuple(enqueued), tuple(rejected), tuple(not_selected), tuple(waiting), tuple(ignored),
                             tuple(reports))

    def _produce_reports(self, now: datetime) -> None:
        peers = [p.name for p in self.config.result_destinations]
        for report_id in pending_report_ids(self.engine, now=now, settle_seconds=REPORT_SETTLE_SECONDS):
            produce_indeterminate_report(self.engine, report_id, storage_dir=self.config.node.storage_dir,
                                         peer_names=peers, now=now)

    def _decide_study(self, series_rows: list[Series], now: datetime) -> SchedulerTick:
        checked: dict[str, _Checked] = {}
        counts: dict[str, int] = {}
        for s in series_rows:
            changed = s.instance_count != s.checked_instance_count
            if changed:
                checked[s.series_instance_uid] = self._check(s.series_instance_uid, s.instance_count)
                counts[s.series_instance_uid] = s.instance_count
            elif s.status in PASSED_BEFORE:
                checked[s.series_instance_uid] = self._check(s.series_instance_uid, s.instance_count)
        eligible = [c.candidate for c in checked.values() if c.ok and c.candidate is not None]
        selection = select_series(eligible)
        enqueued: list[int] = []
        rejected: list[str] = []
        not_selected: list[str] = []
        waiting: list[str] = []
        ignored: list[str] = []
        with write_session(self.engine) as session:
            for uid, count in counts.items():
                row = session.scalar(select(Series).where(Series.series_instance_uid == uid))
                if row is None or row.instance_count != count:
                    continue  # more arrived meanwhile: decide on the next tick
                result = checked[uid]
                try:
                    if not result.ok:
                        failed_as, why = _failure(result, selection, checked)
                        if decide_series(session, row, failed_as, instance_count=count, reason=why, now=now):
                            (ignored if failed_as == SeriesStatus.IGNORED else rejected).append(uid)
                            log.info("series %s %s: %s", uid, failed_as, why)
                    elif selection.selected is not None and selection.selected.series_instance_uid == uid:
                        self._queue(session, row, count, now, enqueued, waiting, plane=result.plane)
                    else:
                        status, reason = _not_chosen(uid, result, selection, checked)
                        if decide_series(session, row, status, instance_count=count, reason=reason, now=now):
                            (ignored if status == SeriesStatus.IGNORED else not_selected).append(uid)
                            log.info("series %s %s: %s", uid, status, reason)
                except SeriesStateError as exc:  # refused before anything was written: the others go on
                    log.error("series %s: %s", uid, exc)
            report = None
            if self.config.results.report_unassessable and rejected and not enqueued and not waiting:
                report = _record_unassessable(session, series_rows[0].study_instance_uid, now)
        return SchedulerTick(tuple(enqueued), tuple(rejected), tuple(not_selected), tuple(waiting), tuple(ignored),
                             (report,) if report is not None else ())

    def _queue(self, session: Session, row: Series, count: int, now: datetime, enqueued: list[int],
               waiting: list[str], *, plane: SlicePlane | None = None) -> None:
        """The selected series gets a job, or its queued job takes the new instances over. A sagittal or coronal
        series is queued with the reason it is analysed (no usable axial series)."""
        uid = row.series_instance_uid
        job_id = jobs.enqueue_in_session(session, uid, max_attempts=self.config.worker.max_attempts, now=now)
        if job_id is not None:
            enqueued.append(job_id)
            log.info("series %s: job %s queued (%d instances)", uid, job_id, count)
            if plane in NON_AXIAL_PLANES:
                decide_series(session, row, SeriesStatus.QUEUED, instance_count=count,
                              reason=non_axial_queued_reason(plane), now=now)  # type: ignore[arg-type]
            return
        absorbed = jobs.absorb_into_queued_job(session, uid, now=now)
        if absorbed is None:
            waiting.append(uid)  # its job is running: a new one follows when it ends
        else:
            log.info("series %s: %d instances, taken over by queued job %s", uid, count, absorbed)

    def _check(self, series_uid: str, instance_count: int) -> _Checked:
        key = (series_uid, instance_count)
        if key not in self._cache:
            self._cache[key] = self._check_uncached(series_uid)
            if len(self._cache) > 1000:
                self._cache.pop(next(iter(self._cache)))
        return self._cache[key]

    def _check_uncached(self, series_uid: str) -> _Checked:
        paths = [Path(p) for p in stored_instance_paths(self.engine, series_uid)]
        try:
            headers = read_headers(paths)
        except SeriesRejectedError as exc:
            return _Checked(False, exc.reason, None)
        left_alone = not_screened_reason(headers)
        if left_alone is not None:
            return _Checked(False, left_alone, None, failed_as=SeriesStatus.IGNORED)
        try:
            check = check_series(headers, min_slices=self.config.series.min_slices,
                                 max_slice_thickness_mm=self.config.series.max_slice_thickness_mm)
        except Exception as exc:  # a header the checks did not foresee: record it, do not fail every tick
            log.exception("series %s: the series check raised", series_uid)
            return _Checked(False, f"series check failed: {type(exc).__name__}: {exc}", None)
        number = str(headers[0].get("SeriesNumber", "") or "")
        if not check.ok:
            return _Checked(False, check.reason or "series check failed", None, plane=check.plane,
                            series_number=number)
        return _Checked(True, None, candidate_from_header(headers[check.order[0]], check.slice_count,
                                                     check.slice_thickness_mm, plane=check.plane or SlicePlane.AXIAL),
                        plane=check.plane, series_number=number)


def _reformat_of_selected_axial(result: _Checked, selection: Selection, checked: dict[str, _Checked]) -> str | None:
    """The reason a sagittal or coronal series is left alone because an axial series of the study is selected in
    the same decision; None when that is not the case."""
    if result.plane not in NON_AXIAL_PLANES or selection.selected is None:
        return None
    if selection.selected.plane != SlicePlane.AXIAL:
        return None
    axial_uid = selection.selected.series_instance_uid
    axial = checked.get(axial_uid)
    name = axial.series_number if axial is not None and axial.series_number else axial_uid
    return reformat_reason(result.plane, name)  # type: ignore[arg-type]  # plane is sagittal or coronal here


def _failure(result: _Checked, selection: Selection,
             checked: dict[str, _Checked]) -> tuple[SeriesStatus, str | None]:
    """How a series that is not ok is recorded: a sagittal or coronal series is ignored as a reformat when an axial
    series of the study is selected in the same decision, and rejected with its reason otherwise."""
    reformat = _reformat_of_selected_axial(result, selection, checked)
    if reformat is not None:
        return SeriesStatus.IGNORED, reformat
    return result.failed_as, result.reason


def _not_chosen(uid: str, result: _Checked, selection: Selection,
                checked: dict[str, _Checked]) -> tuple[SeriesStatus, str]:
    """How a series that passed but was not selected is recorded: a sagittal or coronal series next to a selected
    axial series is ignored as its reformat; any other is not selected, with the reason another was preferred."""
    reformat = _reformat_of_selected_axial(result, selection, checked)
    if reformat is not None:
        return SeriesStatus.IGNORED, reformat
    return SeriesStatus.NOT_SELECTED, next((why for c, why in selection.not_selected if c.series_instance_uid == uid),
                                           "another series of the study was preferred")


def _record_unassessable(session: Session, study_uid: str, now: datetime) -> int | None:
    """A pending indeterminate report when no series of the study is usable: every series with stored CT instances
    is rejected or ignored, and at least one is rejected (so the study is chest/abdomen CT or names no body part).
    It names the rejected series, then the ignored ones. None when a series is usable, still undecided, or the same
    rejected series were reported before."""
    rows = session.scalars(select(Series).where(Series.study_instance_uid == study_uid, Series.instance_count > 0)
                           .order_by(Series.first_received_at, Series.id)).all()
    rejected = [r for r in rows if r.status == SeriesStatus.REJECTED]
    ignored = [r for r in rows if r.status == SeriesStatus.IGNORED]
    if not rejected or len(rejected) + len(ignored) != len(rows):
        return None
    reasons = [NamedReason(r.series_instance_uid, r.reason or "series check failed") for r in rejected]
    reasons += [NamedReason(r.series_instance_uid, f"not screened: {r.reason or 'left alone'}") for r in ignored]
    report_id = record_indeterminate_report(
        session, scope=SCOPE_STUDY, dedup_key=study_report_key(study_uid, [r.series_instance_uid for r in rejected]),
        study_instance_uid=study_uid, reasons=reasons, now=now)
    if report_id is not None:
        log.info("study %s: no usable series (%d rejected); indeterminate report %s", study_uid, len(rejected),
                 report_id)
    return report_id


def run_scheduler(config: Config, engine: sqlalchemy.Engine, stop_event: threading.Event) -> None:
    Scheduler(config, engine).run(stop_event)
