"""The SCU against loopback pynetdicom peers: echo, send_files, transfer syntax policy."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

from pydicom import dcmread
from pydicom.filereader import read_dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from service.export.cstore_scu import NO_STATUS, echo, send_files, store_dataset_file
from service.export.transport import OutcomeKind
from tests.integration.dicom_net_support import dataset_bytes, node_config, write_series
from tests.integration.outbox_support import ScriptedPacs
from tests.support.net import free_port


def _config(tmp_path: Path, pacs_port: int):  # type: ignore[no-untyped-def]
    return node_config(tmp_path, port=free_port(),
                       peers=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port}],
                       exporter={"connect_timeout_seconds": 2, "acse_timeout_seconds": 5})


def test_echo_true_with_peer_false_without(tmp_path: Path) -> None:
    port = free_port()
    config = _config(tmp_path, port)
    assert not echo(config.peers[0], config)  # connection refused
    ae = AE(ae_title="PACS")
    ae.add_supported_context(Verification)
    server = ae.start_server(("127.0.0.1", port), block=False)
    try:
        assert echo(config.peers[0], config)
    finally:
        server.shutdown()


def test_send_files_returns_statuses_and_bytes_arrive_unchanged(tmp_path: Path) -> None:
    port = free_port()
    config = _config(tmp_path, port)
    files = write_series(tmp_path / "s", 3)
    assert send_files(files, config.peers[0], config) == [NO_STATUS] * 3  # nobody listening
    with ScriptedPacs(port, statuses=[0x0000, 0xB000, 0xA700]) as pacs:
        assert send_files(files, config.peers[0], config) == [0x0000, 0xB000, 0xA700]
    first = str(dcmread(files[0], stop_before_pixels=True).SOPInstanceUID)
    assert pacs.stored[first] == dataset_bytes(files[0])


def test_uncompressed_file_is_reencoded_when_only_another_uncompressed_syntax_is_accepted(tmp_path: Path) -> None:
    port = free_port()
    config = _config(tmp_path, port)
    (path,) = write_series(tmp_path / "s", 1)
    ds = dcmread(path)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    implicit = tmp_path / "implicit.dcm"
    ds.save_as(implicit, implicit_vr=True, little_endian=True)
    with ScriptedPacs(port) as pacs:  # accepts the file's own syntax: the bytes go as stored
        assert store_dataset_file(implicit, config.peers[0], config).kind is OutcomeKind.SUCCESS
    assert pacs.stored[str(ds.SOPInstanceUID)] == dataset_bytes(implicit)
    with ScriptedPacs(port, transfer_syntaxes=[ExplicitVRLittleEndian]) as explicit_only:
        assert store_dataset_file(implicit, config.peers[0], config).kind is OutcomeKind.SUCCESS
    received = explicit_only.stored[str(ds.SOPInstanceUID)]
    assert received != dataset_bytes(implicit)  # re-encoded as Explicit VR ...
    decoded = read_dataset(BytesIO(received), is_implicit_VR=False, is_little_endian=True)
    assert decoded.SOPInstanceUID == ds.SOPInstanceUID and decoded.PixelData == ds.PixelData  # ... same values


def test_compressed_file_not_accepted_is_permanent(tmp_path: Path) -> None:
    port = free_port()
    config = _config(tmp_path, port)
    (path,) = write_series(tmp_path / "s", 1)
    ds = dcmread(path)
    ds.compress(RLELossless)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    rle = tmp_path / "rle.dcm"
    ds.save_as(rle, enforce_file_format=True)
    with ScriptedPacs(port) as pacs:  # uncompressed syntaxes only
        outcome = store_dataset_file(rle, config.peers[0], config)
    assert outcome.kind is OutcomeKind.PERMANENT
    assert "transfer syntax" in outcome.detail
    assert pacs.requests == []
