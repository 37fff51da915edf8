"""Status values and the allowed transitions of jobs, exports and series.

Only queue/jobs.py writes job status and only queue/exports.py writes export status; both check
``can_transition`` and guard every UPDATE with the expected current status.
"""

from __future__ import annotations

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
    """No stored CT instance (e.g. a non-CT series)."""


class InstanceStatus(StrEnum):
    STORED = "stored"
    IGNORED = "ignored"
    REJECTED = "rejected"
