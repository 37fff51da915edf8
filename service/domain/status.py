"""Status values and the allowed transitions of jobs, exports and series.

One writer per status:
* job status: only service/queue/jobs.py (checks ``can_transition``; guarded UPDATEs ``WHERE status = expected``);
* export status: only service/export/outbox.py (guarded UPDATEs, or changes of rows it holds locked by a claim);
* series status: only the series-status section of service/db/queries.py (checks ``can_series_transition``;
  guarded UPDATEs ``WHERE status = expected``).

Nothing outside these enums spells a status value: SQL text is derived from them (``status_in_sql``).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    """The pipeline refused the input for good (e.g. series rejected); not retried automatically."""
    DEAD = "dead"
    """Retries exhausted (errors or crashes); needs a person (`bmd-node jobs retry`)."""


ACTIVE_JOB_STATUSES: frozenset[JobStatus] = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})
TERMINAL_JOB_STATUSES: frozenset[JobStatus] = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.DEAD})

JOB_TRANSITIONS: dict[JobStatus | None, frozenset[JobStatus]] = {
    None: frozenset({JobStatus.QUEUED}),  # enqueue
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING}),  # claim
    JobStatus.RUNNING: frozenset(
        {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.QUEUED, JobStatus.DEAD}  # finish, fail, retry/reap, dead
    ),
    JobStatus.FAILED: frozenset({JobStatus.QUEUED}),  # manual retry
    JobStatus.DEAD: frozenset({JobStatus.QUEUED}),  # manual retry
    JobStatus.SUCCEEDED: frozenset(),
}


def can_transition(from_status: JobStatus | None, to_status: JobStatus) -> bool:
    """May a job go from ``from_status`` (None: not yet created) to ``to_status``?"""
    return to_status in JOB_TRANSITIONS[from_status]


class ExportStatus(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    DEAD = "dead"
    """Dead letter: permanent refusal, or retries/age exhausted."""
    CANCELLED = "cancelled"
    """Not sent because a newer job's results replaced the object before it went out."""


EXPORT_TRANSITIONS: dict[ExportStatus | None, frozenset[ExportStatus]] = {
    None: frozenset({ExportStatus.PENDING}),
    ExportStatus.PENDING: frozenset({ExportStatus.SENDING, ExportStatus.CANCELLED}),
    ExportStatus.SENDING: frozenset(
        {ExportStatus.SENT, ExportStatus.PENDING, ExportStatus.DEAD, ExportStatus.SENDING}  # SENDING: re-claim
    ),
    ExportStatus.DEAD: frozenset({ExportStatus.PENDING}),  # manual retry
    ExportStatus.SENT: frozenset(),
    ExportStatus.CANCELLED: frozenset(),
}


class SeriesStatus(StrEnum):
    RECEIVING = "receiving"
    """Instances arrived since the last decision; waits for series_stable_seconds of quiet."""
    REJECTED = "rejected"
    """Failed the series checks; ``reason`` says why."""
    NOT_SELECTED = "not_selected"
    """Passed the checks but another series of the study was preferred; ``reason`` says which."""
    QUEUED = "queued"
    """A job was queued for it (see jobs)."""
    IGNORED = "ignored"
    """Left alone, ``reason`` says why: no stored CT instance (dose report, secondary capture, the node's own
    result objects coming back: recorded on arrival), or a stored CT series the scheduler does not screen
    (a localizer, a body part outside chest/abdomen/spine, a sagittal/coronal reformat of a study whose axial
    series is screened)."""


SERIES_TRANSITIONS: dict[SeriesStatus | None, frozenset[SeriesStatus]] = {
    None: frozenset({SeriesStatus.RECEIVING, SeriesStatus.IGNORED}),  # first instance: stored / not stored
    SeriesStatus.RECEIVING: frozenset(
        {SeriesStatus.RECEIVING, SeriesStatus.REJECTED, SeriesStatus.NOT_SELECTED, SeriesStatus.QUEUED,  # decided
         SeriesStatus.IGNORED}  # decided: not screened (localizer, body part, reformat)
    ),
    SeriesStatus.REJECTED: frozenset({SeriesStatus.RECEIVING}),  # more instances arrived
    SeriesStatus.NOT_SELECTED: frozenset({SeriesStatus.RECEIVING}),
    SeriesStatus.QUEUED: frozenset(
        {SeriesStatus.RECEIVING, SeriesStatus.QUEUED}  # QUEUED: a new job for the same instances (re-run)
    ),
    SeriesStatus.IGNORED: frozenset({SeriesStatus.RECEIVING}),  # a CT instance arrived after non-CT ones
}


def can_series_transition(from_status: SeriesStatus | None, to_status: SeriesStatus) -> bool:
    """May a series go from ``from_status`` (None: not yet recorded) to ``to_status``?"""
    return to_status in SERIES_TRANSITIONS[from_status]


def series_sources(to_status: SeriesStatus) -> frozenset[SeriesStatus]:
    """The recorded statuses from which a series may go to ``to_status``."""
    return frozenset(s for s, targets in SERIES_TRANSITIONS.items() if s is not None and to_status in targets)


class InstanceStatus(StrEnum):
    """One received SOP instance; set once when it is recorded (a stored copy may replace a refused one)."""

    STORED = "stored"
    IGNORED = "ignored"
    REJECTED = "rejected"


def status_in_sql(statuses: Iterable[StrEnum], *, column: str = "status") -> str:
    """``status IN ('a', 'b')`` for index predicates and CHECK text, in the enum's declaration order."""
    chosen = list(statuses)
    enum_types = {type(s) for s in chosen}
    if len(enum_types) != 1:
        raise ValueError(f"statuses must be non-empty members of one enum, got {chosen}")
    (enum_type,) = enum_types
    values = ", ".join(f"'{member.value}'" for member in enum_type if member in chosen)
    return f"{column} IN ({values})"
