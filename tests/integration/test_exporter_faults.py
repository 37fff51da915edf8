"""The exporter against failing PACS: down, transient refusals, aborts, permanent refusals.

Receivers are real: DCMTK storescp (down / aborting / working) and a pynetdicom SCP whose answers the test scripts.
Checks: retries with backoff until delivery, exactly one delivered copy per object with the SOP Instance UIDs and
bytes of the stored file, and dead letter without a retry loop for permanent refusals.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy
from pydicom import dcmread
from pydicom.uid import CTImageStorage, generate_uid

from service.config import Config
from service.db.engine import make_engine
from service.db.migrate import upgrade
from service.export.exporter import export_once, run_exporter
from tests.integration.dicom_net_support import (
    dataset_bytes,
    make_secondary_capture,
    node_config,
    storescp_process,
)
from tests.integration.outbox_support import ScriptedPacs, enqueue_result_exports, export_rows
from tests.support.net import free_port

pytestmark = pytest.mark.integration

BACKOFF_S = 0.3


@dataclass
class Outbox:
    config: Config
    engine: sqlalchemy.Engine
    pacs_port: int
    files: list[Path]

    def sop_uids(self) -> list[str]:
        return [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in self.files]

    def statuses(self) -> list[str]:
        return [r.status for r in export_rows(self.engine)]


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    pacs_port = free_port()
    config = node_config(
        tmp_path,
        port=free_port(),
        peers=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port}],
        exporter={
            "poll_seconds": 0.1,
            "batch_size": 10,
            "backoff_initial_seconds": BACKOFF_S,
            "backoff_multiplier": 1.0,
            "connect_timeout_seconds": 3,
            "acse_timeout_seconds": 5,
            "dimse_timeout_seconds": 5,
            "network_timeout_seconds": 5,
        },
    )
    upgrade(config.node.database_url)
    engine = make_engine(config.node.database_url)
    study = generate_uid()
    files = [make_secondary_capture(study, tmp_path / "results", f"r{i}.dcm") for i in range(3)]
    enqueue_result_exports(engine, files, ["pacs"])
    try:
        yield Outbox(config, engine, pacs_port, files)
    finally:
        engine.dispose()


def _received_by_storescp(directory: Path) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for path in sorted(p for p in directory.iterdir() if p.is_file()):
        sop = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        found.setdefault(sop, []).append(path)
    return found


def test_pacs_down_then_back_gets_every_object_once(outbox: Outbox, tmp_path: Path) -> None:
    # PACS down (connection refused): every export goes back to pending with a backoff, nothing is lost.
    t0 = datetime.now(UTC)
    assert export_once(outbox.config, outbox.engine, now=t0) == {"pending": 3}
    rows = export_rows(outbox.engine)
    assert all(r.attempts == 1 and r.last_error for r in rows)
    # not due before the backoff has passed: no hot loop
    assert export_once(outbox.config, outbox.engine, now=t0 + timedelta(seconds=BACKOFF_S / 2)) == {}

    # The exporter loop keeps trying while the PACS is down, and delivers once it is back.
    stop = threading.Event()
    loop = threading.Thread(target=run_exporter, args=(outbox.config, outbox.engine, stop), daemon=True)
    loop.start()
    try:
        time.sleep(3 * BACKOFF_S)
        assert outbox.statuses() == ["pending"] * 3
        received_dir = tmp_path / "pacs"
        with storescp_process(received_dir, port=outbox.pacs_port, ae_title="PACS"):
            deadline = time.monotonic() + 30
            while outbox.statuses() != ["sent"] * 3 and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(3 * BACKOFF_S)  # a few more loop turns: nothing is sent twice
    finally:
        stop.set()
        loop.join(timeout=30)

    rows = export_rows(outbox.engine)
    assert [r.status for r in rows] == ["sent"] * 3
    assert all(r.status_code == 0 and r.attempts >= 2 for r in rows)
    received = _received_by_storescp(received_dir)
    assert sorted(received) == sorted(outbox.sop_uids())
    assert all(len(copies) == 1 for copies in received.values())
    by_uid = dict(zip(outbox.sop_uids(), outbox.files, strict=True))
    for sop, (copy,) in received.items():
        assert dataset_bytes(copy) == dataset_bytes(by_uid[sop]), "PACS must receive the stored bytes"


def test_transient_refusal_a700_is_retried_with_same_bytes(outbox: Outbox) -> None:
    with ScriptedPacs(outbox.pacs_port, statuses=[0xA700, 0xA700, 0xA700]) as pacs:
        assert export_once(outbox.config, outbox.engine) == {"pending": 3}
        time.sleep(BACKOFF_S + 0.1)
        assert export_once(outbox.config, outbox.engine) == {"sent": 3}
        assert export_once(outbox.config, outbox.engine) == {}
    uids = outbox.sop_uids()
    assert sorted(pacs.requests) == sorted(uids * 2)  # each offered twice, with the same SOP Instance UID
    assert sorted(pacs.stored) == sorted(uids)
    for sop, path in zip(uids, outbox.files, strict=True):
        assert pacs.stored[sop] == dataset_bytes(path)
    assert [r.attempts for r in export_rows(outbox.engine)] == [2, 2, 2]


def test_abort_without_response_is_retried(outbox: Outbox, tmp_path: Path) -> None:
    # storescp --abort-after aborts after receiving each C-STORE-RQ: the SCU gets no status (unknown outcome).
    with storescp_process(tmp_path / "aborting", port=outbox.pacs_port, options=["--abort-after"]):
        counts = export_once(outbox.config, outbox.engine)
    assert counts == {"pending": 3}
    assert all("no C-STORE response" in (r.last_error or "") or "association" in (r.last_error or "")
               for r in export_rows(outbox.engine))
    time.sleep(BACKOFF_S + 0.1)
    received_dir = tmp_path / "pacs"
    with storescp_process(received_dir, port=outbox.pacs_port):
        assert export_once(outbox.config, outbox.engine) == {"sent": 3}
    received = _received_by_storescp(received_dir)
    assert sorted(received) == sorted(outbox.sop_uids())
    assert all(len(copies) == 1 for copies in received.values())


def test_script_abort_in_the_middle_of_a_batch(outbox: Outbox) -> None:
    # First object answered, second aborted: the first is sent, the rest retried later on a new association.
    with ScriptedPacs(outbox.pacs_port, statuses=[0x0000, "abort"]) as pacs:
        first = export_once(outbox.config, outbox.engine)
        assert first == {"sent": 1, "pending": 2}
        time.sleep(BACKOFF_S + 0.1)
        assert export_once(outbox.config, outbox.engine) == {"sent": 2}
    assert sorted(pacs.stored) == sorted(outbox.sop_uids())


@pytest.mark.parametrize("status", [0xA900, 0x0122, 0xC000])
def test_permanent_failure_status_goes_to_dead_letter_without_retry(outbox: Outbox, status: int) -> None:
    with ScriptedPacs(outbox.pacs_port, statuses=[status] * 3) as pacs:
        assert export_once(outbox.config, outbox.engine) == {"dead": 3}
        time.sleep(BACKOFF_S + 0.1)
        assert export_once(outbox.config, outbox.engine) == {}
    assert len(pacs.requests) == 3  # offered once each, never again
    rows = export_rows(outbox.engine)
    assert all(r.status == "dead" and f"0x{status:04X}" in (r.last_error or "") for r in rows)


def test_association_rejected_permanently_goes_to_dead_letter(outbox: Outbox) -> None:
    with ScriptedPacs(outbox.pacs_port, require_calling_aet=["SOMEONE"]) as pacs:
        assert export_once(outbox.config, outbox.engine) == {"dead": 3}
        time.sleep(BACKOFF_S + 0.1)
        assert export_once(outbox.config, outbox.engine) == {}
    assert pacs.requests == []
    assert all("rejected" in (r.last_error or "") for r in export_rows(outbox.engine))


def test_sop_class_not_accepted_goes_to_dead_letter(outbox: Outbox) -> None:
    with ScriptedPacs(outbox.pacs_port, sop_classes=[CTImageStorage]) as pacs:
        assert export_once(outbox.config, outbox.engine) == {"dead": 3}
    assert pacs.requests == []
    assert all("not accepted" in (r.last_error or "") for r in export_rows(outbox.engine))


def test_missing_file_and_unknown_peer_are_dead(outbox: Outbox, tmp_path: Path) -> None:
    outbox.files[0].unlink()
    extra = make_secondary_capture(generate_uid(), tmp_path / "more", "x.dcm")
    enqueue_result_exports(outbox.engine, [extra], ["old-pacs"])  # a peer no longer configured
    with ScriptedPacs(outbox.pacs_port) as pacs:
        counts = export_once(outbox.config, outbox.engine)
    assert counts == {"dead": 2, "sent": 2}
    assert len(pacs.stored) == 2
    errors = sorted(r.last_error or "" for r in export_rows(outbox.engine) if r.status == "dead")
    assert any("file missing" in e for e in errors) and any("not configured" in e for e in errors)


def test_association_rejected_transiently_is_retried(outbox: Outbox) -> None:
    with ScriptedPacs(outbox.pacs_port, reject_transient=True) as busy:
        assert export_once(outbox.config, outbox.engine) == {"pending": 3}
    assert busy.requests == []
    assert all("rejected" in (r.last_error or "") for r in export_rows(outbox.engine))
    time.sleep(BACKOFF_S + 0.1)
    with ScriptedPacs(outbox.pacs_port) as pacs:
        assert export_once(outbox.config, outbox.engine) == {"sent": 3}
    assert sorted(pacs.stored) == sorted(outbox.sop_uids())


def test_response_timeout_is_retried(outbox: Outbox, tmp_path: Path) -> None:
    # storescp sleeps 3 s before answering; the exporter waits 1 s for a DIMSE response: outcome unknown -> retry.
    impatient = replace(outbox.config, exporter=replace(outbox.config.exporter, dimse_timeout_seconds=1.0))
    with storescp_process(tmp_path / "slow", port=outbox.pacs_port, options=["--sleep-during", "3"]):
        counts = export_once(impatient, outbox.engine)
    assert counts == {"pending": 3}
    time.sleep(BACKOFF_S + 0.1)
    received_dir = tmp_path / "pacs"
    with storescp_process(received_dir, port=outbox.pacs_port):
        assert export_once(impatient, outbox.engine) == {"sent": 3}
    received = _received_by_storescp(received_dir)
    assert sorted(received) == sorted(outbox.sop_uids())
    assert all(len(copies) == 1 for copies in received.values())
