"""DICOM TLS on the SCP (issue 19) with DCMTK as the real peer: echo and store over TLS, a client certificate tied
to no peer refused, and an idle TLS client does not block the accept loop (the handshake runs off it)."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.config import build_config
from service.config_loader import to_plain
from service.db.engine import make_engine
from service.db.migrate import upgrade
from service.export.cstore_scu import send_files
from service.receive.scp import start_scp
from tests.integration.dicom_net_support import PEER_ENV, node_config, require_tool, write_series
from tests.integration.tls_support import Cert, make_ca, make_signed
from tests.support.net import free_port, wait_for_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Cert]:
    folder = tmp_path_factory.mktemp("certs")
    ca = make_ca(folder)
    return {"ca": ca, **{name: make_signed(ca, folder, name) for name in ("node", "pacs", "stranger")}}


def _start(tmp_path: Path, certs: dict[str, Cert]) -> Iterator[tuple[int, int]]:
    port, tls_port = free_port(), free_port()
    peers = [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 4242,
              "certificate_sha256": certs["pacs"].sha256}]
    raw = to_plain(node_config(tmp_path, port=port, peers=peers))
    raw.pop("source")
    raw["node"]["tls"] = {"certificate": str(certs["node"].certificate), "private_key": str(certs["node"].private_key),
                          "ca_certificates": str(certs["ca"].certificate), "require_client_certificate": True,
                          "port": tls_port}
    config = build_config(raw, source="test")
    upgrade(config.node.database_url)
    engine = make_engine(config.node.database_url)
    server = start_scp(config, engine)
    try:
        yield port, tls_port
    finally:
        server.shutdown()
        engine.dispose()


@pytest.fixture
def node(tmp_path: Path, certs: dict[str, Cert]) -> Iterator[tuple[int, int]]:
    yield from _start(tmp_path, certs)


def _dcmtk(tool: str, port: int, client: Cert, ca: Cert, *files: Path) -> subprocess.CompletedProcess[str]:
    cmd = [require_tool(tool), "+tls", str(client.private_key), str(client.certificate), "+cf", str(ca.certificate),
           "-aet", "PACS", "-aec", "BMDNODE", "127.0.0.1", str(port), *map(str, files)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=PEER_ENV)


def test_echo_and_store_over_tls_with_dcmtk(node: tuple[int, int], certs: dict[str, Cert], tmp_path: Path) -> None:
    _, tls_port = node
    echo = _dcmtk("echoscu", tls_port, certs["pacs"], certs["ca"])
    assert echo.returncode == 0, echo.stderr
    store = _dcmtk("storescu", tls_port, certs["pacs"], certs["ca"], *write_series(tmp_path / "s", 3))
    assert store.returncode == 0, store.stderr
    assert len(list((tmp_path / "storage").rglob("*.dcm"))) == 3


def test_a_client_certificate_tied_to_no_peer_is_refused(node: tuple[int, int], certs: dict[str, Cert]) -> None:
    _, tls_port = node
    assert _dcmtk("echoscu", tls_port, certs["stranger"], certs["ca"]).returncode != 0
    assert _dcmtk("echoscu", tls_port, certs["pacs"], certs["ca"]).returncode == 0


def test_an_idle_tls_client_does_not_block_others(node: tuple[int, int], certs: dict[str, Cert]) -> None:
    _, tls_port = node
    with socket.create_connection(("127.0.0.1", tls_port)):  # connects, never starts the handshake
        started = time.monotonic()
        assert _dcmtk("echoscu", tls_port, certs["pacs"], certs["ca"]).returncode == 0
        assert time.monotonic() - started < 5.0


def _storescp_tls(out_dir: Path, port: int, server: Cert, ca: Cert) -> subprocess.Popen[bytes]:
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [require_tool("storescp"), "+tls", str(server.private_key), str(server.certificate), "+cf",
           str(ca.certificate), "-rc", "-aet", "PACS", "-od", str(out_dir), str(port)]
    return subprocess.Popen(cmd, env=PEER_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _exporter_config(tmp_path: Path, certs: dict[str, Cert], ca: Cert, port: int) -> Any:
    peers = [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": port}]
    raw = to_plain(node_config(tmp_path, port=free_port(), peers=peers))
    raw.pop("source")
    raw["peers"][0]["tls"] = True
    raw["node"]["tls"] = {"certificate": str(certs["node"].certificate), "private_key": str(certs["node"].private_key),
                          "ca_certificates": str(ca.certificate), "port": free_port()}
    return build_config(raw, source="test")


def test_the_exporter_stores_over_tls_and_verifies_the_peer(certs: dict[str, Cert], tmp_path: Path) -> None:
    port = free_port()
    files = write_series(tmp_path / "s", 2)
    other_ca = make_ca(tmp_path / "other-ca")
    proc = _storescp_tls(tmp_path / "received", port, certs["pacs"], certs["ca"])
    try:
        wait_for_port(port)
        config = _exporter_config(tmp_path, certs, certs["ca"], port)
        assert send_files(files, config.peer("pacs"), config) == [0, 0]
        assert len(list((tmp_path / "received").iterdir())) == 2
        untrusting = _exporter_config(tmp_path, certs, other_ca, port)  # the peer's certificate is not verifiable
        assert send_files(files, untrusting.peer("pacs"), untrusting) != [0, 0]
        assert len(list((tmp_path / "received").iterdir())) == 2
    finally:
        proc.terminate()
        proc.wait(timeout=10)
