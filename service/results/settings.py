"""The [results] section: what the node sends back to PACS."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ResultsSettings:
    report_unassessable: bool = True
    """When no series of a chest or abdomen CT study can be used, or no vertebra is found in the selected one, send
    an "indeterminate" SR and key image that name the reasons (instead of sending nothing)."""
