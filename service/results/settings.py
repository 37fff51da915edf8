"""The [results] section: what the node sends back to PACS."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ResultsSettings:
    report_unassessable: bool = True
    """When no series of a chest or abdomen CT study can be used, or no vertebra is found in the selected one, send
    an "indeterminate" SR and key image that name the reasons (instead of sending nothing)."""
    patient_identity_retention_days: float = 1095.0
    """How long the database keeps a job's Patient ID and Issuer of Patient ID (recorded so that a later study of
    the same patient shows the BMD trend since this one); older identifiers are erased by a periodic cleanup, after
    which that study no longer serves as a prior. 0: identifiers are never stored (no trend)."""

    def __post_init__(self) -> None:
        if not self.patient_identity_retention_days >= 0:
            raise ValueError(f"results.patient_identity_retention_days: must be >= 0, got "
                             f"{self.patient_identity_retention_days}")
