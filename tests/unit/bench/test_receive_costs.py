"""bench.receive_costs runs, and each receive-path change it times is cheaper than what it replaced."""

from __future__ import annotations

from bench.receive_costs import measure


def test_each_change_is_cheaper_than_what_it_replaced() -> None:
    rows = measure(repeats=50)
    assert [label.split(" ")[0] for label, _, _ in rows] == ["File", "header", "copy"]
    for label, before_ms, after_ms in rows:
        assert 0 < after_ms < before_ms, label
