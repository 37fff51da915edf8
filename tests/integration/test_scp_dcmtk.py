"""The node's SCP against real DCMTK senders (storescu, echoscu) and a real SQLite database.

Covers: every supported transfer syntax stored byte-identically, C-ECHO, duplicates, non-CT ignored, the peer
allow-list (AE title and IP, the IP before any byte is read), a malformed dataset recorded with its reason while
the node keeps serving, and out of disk (0xA700, no partial file).
"""

from __future__ import annotations

import errno
import os
import socket
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy
from pydicom import dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLossless,
    generate_uid,
)
from pynetdicom import AE
from sqlalchemy import select

from service.config import Config
from service.db.engine import make_engine, read_session
from service.db.migrate import upgrade
from service.db.tables import Instance
from service.export.cstore_scu import StoreSession
from service.export.transport import OutcomeKind
from service.receive.scp import run_scp, start_scp
from service.receive.spool import Spool
from tests.integration.dicom_net_support import (
    J2K_SLAB_DIR,
    STORESCU_PROPOSE,
    TRANSCODE_COMMANDS,
    dataset_bytes,
    echoscu,
    make_secondary_capture,
    node_config,
    real_j2k_with_uids,
    storescu,
    transcode,
    write_series,
)
from tests.support.net import free_port, wait_for_port

pytestmark = pytest.mark.integration

SENDER = {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 4242}


@dataclass
class Node:
    config: Config
    engine: sqlalchemy.Engine
    port: int

    @property
    def storage_dir(self) -> Path:
        return Path(self.config.node.storage_dir)

    def instances(self) -> list[Instance]:
        with read_session(self.engine) as session:
            return list(session.scalars(select(Instance).order_by(Instance.id)))

    def instance(self, sop_instance_uid: str) -> Instance:
        with read_session(self.engine) as session:
            row = session.scalar(select(Instance).where(Instance.sop_instance_uid == sop_instance_uid))
        if row is None:
            raise AssertionError(f"instance {sop_instance_uid} was not recorded")
        return row


def _start_node(tmp_path: Path, peers: list[dict[str, object]], spool: Spool | None = None) -> Iterator[Node]:
    port = free_port()
    config = node_config(tmp_path, port=port, peers=peers)
    upgrade(config.node.database_url)
    engine = make_engine(config.node.database_url)
    server = start_scp(config, engine, spool=spool)
    try:
        yield Node(config, engine, port)
    finally:
        server.shutdown()
        engine.dispose()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    yield from _start_node(tmp_path, [SENDER])


def _pynetdicom_store(path: Path, port: int, *, bind_host: str = "127.0.0.1", calling_ae: str = "PACS") -> int | None:
    """Send one file from a chosen source address with pynetdicom; returns the status or None if not associated."""
    ds = dcmread(path)
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="BMDNODE", bind_address=(bind_host, 0))
    if not assoc.is_established:
        return None
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    return int(status.Status) if "Status" in status else None


def _inflate(deflated: bytes) -> bytes:
    return zlib.decompressobj(-zlib.MAX_WBITS).decompress(deflated)


def test_echoscu_from_a_listed_peer_succeeds(node: Node) -> None:
    result = echoscu(port=node.port, calling_ae="PACS")
    assert result.returncode == 0, result.stderr


def test_every_transfer_syntax_is_stored_byte_identically(node: Node, tmp_path: Path) -> None:
    study = generate_uid()
    sent: dict[str, Path] = {}
    for i, ts in enumerate(TRANSCODE_COMMANDS):
        bits = 8 if ts == "1.2.840.10008.1.2.4.50" else 16  # JPEG baseline is 8-bit only
        (src,) = write_series(tmp_path / "src" / str(i), 1, study_instance_uid=study, bits_allocated=bits, seed=i)
        sent[ts] = transcode(src, tmp_path / "tc" / f"{i}.dcm", ts)
    sent[JPEG2000Lossless] = real_j2k_with_uids(tmp_path / "j2k.dcm", study_instance_uid=study,
                                                series_instance_uid=generate_uid())

    for ts, path in sent.items():
        assert str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID) == ts
        if ts == JPEGLossless:  # process 14 (not SV1): storescu has no option proposing it; use pynetdicom
            assert _pynetdicom_store(path, node.port) == 0
            continue
        result = storescu([path], port=node.port, calling_ae="PACS", options=["-R", STORESCU_PROPOSE[ts]])
        assert result.returncode == 0, f"{ts}: {result.stderr}"

    for ts, path in sent.items():
        sop = str(dcmread(path, stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID)
        row = node.instance(sop)
        assert row.status == "stored", (ts, row.reason)
        assert row.transfer_syntax_uid == ts
        assert row.calling_ae_title == "PACS"
        stored = Path(str(row.path))
        assert node.storage_dir in stored.parents
        if ts == DeflatedExplicitVRLittleEndian:
            # storescu re-deflates on sending (DCMTK decodes and re-encodes), so the wire bytes need not equal the
            # file's deflate stream; what was deflated must be identical.
            assert _inflate(dataset_bytes(stored)) == _inflate(dataset_bytes(path))
        else:
            assert dataset_bytes(stored) == dataset_bytes(path), f"{ts}: stored dataset bytes differ from sent"
        assert str(dcmread(stored, stop_before_pixels=True).file_meta.TransferSyntaxUID) == ts


def test_duplicate_instance_is_acknowledged_once_recorded(node: Node, tmp_path: Path) -> None:
    files = write_series(tmp_path / "dup", 3)
    for _ in range(2):
        result = storescu(files, port=node.port, calling_ae="PACS")
        assert result.returncode == 0, result.stderr
    rows = node.instances()
    assert len(rows) == 3
    assert sorted(str(r.sop_instance_uid) for r in rows) == sorted(
        str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files
    )
    stored_files = [p for p in node.storage_dir.rglob("*") if p.is_file()]
    assert len(stored_files) == 3


def test_non_ct_is_acknowledged_and_recorded_ignored(node: Node, tmp_path: Path) -> None:
    sc = make_secondary_capture(generate_uid(), tmp_path / "sc")
    result = storescu([sc], port=node.port, calling_ae="PACS")
    assert result.returncode == 0, result.stderr
    row = node.instance(str(dcmread(sc, stop_before_pixels=True).SOPInstanceUID))
    assert row.status == "ignored"
    assert row.reason and "not CT" in row.reason
    assert row.path is None
    assert not [p for p in node.storage_dir.rglob("*") if p.is_file()]


def test_unknown_calling_ae_title_is_rejected(node: Node, tmp_path: Path) -> None:
    files = write_series(tmp_path / "x", 1)
    result = storescu(files, port=node.port, calling_ae="INTRUDER")
    assert result.returncode != 0
    assert "Rejected" in result.stderr or "rejected" in result.stderr.lower(), result.stderr
    assert node.instances() == []
    # C-ECHO only, from a listed peer's address: answered whatever the AE title (nothing can be stored on it)
    assert echoscu(port=node.port, calling_ae="ECHOSCU").returncode == 0


def test_unknown_ip_is_closed_before_any_byte_is_read(tmp_path: Path) -> None:
    # The only peer sits at 127.0.0.2 (all of 127/8 is loopback on Linux): 127.0.0.1 is not allowed.
    peers = [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.2", "port": 4242}]
    for node in _start_node(tmp_path, peers):
        files = write_series(tmp_path / "ip", 1)
        # Right AE title, wrong address: refused.
        assert storescu(files, port=node.port, calling_ae="PACS").returncode != 0
        assert echoscu(port=node.port, calling_ae="PACS").returncode != 0
        assert _pynetdicom_store(files[0], node.port, bind_host="127.0.0.1") is None

        # A silent client from the wrong address is disconnected without sending anything ...
        with socket.create_connection(("127.0.0.1", node.port), timeout=5) as sock:
            sock.settimeout(5)
            assert sock.recv(1) == b""
        # ... while from the allowed address the node waits for the A-ASSOCIATE-RQ.
        with socket.create_connection(("127.0.0.1", node.port), timeout=5, source_address=("127.0.0.2", 0)) as sock:
            sock.settimeout(1.0)
            with pytest.raises(TimeoutError):
                sock.recv(1)

        # Right address and AE title: stored.
        assert _pynetdicom_store(files[0], node.port, bind_host="127.0.0.2") == 0
        assert [r.status for r in node.instances()] == ["stored"]


def _malformed_file(path: Path, sop_instance_uid: str) -> Path:
    """A DICOM file whose meta is fine but whose dataset does not decode."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    with path.open("wb") as f:
        f.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(f, meta, enforce_standard=True)
        # (0008,0016) UI with a length of 0xFFF0 but only a few bytes follow
        # (0008,0005) as a sequence of undefined length that is cut off in the middle of its first item
        f.write(b"\x08\x00\x05\x00SQ\x00\x00\xff\xff\xff\xff\x08\x00\x16\x00")
    return path


def test_malformed_dataset_is_recorded_rejected_and_node_keeps_serving(node: Node, tmp_path: Path) -> None:
    bad_uid = generate_uid()
    bad = _malformed_file(tmp_path / "bad.dcm", bad_uid)
    good = write_series(tmp_path / "good", 2)
    sender = _sender_config(node, tmp_path)
    with StoreSession(sender.peers[0], sender, [bad, *good]) as session:
        outcome_bad = session.store(bad)
        outcomes_good = [session.store(p) for p in good]
    assert outcome_bad.status_code == 0xC210 and outcome_bad.kind is OutcomeKind.PERMANENT
    assert [o.status_code for o in outcomes_good] == [0, 0]

    row = node.instance(bad_uid)
    assert row.status == "rejected"
    assert row.reason and "decode" in row.reason
    # and DCMTK, on a new association, is still served
    assert echoscu(port=node.port, calling_ae="PACS").returncode == 0
    assert len([r for r in node.instances() if r.status == "stored"]) == 2


def _sender_config(node: Node, tmp_path: Path) -> Config:
    """Config of a sending AE 'PACS' whose peer is the node (to use the node's own SCU as a test sender)."""
    return node_config(
        tmp_path / "sender",
        port=free_port(),
        ae_title="PACS",
        peers=[{"name": "node", "ae_title": "BMDNODE", "host": "127.0.0.1", "port": node.port}],
    )


def test_out_of_disk_answers_a700_and_leaves_no_partial_file(tmp_path: Path) -> None:
    full = Spool(tmp_path / "storage", reserve_bytes=1 << 20, free_bytes=lambda _p: 1 << 19)
    for node in _start_node(tmp_path, [SENDER], spool=full):
        files = write_series(tmp_path / "full", 1)
        result = storescu(files, port=node.port, calling_ae="PACS")
        assert result.returncode != 0  # storescu reports a failed store
        assert _pynetdicom_store(files[0], node.port) == 0xA700
        assert not [p for p in node.storage_dir.rglob("*") if p.is_file()]
        assert node.instances() == []


def test_enospc_in_the_middle_of_a_write_answers_a700(tmp_path: Path) -> None:
    def half_then_full(fd: int, data: bytes) -> None:
        os.write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    spool = Spool(tmp_path / "storage", reserve_bytes=0, writer=half_then_full)
    for node in _start_node(tmp_path, [SENDER], spool=spool):
        files = write_series(tmp_path / "mid", 1)
        assert _pynetdicom_store(files[0], node.port) == 0xA700
        assert not [p for p in node.storage_dir.rglob("*") if p.is_file()]
        assert node.instances() == []


def test_real_anonymised_file_without_study_and_series_uid_is_rejected(node: Node, tmp_path: Path) -> None:
    """The shared J2K slab had its Study/Series/SOP UIDs emptied by anonymisation: not ingestible, say why."""
    if not J2K_SLAB_DIR.is_dir():
        pytest.fail(f"real data folder {J2K_SLAB_DIR} is missing (../shared/data, see its README)")
    path = sorted(J2K_SLAB_DIR.glob("*.dcm"))[0]
    sender = _sender_config(node, tmp_path)
    with StoreSession(sender.peers[0], sender, [path]) as session:  # storescu refuses the empty SOP Class UID
        outcome = session.store(path)
    assert outcome.status_code == 0xC210
    row = node.instance(str(dcmread(path, stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID))
    assert row.status == "rejected"
    assert row.reason == "dataset lacks StudyInstanceUID, SeriesInstanceUID"


def test_run_scp_serves_until_stopped(tmp_path: Path) -> None:
    port = free_port()
    config = node_config(tmp_path, port=port, peers=[SENDER])
    upgrade(config.node.database_url)
    engine = make_engine(config.node.database_url)
    stop = threading.Event()
    thread = threading.Thread(target=run_scp, args=(config, engine, stop), daemon=True)
    thread.start()
    try:
        wait_for_port(port)
        assert echoscu(port=port, calling_ae="PACS").returncode == 0
    finally:
        stop.set()
        thread.join(timeout=30)
        engine.dispose()
    assert not thread.is_alive()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
