"""The seam between the outbox and the wire: what a transport must do to deliver one result object.

The exporter (export/exporter.py) drains the outbox (export/outbox.py) and hands each peer's batch to the
``Transport`` that serves that peer. A transport opens one ``DeliverySession`` per batch, delivers files one by one
and classifies every answer into a ``DeliveryOutcome``; the exporter turns outcomes into outbox transitions
(sent / retry / dead letter). The outbox knows nothing of DICOM networking, so another transport (FHIR, HL7 ORU,
DICOMweb STOW-RS) is a new module in this package plus one entry in ``exporter.TRANSPORTS``, with no change to
the outbox or its states.

DICOM C-STORE (export/cstore_scu.py) is the only transport today.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol


class OutcomeKind(enum.StrEnum):
    SUCCESS = "success"
    WARNING = "warning"
    PERMANENT = "permanent"
    """Will fail the same way again: dead letter, no retry."""
    TRANSIENT = "transient"
    """Transient or unknown (abort, timeout, refused, no status, out of resources): retry, same bytes."""


@dataclass(frozen=True)
class DeliveryOutcome:
    """A transport's classified answer for one object; ``status_code`` is the transport's own (DIMSE, HTTP...)."""

    kind: OutcomeKind
    status_code: int | None
    detail: str

    @property
    def delivered(self) -> bool:
        return self.kind in (OutcomeKind.SUCCESS, OutcomeKind.WARNING)


class DeliverySession(Protocol):
    """One connection to a peer for a known batch of files; a context manager."""

    def __enter__(self) -> DeliverySession: ...

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...

    def store(self, path: Path) -> DeliveryOutcome:
        """Deliver one file; never raises for the peer's answers (they are outcomes)."""
        ...

    def sop_instance_uid(self, path: Path) -> str | None:
        """The SOP Instance UID of a file in the batch (checked against the outbox row), None when unknown."""
        ...


class Transport(Protocol):
    """Opens delivery sessions to peers of one kind."""

    def open_session(self, peer: Any, config: Any, paths: Sequence[Path]) -> DeliverySession: ...
