"""Typed values that cross the pipeline boundary (queue/worker <-> pipeline <-> steps)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from service.domain.results import ScreeningResult
from service.domain.trend import TrendPoint

RESULT_KINDS = ("sr", "seg", "key_image")


class PipelineRejectedError(Exception):
    """The input cannot be screened (series rejected, nothing to measure): a permanent failure, not retried."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class PreviousResult:
    """The SR of the series' earlier succeeded job, which a re-run's results replace."""

    job_id: int
    sr_path: Path
    sr_sop_instance_uid: str
    sr_sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str


@dataclass(frozen=True)
class JobInput:
    job_id: int
    study_instance_uid: str
    series_instance_uid: str
    paths: tuple[Path, ...]
    """The stored instances of the series (any order)."""
    previous: PreviousResult | None = None
    prior: TrendPoint | None = None
    """The patient's prior study on this node (an earlier Study Date), for the BMD trend; None: no prior."""

    def __post_init__(self) -> None:
        if not self.paths:
            raise ValueError("paths must name at least one instance")


@dataclass(frozen=True)
class EncodedObject:
    """One result object as the bytes of a DICOM Part 10 file."""

    kind: str
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    data: bytes

    def __post_init__(self) -> None:
        if self.kind not in RESULT_KINDS:
            raise ValueError(f"kind must be one of {RESULT_KINDS}, got {self.kind!r}")
        if not self.sop_instance_uid or not self.sop_class_uid:
            raise ValueError("sop_instance_uid and sop_class_uid must not be empty")
        if len(self.data) < 132 or self.data[128:132] != b"DICM":
            raise ValueError(f"data of the {self.kind} object is not a DICOM Part 10 file")


@dataclass(frozen=True, eq=False)
class PipelineOutput:
    result: ScreeningResult
    objects: tuple[EncodedObject, ...]


class ScreeningPipeline(Protocol):
    """What the worker runs for one job. ``run`` raises PipelineRejectedError for unusable input; any other
    exception is treated as transient (retried with backoff)."""

    def run(self, job: JobInput) -> PipelineOutput: ...
