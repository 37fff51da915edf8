"""A measured figure: repeated values with min / median / max, plus the small helpers to build them."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Figure:
    """One quantity measured ``len(values)`` times (repeats), in ``unit``."""

    key: str
    label: str
    unit: str
    values: tuple[float, ...]
    note: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.key:
            raise ValueError("key must not be empty")
        if not self.values:
            raise ValueError(f"values of figure {self.key!r} must hold at least one measurement")
        object.__setattr__(self, "values", tuple(float(v) for v in self.values))

    @property
    def min(self) -> float:
        return min(self.values)

    @property
    def median(self) -> float:
        return float(statistics.median(self.values))

    @property
    def max(self) -> float:
        return max(self.values)

    @property
    def repeats(self) -> int:
        return len(self.values)

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "label": self.label, "unit": self.unit, "values": list(self.values),
                "min": self.min, "median": self.median, "max": self.max, "repeats": self.repeats,
                "note": self.note, **({"extra": dict(self.extra)} if self.extra else {})}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Figure:
        return cls(key=str(data["key"]), label=str(data["label"]), unit=str(data["unit"]),
                   values=tuple(data["values"]), note=str(data.get("note", "")), extra=dict(data.get("extra", {})))


def ratio_values(numerator: Iterable[float], denominator: Iterable[float]) -> tuple[float, ...]:
    """Pairwise ratios of two repeat series measured interleaved (repeat i of each in the same round)."""
    num, den = list(numerator), list(denominator)
    if len(num) != len(den):
        raise ValueError(f"ratio needs as many numerator as denominator values, got {len(num)} and {len(den)}")
    if any(d <= 0 for d in den):
        raise ValueError("ratio denominator values must be > 0")
    return tuple(n / d for n, d in zip(num, den, strict=True))


def fmt(value: float) -> str:
    """Three significant figures, no exponent for the usual ranges."""
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"
