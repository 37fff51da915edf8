"""[node.tls] and the per-peer TLS keys: parsed from TOML, validated with errors that name the key."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from service.config import load_config
from service.config_loader import ConfigError
from service.receive.tls import BCP195_CIPHERS, TlsSettings, client_context

PEER = '[[peers]]\nname = "pacs"\nae_title = "PACS"\nhost = "127.0.0.1"\nport = 104\n'


def _load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return load_config(path, env={})


def test_node_tls_table_and_peer_keys(tmp_path: Path) -> None:
    config = _load(tmp_path, '[node.tls]\ncertificate = "/c.pem"\nprivate_key = "/k.pem"\nca_certificates = "/ca.pem"\n'
                   'require_client_certificate = true\nport = 2763\n'
                   + PEER + 'tls = true\ncertificate_sha256 = "' + "AB:" * 31 + 'AB"\n')
    tls = config.node.tls  # type: ignore[attr-defined]
    assert (tls.enabled, tls.port, tls.plain, tls.ca_certificates) == (True, 2763, True, Path("/ca.pem"))
    peer = config.peers[0]  # type: ignore[attr-defined]
    assert peer.tls and peer.certificate_sha256 == "ab" * 32


def test_tls_is_off_by_default(tmp_path: Path) -> None:
    assert not _load(tmp_path, PEER).node.tls.enabled  # type: ignore[attr-defined]


@pytest.mark.parametrize(("text", "key"), [
    ('[node.tls]\ncertificate = "/c.pem"\n', "node.tls.certificate"),
    ('[node.tls]\ncertificate = "/c.pem"\nprivate_key = "/k"\nrequire_client_certificate = true\n',
     "node.tls.require_client_certificate"),
    ("[node.tls]\nplain = false\n", "node.tls.plain"),
    ("[node.tls]\nport = 70000\n", "node.tls.port"),
    (PEER + "tls = true\n", "peers.tls"),
    (PEER + 'certificate_sha256 = "xyz"\n', "peers[pacs].certificate_sha256"),
])
def test_bad_tls_settings_name_their_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as raised:
        _load(tmp_path, text)
    assert str(raised.value).startswith(key), str(raised.value)


def test_bcp195_client_context(tmp_path: Path) -> None:
    assert TlsSettings().port == 2762
    ca = Path(ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt")
    if not ca.is_file():
        pytest.skip("no system CA bundle to load")
    context = client_context(ca)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2 and context.verify_mode == ssl.CERT_REQUIRED
    tls12 = [c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 and all(name.startswith("ECDHE-") and "GCM" in name for name in tls12), (BCP195_CIPHERS, tls12)
