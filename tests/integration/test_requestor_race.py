"""The requestor's reactor must not take a C-STORE response meant for ``send_c_store`` (service/export/requestor.py).

The race needs the association thread to be held up right after its ``_reactor_checkpoint.wait()`` returned, and
the sender to be slow to pick up its response: both are forced here with delays (``HeldUpEvent``, a slow blocking
``get_msg``), so that the interleaving a loaded machine produces now and then (a fresh-clone CI run lost the demo's
image 31 of 163 that way) happens on every C-STORE. A real storage SCP (pynetdicom's, in this process) answers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from service.export.requestor import REQUESTOR_HANDLERS, PausingAssociation
from tests.support.net import free_port

pytestmark = pytest.mark.integration

HOLD_S = 0.1
"""How long the association thread is held up after its checkpoint wait returns (it is then still 'paused')."""
PICKUP_DELAY_S = 2 * HOLD_S
"""How long ``send_c_store`` takes to look for its response (the response is there long before)."""


class HeldUpEvent(threading.Event):
    """A set event whose ``wait`` returns at once on the association thread and then holds that thread up."""

    def __init__(self, reactor: threading.Thread) -> None:
        super().__init__()
        self.reactor = reactor
        self.set()

    def wait(self, timeout: float | None = None) -> bool:
        result = super().wait(timeout)
        if threading.current_thread() is self.reactor:
            time.sleep(HOLD_S)
        return result


@pytest.fixture
def storage_scp() -> Iterator[int]:
    ae = AE(ae_title="PACS")
    ae.add_supported_context(CTImageStorage)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda e: 0x0000)])
    try:
        yield port
    finally:
        server.shutdown()


def _ct_dataset(n: int) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.777.{n}"
    ds.PatientID = "RACE"
    return ds


def _statuses_under_the_race(port: int, handlers: list[tuple[Any, Any]]) -> tuple[list[int | None], type]:
    ae = AE(ae_title="BMDNODE")
    ae.add_requested_context(CTImageStorage)
    ae.dimse_timeout = 2
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS", evt_handlers=handlers)
    assert assoc.is_established
    kind = type(assoc)
    assoc._reactor_checkpoint = HeldUpEvent(assoc)
    get_msg = assoc.dimse.get_msg

    def slow_pickup(block: bool = False) -> Any:
        if block:
            time.sleep(PICKUP_DELAY_S)
        return get_msg(block=block)

    assoc.dimse.get_msg = slow_pickup  # type: ignore[method-assign]
    statuses: list[int | None] = []
    try:
        for n in range(3):
            if not assoc.is_established:
                statuses.append(None)
                continue
            status = assoc.send_c_store(_ct_dataset(n))
            statuses.append(int(status.Status) if status and "Status" in status else None)
            time.sleep(0.01)
    finally:
        if assoc.is_established:
            assoc.release()
    return statuses, kind


def test_every_response_reaches_the_sender(storage_scp: int) -> None:
    statuses, kind = _statuses_under_the_race(storage_scp, REQUESTOR_HANDLERS)
    assert kind is PausingAssociation
    assert statuses == [0x0000, 0x0000, 0x0000]


def test_plain_pynetdicom_loses_the_response_under_the_same_delays(storage_scp: int) -> None:
    """The race is real in the library this node uses (3.0.x): the same delays without the handlers lose a response
    (the sender times out and aborts). If pynetdicom fixes it, this test fails and ``requestor.py`` can go."""
    statuses, _ = _statuses_under_the_race(storage_scp, [])
    assert None in statuses
