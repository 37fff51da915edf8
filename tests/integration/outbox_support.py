"""Test-side helpers for the exporter: outbox rows for result files, and a PACS whose answers a test scripts."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy import select

from service.db.engine import read_session, write_session
from service.db.tables import Export, Job, ResultObject, Series, utcnow
from service.export.outbox import create_exports


def enqueue_result_exports(engine: sqlalchemy.Engine, paths: Sequence[Path], peer_names: Sequence[str]) -> list[int]:
    """Record ``paths`` as the result objects of one succeeded job and queue one export per (object, peer).

    Stands in for the worker (which does this in the transaction that finishes a job); returns the export ids.
    """
    headers = [dcmread(p, stop_before_pixels=True) for p in paths]
    study = str(headers[0].StudyInstanceUID)
    now = utcnow()
    export_ids: list[int] = []
    with write_session(engine) as session:
        series = Series(series_instance_uid=f"{study}.99", study_instance_uid=study, modality="CT",
                        first_received_at=now, last_received_at=now, instance_count=1, status="queued",
                        checked_instance_count=1)
        session.add(series)
        session.flush()
        job = Job(series_id=series.id, series_instance_uid=series.series_instance_uid, study_instance_uid=study,
                  status="succeeded", attempts=1, max_attempts=3, instance_count=1, run_after=now, created_at=now,
                  finished_at=now)
        session.add(job)
        session.flush()
        for path, ds in zip(paths, headers, strict=True):
            data = Path(path).read_bytes()
            obj = ResultObject(job_id=job.id, kind="key_image", sop_class_uid=str(ds.SOPClassUID),
                               sop_instance_uid=str(ds.SOPInstanceUID), study_instance_uid=study,
                               series_instance_uid=str(ds.SeriesInstanceUID), path=str(path), size_bytes=len(data),
                               sha256=hashlib.sha256(data).hexdigest(), created_at=now)
            session.add(obj)
            session.flush()
            rows = create_exports(session, obj.id, peer_names, now=now)
            session.flush()
            export_ids.extend(r.id for r in rows)
    return export_ids


def export_rows(engine: sqlalchemy.Engine) -> list[Export]:
    with read_session(engine) as session:
        return list(session.scalars(select(Export).order_by(Export.id)))


@dataclass
class ScriptedPacs:
    """A pynetdicom Storage SCP whose C-STORE answers follow a script (then 0x0000 for ever).

    ``statuses``: answers in order, ints or the string "abort" (abort the association instead of answering).
    ``require_calling_aet``: when set, associations from other AE titles are rejected (rejected-permanent).
    ``sop_classes``: when set, only these Storage SOP classes are supported; ``transfer_syntaxes`` likewise.
    """

    port: int
    ae_title: str = "PACS"
    statuses: list[int | str] = field(default_factory=list)
    require_calling_aet: Sequence[str] = ()
    sop_classes: Sequence[str] | None = None
    transfer_syntaxes: Sequence[str] = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
    reject_transient: bool = False
    """Reject every association with rejected-transient (e.g. a PACS at its association limit)."""
    requests: list[str] = field(default_factory=list)
    """SOP Instance UID of every C-STORE request seen (including refused ones)."""
    stored: dict[str, bytes] = field(default_factory=dict)
    """SOP Instance UID -> dataset bytes of every object answered with success."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadedAssociationServer | None = None

    def _handle_store(self, event: Any) -> int:
        sop = str(event.request.AffectedSOPInstanceUID)
        with self.lock:
            self.requests.append(sop)
            answer: int | str = self.statuses.pop(0) if self.statuses else 0x0000
        if answer == "abort":
            event.assoc.abort()
            return 0x0000  # never delivered: the association is gone
        if answer == 0x0000:
            with self.lock:
                self.stored[sop] = event.encoded_dataset(include_meta=False)
        return int(answer)

    def _handle_requested(self, event: Any) -> None:
        if self.reject_transient:
            # 0x02 rejected-transient, 0x03 service-provider (presentation), 0x02 local limit exceeded
            event.assoc.acse.send_reject(0x02, 0x03, 0x02)
            event.assoc.kill()

    def start(self) -> ScriptedPacs:
        ae = AE(ae_title=self.ae_title)
        ae.maximum_pdu_size = 0
        if self.require_calling_aet:
            ae.require_calling_aet = list(self.require_calling_aet)
        for cx in AllStoragePresentationContexts:
            if self.sop_classes is None or cx.abstract_syntax in self.sop_classes:
                ae.add_supported_context(cx.abstract_syntax, list(self.transfer_syntaxes))
        self._server = ae.start_server(("127.0.0.1", self.port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._handle_store),
                                                     (evt.EVT_REQUESTED, self._handle_requested)])
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def __enter__(self) -> ScriptedPacs:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
