"""The node's C-STORE / C-ECHO SCP (pynetdicom), with a peer allow-list.

Who may talk to us: an association is accepted only when the calling AE title AND the remote IP address match the
same ``[[peers]]`` entry. The IP is checked in the accept loop (``verify_request`` of the socketserver, right after
``accept()``), so a socket from an unknown address is closed before a single byte of it is read. The AE title is
known only once the A-ASSOCIATE-RQ has been read; an AE title / IP pair that matches no peer is rejected with
A-ASSOCIATE-RJ (rejected-permanent, service-user, calling AE title not recognised), except an association that
proposes only the Verification SOP class (C-ECHO) from an allowed address: it is accepted, so that `echoscu` with
any AE title can check the node from a peer's host; nothing can be stored on it. Rejections are logged with
the address and AE title only (no patient data is available or logged at that point).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from service.db.queries import record_instance
from service.receive.handlers import ReceivedInstance, Recorder, StoreHandler, handle_echo
from service.receive.spool import Spool, remove_stale_partials

logger = logging.getLogger(__name__)

SUPPORTED_TRANSFER_SYNTAXES = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    HTJ2K,
    RLELossless,
)
MAX_ASSOCIATIONS = 32
# A-ASSOCIATE-RJ: result 1 rejected-permanent, source 1 service-user, reason 3 calling AE title not recognised.
REJECT_PERMANENT, SOURCE_SERVICE_USER, REASON_CALLING_AET_NOT_RECOGNISED = 0x01, 0x01, 0x03


def normalise_ip(address: str) -> str:
    """Canonical text of an IP address; IPv4-mapped IPv6 (::ffff:a.b.c.d) becomes a.b.c.d."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def resolve_host(host: str) -> frozenset[str]:
    """All IP addresses of a configured peer host (literal IP or name resolved once at start-up)."""
    try:
        return frozenset({normalise_ip(host)})
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        logger.error("peer host %r does not resolve (%s); it cannot connect", host, exc)
        return frozenset()
    return frozenset(normalise_ip(str(info[4][0])) for info in infos)


@dataclass(frozen=True)
class PeerAllowList:
    """(AE title, IP) pairs allowed to associate."""

    entries: frozenset[tuple[str, str]]

    @classmethod
    def from_peers(cls, peers: Iterable[Any]) -> PeerAllowList:
        pairs = {(str(p.ae_title).strip(), ip) for p in peers for ip in resolve_host(str(p.host))}
        return cls(frozenset(pairs))

    @property
    def ips(self) -> frozenset[str]:
        return frozenset(ip for _, ip in self.entries)

    def ip_allowed(self, address: str) -> bool:
        try:
            return normalise_ip(address) in self.ips
        except ValueError:
            return False

    def allowed(self, ae_title: str, address: str) -> bool:
        try:
            return (ae_title.strip(), normalise_ip(address)) in self.entries
        except ValueError:
            return False


class AllowListAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with the IP allow-list applied as soon as a connection is accepted."""

    allow_list: PeerAllowList = PeerAllowList(frozenset())

    def verify_request(self, request: Any, client_address: Any) -> bool:
        address = str(client_address[0])
        if self.allow_list.ip_allowed(address):
            return True
        logger.warning("connection from %s refused: address is not a configured peer", address)
        return False


def _check_calling_peer(event: Any, allow_list: PeerAllowList) -> None:
    """EVT_REQUESTED: reject an association whose calling AE title / IP pair is not a configured peer."""
    assoc = event.assoc
    ae_title = str(assoc.requestor.primitive.calling_ae_title).strip()
    address = str(assoc.requestor.address)
    if allow_list.allowed(ae_title, address):
        return
    proposed = {str(cx.abstract_syntax) for cx in assoc.requestor.primitive.presentation_context_definition_list}
    if proposed == {Verification}:
        # C-ECHO only, from an allowed address (checked at accept): answer it whatever the AE title, so that a
        # plain `echoscu HOST PORT` can check the node; nothing can be stored on such an association.
        logger.info("echo-only association from AE %r at %s accepted", ae_title, address)
        return
    logger.warning("association from AE %r at %s rejected: not a configured peer", ae_title, address)
    assoc.acse.send_reject(REJECT_PERMANENT, SOURCE_SERVICE_USER, REASON_CALLING_AET_NOT_RECOGNISED)
    evt.trigger(assoc, evt.EVT_REJECTED, {})
    assoc.kill()  # as pynetdicom does after its own rejections: lets the DUL send the A-ASSOCIATE-RJ, then stops


def build_ae(config: Any) -> AE:
    ae = AE(ae_title=str(config.node.ae_title))
    ae.maximum_pdu_size = 0  # unlimited: ~15-20 % faster receive with pynetdicom
    ae.maximum_associations = MAX_ASSOCIATIONS
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, list(SUPPORTED_TRANSFER_SYNTAXES))
    ae.add_supported_context(Verification, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    return ae


def db_recorder(engine: Any) -> Recorder:
    """Recorder that writes an Instance row through node-core's query API."""

    def record(row: ReceivedInstance) -> bool:
        return bool(record_instance(engine, row))

    return record


def start_scp(
    config: Any,
    engine: Any,
    *,
    recorder: Recorder | None = None,
    spool: Spool | None = None,
) -> AllowListAssociationServer:
    """Start the SCP in a background thread and return the running server (``server.shutdown()`` stops it).

    ``recorder`` and ``spool`` default to the database behind ``engine`` and ``config.node.storage_dir``; tests
    may inject others (e.g. a spool whose disk is full).
    """
    storage_dir = Path(config.node.storage_dir)
    storage_dir.mkdir(parents=True, exist_ok=True)
    removed = remove_stale_partials(storage_dir)
    if removed:
        logger.info("removed %d partial files left by an interrupted write", removed)
    spool = spool or Spool(storage_dir)
    recorder = recorder or db_recorder(engine)
    allow_list = PeerAllowList.from_peers(config.peers)
    if not allow_list.entries:
        logger.warning("no [[peers]] configured: every association will be refused")

    ae = build_ae(config)
    handlers = [
        (evt.EVT_C_STORE, StoreHandler(spool, recorder)),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_REQUESTED, _check_calling_peer, [allow_list]),
    ]
    server = ae.make_server(
        (str(config.node.host), int(config.node.port)),
        evt_handlers=handlers,
        server_class=AllowListAssociationServer,
    )
    server.allow_list = allow_list
    timestamp = datetime.now().strftime("%Y%m%d%H%M%S")
    thread = threading.Thread(target=server.serve_forever, name=f"AcceptorServer@{timestamp}", daemon=True)
    thread.start()
    ae._servers.append(server)  # so that server.shutdown() (which removes it) and ae.shutdown() work
    host, port = server.server_address[:2]
    logger.info("SCP %s listening on %s:%s", config.node.ae_title, host, port)
    return server


def run_scp(config: Any, engine: Any, stop_event: threading.Event) -> None:
    """Serve until ``stop_event`` is set."""
    server = start_scp(config, engine)
    try:
        stop_event.wait()
    finally:
        server.shutdown()
        logger.info("SCP stopped")
