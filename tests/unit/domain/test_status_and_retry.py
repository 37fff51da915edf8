"""The status transition tables, the SQL text derived from them, and the node's one retry policy."""

from __future__ import annotations

import pytest

from service.domain.retry import RetryPolicy
from service.domain.status import (
    ACTIVE_JOB_STATUSES,
    SERIES_TRANSITIONS,
    ExportStatus,
    JobStatus,
    SeriesStatus,
    can_series_transition,
    series_sources,
    status_in_sql,
)


def test_series_table_covers_every_status() -> None:
    assert set(SERIES_TRANSITIONS) == {None, *SeriesStatus}
    assert all(targets <= set(SeriesStatus) for targets in SERIES_TRANSITIONS.values())


def test_series_transitions_follow_a_series_way() -> None:
    assert can_series_transition(None, SeriesStatus.RECEIVING)
    assert can_series_transition(None, SeriesStatus.IGNORED)
    assert not can_series_transition(None, SeriesStatus.QUEUED)
    for decision in (SeriesStatus.REJECTED, SeriesStatus.NOT_SELECTED, SeriesStatus.QUEUED):
        assert can_series_transition(SeriesStatus.RECEIVING, decision)
    # a decided series is decided again only after more instances arrived (receiving)
    assert not can_series_transition(SeriesStatus.REJECTED, SeriesStatus.QUEUED)
    assert not can_series_transition(SeriesStatus.NOT_SELECTED, SeriesStatus.QUEUED)
    assert not can_series_transition(SeriesStatus.IGNORED, SeriesStatus.QUEUED)
    assert not can_series_transition(SeriesStatus.QUEUED, SeriesStatus.REJECTED)
    # an arriving stored instance makes any series receiving again
    assert series_sources(SeriesStatus.RECEIVING) == frozenset(SeriesStatus)


def test_sql_text_is_derived_from_the_enums() -> None:
    assert status_in_sql(ACTIVE_JOB_STATUSES) == "status IN ('queued', 'running')"
    assert status_in_sql([ExportStatus.SENT], column="x") == "x IN ('sent')"
    with pytest.raises(ValueError, match="statuses"):
        status_in_sql([])
    with pytest.raises(ValueError, match="one enum"):
        status_in_sql([JobStatus.QUEUED, SeriesStatus.QUEUED])


def test_retry_policy_delays_and_giving_up() -> None:
    policy = RetryPolicy(initial_seconds=10, multiplier=3, max_seconds=100, max_attempts=4)
    assert [policy.delay_seconds(n) for n in (0, 1, 2, 3, 4)] == [10, 10, 30, 90, 100]
    assert not policy.gives_up(3, age_seconds=1e9)  # no age limit
    assert policy.gives_up(4)
    aged = RetryPolicy(initial_seconds=1, multiplier=1, max_seconds=1, max_attempts=10, max_age_seconds=60)
    assert not aged.gives_up(1, age_seconds=59.9)
    assert aged.gives_up(1, age_seconds=60)


@pytest.mark.parametrize(("field", "value"), [("initial_seconds", -1), ("multiplier", 0.5), ("max_seconds", -1),
                                              ("max_attempts", 0), ("max_age_seconds", 0)])
def test_retry_policy_validates_itself_naming_the_argument(field: str, value: float) -> None:
    arguments: dict[str, float | None] = {"initial_seconds": 1, "multiplier": 2, "max_seconds": 10,
                                          "max_attempts": 3, "max_age_seconds": None}
    arguments[field] = value
    with pytest.raises(ValueError, match=field):
        RetryPolicy(**arguments)  # type: ignore[arg-type]

