"""The one retry/backoff policy of the node, used by the job queue and by the export outbox.

The wait after the n-th failed attempt (n >= 1) is ``min(max_seconds, initial_seconds * multiplier ** (n - 1))``.
A retry is given up once ``attempts >= max_attempts`` or, when ``max_age_seconds`` is set, once the work is that
old. The queue builds its policy from ``[worker]`` (service.queue.jobs.job_retry_policy) and the outbox from
``[exporter]`` (service.export.outbox.export_retry_policy); this module knows no configuration.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    initial_seconds: float
    """Wait after the first failed attempt."""
    multiplier: float
    """Growth of the wait per further failed attempt (>= 1)."""
    max_seconds: float
    """Cap of the wait."""
    max_attempts: int
    """Attempts (claims) before giving up."""
    max_age_seconds: float | None = None
    """Give up on work older than this (None: no age limit)."""

    def __post_init__(self) -> None:
        if self.initial_seconds < 0:
            raise ValueError(f"initial_seconds must be >= 0, got {self.initial_seconds}")
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be >= 1, got {self.multiplier}")
        if self.max_seconds < 0:
            raise ValueError(f"max_seconds must be >= 0, got {self.max_seconds}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.max_age_seconds is not None and self.max_age_seconds <= 0:
            raise ValueError(f"max_age_seconds must be > 0 or None, got {self.max_age_seconds}")

    def delay_seconds(self, attempts: int) -> float:
        """Wait after the ``attempts``-th failed attempt (1-based)."""
        exponent = max(0, attempts - 1)
        return float(min(self.max_seconds, self.initial_seconds * self.multiplier ** exponent))

    def gives_up(self, attempts: int, age_seconds: float = 0.0) -> bool:
        """True when no further attempt follows ``attempts`` attempts on work ``age_seconds`` old."""
        too_old = self.max_age_seconds is not None and age_seconds >= self.max_age_seconds
        return attempts >= self.max_attempts or too_old
