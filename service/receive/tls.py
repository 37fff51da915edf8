"""DICOM TLS on the SCP (BCP 195: TLS 1.2 or later, ECDHE key exchange with AES-GCM).

The handshake runs in the connection's own thread (``GuardedRequestHandler.handle``, service/receive/limits.py),
never in the accept loop, under the association request deadline: an idle or slow client holds its own slot only.
pynetdicom's ``ssl_context`` is not used (it handshakes in the accept thread, so one idle client blocks everyone).

Client certificates: with ``ca_certificates`` they are verified against that bundle; with
``require_client_certificate`` one is required and must be tied to a peer entry: the SHA-256 fingerprint of the
certificate (DER) equals ``certificate_sha256`` of a ``[[peers]]`` entry at the connecting address, and later the
calling AE title must be that peer's. A certificate tied to no peer is refused right after the handshake.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

BCP195_CIPHERS = "ECDHE+AESGCM"
"""TLS 1.2 suites: ECDHE-ECDSA/RSA with AES-128/256-GCM (TLS 1.3 suites are all AEAD and always on)."""


@dataclass(frozen=True)
class TlsSettings:
    """``[node.tls]``: off while ``certificate`` is empty."""

    certificate: Path | None = None
    private_key: Path | None = None
    ca_certificates: Path | None = None
    require_client_certificate: bool = False
    port: int = 2762
    """The DICOM TLS port (IANA dicom-tls: 2762); the plain ``[node] port`` stays unless ``plain = false``."""
    plain: bool = True

    def __post_init__(self) -> None:
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("node.tls.certificate: certificate and private_key go together")
        if self.require_client_certificate and self.ca_certificates is None:
            raise ValueError("node.tls.require_client_certificate: needs node.tls.ca_certificates")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"node.tls.port: must be 0..65535, got {self.port}")
        if not self.plain and self.certificate is None:
            raise ValueError("node.tls.plain: the plain port can be switched off only with TLS configured")

    @property
    def enabled(self) -> bool:
        return self.certificate is not None


def _bcp195(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(BCP195_CIPHERS)
    return context


def server_context(settings: TlsSettings) -> ssl.SSLContext:
    context = _bcp195(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    context.load_cert_chain(str(settings.certificate), str(settings.private_key))
    if settings.ca_certificates is not None:
        context.load_verify_locations(cafile=str(settings.ca_certificates))
        context.verify_mode = ssl.CERT_REQUIRED if settings.require_client_certificate else ssl.CERT_OPTIONAL
    return context


def client_context(ca_certificates: Path, certificate: Path | None = None,
                   private_key: Path | None = None) -> ssl.SSLContext:
    """For the exporter: the peer's certificate verified against ``ca_certificates`` (host name not checked: DICOM
    peers are configured by address); our own certificate sent when given."""
    context = _bcp195(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cafile=str(ca_certificates))
    if certificate is not None:
        context.load_cert_chain(str(certificate), str(private_key) if private_key else None)
    return context


def fingerprint(tls_socket: ssl.SSLSocket) -> str | None:
    """SHA-256 of the client's certificate (DER), lower-case hex; None without one."""
    der = tls_socket.getpeercert(binary_form=True)
    return hashlib.sha256(der).hexdigest() if der else None


def handshake(sock: socket.socket, context: ssl.SSLContext, timeout_s: float, address: str) -> ssl.SSLSocket | None:
    """The server side of the handshake under ``timeout_s``; None (socket closed, reason logged) when it fails."""
    try:
        sock.settimeout(max(timeout_s, 0.001))
        return context.wrap_socket(sock, server_side=True)
    except (OSError, ssl.SSLError, ValueError) as exc:
        logger.warning("TLS handshake with %s failed (%s: %s)", address, type(exc).__name__, getattr(exc, "reason", ""))
        with contextlib.suppress(OSError):
            sock.close()
        return None
