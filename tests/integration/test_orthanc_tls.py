"""DICOM TLS between the node and a real Orthanc (DicomTlsEnabled, issue 19): Orthanc echoes and stores to the
node's TLS port with its certificate tied to its peer entry, and the exporter stores to Orthanc over TLS."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from service.config import Config, build_config
from service.config_loader import to_plain
from service.db.engine import make_engine
from service.db.migrate import upgrade
from service.export.cstore_scu import send_files
from service.receive.scp import start_scp
from tests.integration.dicom_net_support import node_config, write_series
from tests.integration.orthanc import OrthancServer
from tests.integration.tls_support import Cert, make_ca, make_signed
from tests.support.net import free_port

pytestmark = pytest.mark.integration


@dataclass
class TlsOrthanc(OrthancServer):
    """The test Orthanc with DICOM TLS on its DICOM port, calling the node on its TLS port."""

    certificate: Cert | None = None
    ca: Cert | None = None

    def write_config(self) -> Path:
        path = super().write_config()
        assert self.certificate is not None and self.ca is not None
        config = json.loads(path.read_text())
        config.update({"DicomTlsEnabled": True, "DicomTlsCertificate": str(self.certificate.certificate),
                       "DicomTlsPrivateKey": str(self.certificate.private_key),
                       "DicomTlsTrustedCertificates": str(self.ca.certificate),
                       "DicomTlsRemoteCertificateRequired": True})
        config["DicomModalities"] = {"bmdnode": {"AET": self.node_ae_title, "Host": "127.0.0.1",
                                                 "Port": self.node_port, "UseDicomTls": True}}
        path.write_text(json.dumps(config))
        return path


@dataclass
class Setup:
    orthanc: TlsOrthanc
    config: Config
    storage_dir: Path


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    ca = make_ca(tmp_path / "certs")
    node_cert = make_signed(ca, tmp_path / "certs", "node")
    orthanc_cert = make_signed(ca, tmp_path / "certs", "orthanc")
    tls_port = free_port()
    orthanc = TlsOrthanc(tmp_path / "orthanc", "BMDNODE", tls_port, lua_script=None, certificate=orthanc_cert, ca=ca)
    peers = [{"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc.dicom_port,
              "certificate_sha256": orthanc_cert.sha256}]
    raw = to_plain(node_config(tmp_path, port=free_port(), peers=peers))
    raw.pop("source")
    raw["peers"][0]["tls"] = True
    raw["node"]["tls"] = {"certificate": str(node_cert.certificate), "private_key": str(node_cert.private_key),
                          "ca_certificates": str(ca.certificate), "require_client_certificate": True,
                          "port": tls_port}
    config = build_config(raw, source="test")
    upgrade(config.node.database_url)
    engine = make_engine(config.node.database_url)
    server = start_scp(config, engine)
    try:
        with orthanc:
            yield Setup(orthanc, config, Path(config.node.storage_dir))
    finally:
        server.shutdown()
        engine.dispose()


def test_orthanc_echoes_and_stores_to_the_node_over_tls(setup: Setup, tmp_path: Path) -> None:
    assert setup.orthanc.post_json("/modalities/bmdnode/echo", {}) == {}
    (path,) = write_series(tmp_path / "s", 1)
    instance = setup.orthanc.upload(path)
    setup.orthanc.post_json("/modalities/bmdnode/store", {"Resources": [instance], "Synchronous": True})
    assert len(list(setup.storage_dir.rglob("*.dcm"))) == 1


def test_the_exporter_stores_to_orthanc_over_tls(setup: Setup, tmp_path: Path) -> None:
    files = write_series(tmp_path / "s", 2)
    assert send_files(files, setup.config.peer("pacs"), setup.config) == [0, 0]
    assert len(setup.orthanc.get("/instances")) == 2
