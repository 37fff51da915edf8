"""The outbox talks to a Transport, not to DICOM: a second kind of transport plugs in without touching the outbox.

The in-memory transport here stands in for a future FHIR/HL7 transport (none exists yet); the outbox, the exporter
and the SQLite database are the real ones.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace, TracebackType
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import select, update

from service.config import Config
from service.db.engine import read_session, write_session
from service.db.tables import Export, ResultObject
from service.domain.status import ExportStatus
from service.export import exporter
from service.export.cstore_scu import DicomStoreTransport
from service.export.transport import DeliveryOutcome, OutcomeKind, Transport
from service.queue import jobs
from tests.node_support import _success_for_tests, enqueue_many


@dataclass
class _RecordingSession:
    answers: dict[str, OutcomeKind]
    delivered: list[str] = field(default_factory=list)

    def __enter__(self) -> _RecordingSession:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        return None

    def store(self, path: Path) -> DeliveryOutcome:
        kind = self.answers.get(path.name, OutcomeKind.SUCCESS)
        if kind == OutcomeKind.SUCCESS:
            self.delivered.append(path.name)
        return DeliveryOutcome(kind, 200 if kind == OutcomeKind.SUCCESS else 503, f"recorded {kind}")

    def sop_instance_uid(self, path: Path) -> str | None:
        return None


@dataclass
class _RecordingTransport:
    answers: dict[str, OutcomeKind] = field(default_factory=dict)
    sessions: list[_RecordingSession] = field(default_factory=list)

    def open_session(self, peer: Any, config: Any, paths: Sequence[Path]) -> _RecordingSession:
        session = _RecordingSession(self.answers)
        self.sessions.append(session)
        return session


@pytest.fixture
def fake_kind(monkeypatch: pytest.MonkeyPatch) -> Iterator[_RecordingTransport]:
    transport = _RecordingTransport()
    monkeypatch.setitem(exporter.TRANSPORTS, "recording", transport)
    yield transport


def _exports_with_files(engine: sqlalchemy.Engine, tmp_path: Path, n_objects: int) -> list[str]:
    (job_id,) = enqueue_many(engine, 1)
    jobs.claim_next(engine, worker_id="w", lease_seconds=60)
    assert jobs.finish(engine, job_id, worker_id="w", success=_success_for_tests(job_id, n_objects),
                       peer_names=["hub"])
    names = []
    with write_session(engine) as s:
        for obj in s.scalars(select(ResultObject)).all():
            path = tmp_path / f"{obj.sop_instance_uid}.dcm"
            path.write_bytes(b"result object bytes")
            s.execute(update(ResultObject).where(ResultObject.id == obj.id).values(path=str(path)))
            names.append(path.name)
    return names


def _statuses(engine: sqlalchemy.Engine) -> list[str]:
    with read_session(engine) as s:
        return sorted(s.scalars(select(Export.status)).all())


def _config(transport_kind: str) -> Any:
    return SimpleNamespace(exporter=Config().exporter, peers=[SimpleNamespace(name="hub", transport=transport_kind)])


def test_dicom_is_the_default_transport() -> None:
    assert isinstance(exporter.transport_for(SimpleNamespace(name="pacs")), DicomStoreTransport)
    transport: Transport = exporter.TRANSPORTS["dicom"]
    assert isinstance(transport, DicomStoreTransport)


def test_another_transport_drains_the_same_outbox(sqlite_engine: sqlalchemy.Engine, tmp_path: Path,
                                                  fake_kind: _RecordingTransport) -> None:
    names = _exports_with_files(sqlite_engine, tmp_path, 2)
    fake_kind.answers[names[1]] = OutcomeKind.TRANSIENT
    counts = exporter.export_once(_config("recording"), sqlite_engine, exporter_id="e")
    assert len(fake_kind.sessions) == 1  # one session per peer per batch
    assert fake_kind.sessions[0].delivered == [names[0]]
    assert counts == {ExportStatus.SENT.value: 1, ExportStatus.PENDING.value: 1}
    assert _statuses(sqlite_engine) == sorted([ExportStatus.SENT.value, ExportStatus.PENDING.value])


def test_peer_of_an_unknown_transport_kind_is_a_dead_letter(sqlite_engine: sqlalchemy.Engine,
                                                            tmp_path: Path) -> None:
    _exports_with_files(sqlite_engine, tmp_path, 1)
    counts = exporter.export_once(_config("carrier-pigeon"), sqlite_engine, exporter_id="e")
    assert counts == {ExportStatus.DEAD.value: 1}
    with read_session(sqlite_engine) as s:
        assert "no transport" in (s.scalars(select(Export.last_error)).one() or "")
