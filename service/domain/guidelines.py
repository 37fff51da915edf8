"""Diagnostic categories of volumetric trabecular BMD (mg/cm3, QCT scale): the guideline thresholds, one copy.

Guideline thresholds are a clinical definition, not physics. The key image legend, the configuration defaults,
the reports and the phantom's truth categories all read them from here; a site may configure other cut-offs
(the `[bmd]` section), which then travel with each result."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType


class Category(StrEnum):
    """Diagnostic category of a patient; the values are the strings written to result.json and the SR."""

    NORMAL = "normal"
    OSTEOPENIA = "osteopenia"
    OSTEOPOROSIS = "osteoporosis"
    INDETERMINATE = "indeterminate"


# ACR Practice Parameter for QCT (2018), ISCD official positions, and the Chinese 2018 QCT guideline
# ("Chinese expert consensus on the diagnosis of osteoporosis by QCT", 2018): mean trabecular vBMD of L1-L2
# (or two evaluable lumbar levels) < 80 mg/cm3 osteoporosis, 80-120 mg/cm3 osteopenia (low bone mass),
# > 120 mg/cm3 normal.
OSTEOPOROSIS_BELOW_MG_CM3 = 80.0  # ACR 2018 / ISCD; Chinese 2018 QCT guideline
NORMAL_ABOVE_MG_CM3 = 120.0  # ACR 2018 / ISCD; Chinese 2018 QCT guideline
DEFAULT_THRESHOLD_SET = "ACR2018-ISCD"
DEFAULT_THRESHOLD_VERSION = "v1"


@dataclass(frozen=True)
class Thresholds:
    """A named, versioned pair of cut-offs. ``value < osteoporosis_below`` -> osteoporosis;
    ``value > normal_above`` -> normal; otherwise osteopenia (both cut-offs belong to osteopenia)."""

    name: str = DEFAULT_THRESHOLD_SET
    version: str = DEFAULT_THRESHOLD_VERSION
    osteoporosis_below_mg_cm3: float = OSTEOPOROSIS_BELOW_MG_CM3
    normal_above_mg_cm3: float = NORMAL_ABOVE_MG_CM3

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("name must not be empty")
        if not (self.osteoporosis_below_mg_cm3 < self.normal_above_mg_cm3):
            raise ValueError(
                f"osteoporosis_below_mg_cm3 ({self.osteoporosis_below_mg_cm3}) must be below "
                f"normal_above_mg_cm3 ({self.normal_above_mg_cm3})"
            )

    @property
    def versioned_name(self) -> str:
        """Name and version, e.g. 'ACR2018-ISCD-v1' (a name that already ends in its version is kept)."""
        return self.name if self.name.endswith(f"-{self.version}") else f"{self.name}-{self.version}"

    @property
    def identifier(self) -> str:
        """The string recorded in results, e.g. 'ACR2018-ISCD-v1 (<80 / 80-120 / >120 mg/cm3)'."""
        return (
            f"{self.versioned_name} (<{self.osteoporosis_below_mg_cm3:g} / "
            f"{self.osteoporosis_below_mg_cm3:g}-{self.normal_above_mg_cm3:g} / >{self.normal_above_mg_cm3:g} mg/cm3)"
        )


THRESHOLD_SETS: Mapping[str, Thresholds] = MappingProxyType({
    t.versioned_name: t
    for t in (
        Thresholds(),  # ACR 2018 / ISCD
        Thresholds(name="CN2018-QCT", version="v1"),  # Chinese 2018 QCT guideline: the same cut-offs
    )
})
"""The published threshold sets, by versioned name."""

_IDENTIFIER = re.compile(r"(?P<versioned>.+) \(<(?P<low>[^ /]+) / (?P=low)-(?P<high>[^ /]+) / >(?P=high) mg/cm3\)")


def thresholds_from_record(threshold_set: str) -> Thresholds | None:
    """The thresholds a recorded ``threshold_set`` names: a ``Thresholds.identifier`` (cut-offs included, as
    results record it), or the plain name of a set in ``THRESHOLD_SETS``. None when it names neither."""
    match = _IDENTIFIER.fullmatch(threshold_set.strip())
    if match is None:
        known = [t for t in THRESHOLD_SETS.values() if threshold_set.strip() in (t.name, t.versioned_name)]
        return known[0] if known else None
    name, dash, version = match["versioned"].rpartition("-")
    if not dash:  # written by hand without a version
        name, version = version, DEFAULT_THRESHOLD_VERSION
    try:
        return Thresholds(name=name, version=version, osteoporosis_below_mg_cm3=float(match["low"]),
                          normal_above_mg_cm3=float(match["high"]))
    except ValueError:
        return None


def categorize(bmd_mg_cm3: float | None, thresholds: Thresholds | None = None) -> Category:
    """Category for a BMD; INDETERMINATE when no value could be computed (None or not finite)."""
    t = thresholds or Thresholds()
    if bmd_mg_cm3 is None or bmd_mg_cm3 != bmd_mg_cm3 or bmd_mg_cm3 in (float("inf"), float("-inf")):
        return Category.INDETERMINATE
    if bmd_mg_cm3 < t.osteoporosis_below_mg_cm3:
        return Category.OSTEOPOROSIS
    if bmd_mg_cm3 > t.normal_above_mg_cm3:
        return Category.NORMAL
    return Category.OSTEOPENIA
