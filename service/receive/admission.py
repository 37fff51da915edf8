"""Who is admitted once the A-ASSOCIATE-RQ has been read (EVT_REQUESTED of the SCP, service/receive/scp.py): the
called AE title (``[node] check_called_ae``), the calling AE title / address pair of a ``[[peers]]`` entry (as sent:
' TESTSCU' is not 'TESTSCU'), a TLS client certificate tied to that peer, and the peer's cap of open associations
over all receiver processes. Also the EVT_ACCEPTED / EVT_REJECTED handlers that count each association's outcome
(service/receive/limits.py AssociationOutcome)."""

from __future__ import annotations

import logging
from typing import Any

from pynetdicom import evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from service.receive.limits import AssociationOutcome
from service.receive.peers import PeerAllowList

logger = logging.getLogger(__name__)

# A-ASSOCIATE-RJ: result 1 rejected-permanent, source 1 service-user, reason 3 calling / 7 called AE title not
# recognised.
REJECT_PERMANENT, SOURCE_SERVICE_USER, REASON_CALLING_AET_NOT_RECOGNISED = 0x01, 0x01, 0x03
REASON_CALLED_AET_NOT_RECOGNISED = 0x07
# A-ASSOCIATE-RJ: result 2 rejected-transient, source 3 service-provider (presentation), reason 2 local-limit-exceeded.
REJECT_TRANSIENT, SOURCE_PROVIDER_PRESENTATION, REASON_LOCAL_LIMIT_EXCEEDED = 0x02, 0x03, 0x02


def _raw_ae_titles(assoc: Any) -> tuple[str, str]:
    """(called, calling) AE titles as sent (service/receive/limits.py keeps them); pynetdicom's stripped values
    when the socket did not keep them."""
    sock, primitive = assoc.dul.socket, assoc.requestor.primitive
    called = getattr(sock, "raw_called_ae", None)
    calling = getattr(sock, "raw_calling_ae", None)
    return (str(primitive.called_ae_title) if called is None else called,
            str(primitive.calling_ae_title) if calling is None else calling)


def _outcome(assoc: Any) -> AssociationOutcome:
    outcome = getattr(assoc, "outcome", None)
    return outcome if isinstance(outcome, AssociationOutcome) else AssociationOutcome(None)


def _reject(assoc: Any, reason: int, counted_as: str, *, result: int = REJECT_PERMANENT,
            source: int = SOURCE_SERVICE_USER) -> None:
    _outcome(assoc).reject(counted_as)
    assoc.acse.send_reject(result, source, reason)
    evt.trigger(assoc, evt.EVT_REJECTED, {})
    assoc.kill()  # as pynetdicom does after its own rejections: lets the DUL send the A-ASSOCIATE-RJ, then stops


def check_calling_peer(event: Any, allow_list: PeerAllowList, called_ae: str | None = None) -> None:
    """EVT_REQUESTED: reject an association whose calling AE title / IP pair is not a configured peer, or (when
    ``called_ae`` is given) whose called AE title is not ``called_ae``."""
    assoc = event.assoc
    called, ae_title = _raw_ae_titles(assoc)
    address = str(assoc.requestor.address)
    if called_ae is not None and called != called_ae.rstrip():
        logger.warning("association from AE %r at %s rejected: called AE title %r is not this node's", ae_title,
                       address, called)
        _reject(assoc, REASON_CALLED_AET_NOT_RECOGNISED, "wrong_called_ae")
        return
    tls_print = getattr(assoc.dul.socket, "tls_fingerprint", None)
    if tls_print is not None and not allow_list.certificate_matches(ae_title, address, tls_print):
        logger.warning("association from AE %r at %s rejected: its TLS certificate is not this peer's", ae_title,
                       address)
        _reject(assoc, REASON_CALLING_AET_NOT_RECOGNISED, "client_certificate_refused")
        return
    if allow_list.allowed(ae_title, address):
        _take_peer_slot(assoc, allow_list.peer_name(ae_title, address), ae_title, address)
        return
    proposed = {str(cx.abstract_syntax) for cx in assoc.requestor.primitive.presentation_context_definition_list}
    if proposed == {Verification}:
        # C-ECHO only, from an allowed address (checked at accept): answer it whatever the AE title, so that a
        # plain `echoscu HOST PORT` can check the node; nothing can be stored on such an association.
        logger.info("echo-only association from AE %r at %s accepted", ae_title, address)
        _outcome(assoc).accepted_as = "echo_only"
        return
    logger.warning("association from AE %r at %s rejected: not a configured peer", ae_title, address)
    _reject(assoc, REASON_CALLING_AET_NOT_RECOGNISED, "unknown_calling_ae")


def _take_peer_slot(assoc: Any, peer: str | None, ae_title: str, address: str) -> None:
    """An allowed peer's association slot (given back when the association's thread ends); at the peer's cap:
    A-ASSOCIATE-RJ rejected-transient, local-limit-exceeded."""
    outcome = _outcome(assoc)
    if peer is None or outcome.slots is None:
        return
    if outcome.slots.acquire_peer(peer):
        outcome.peer = peer
        return
    logger.warning("association from AE %r at %s rejected: peer %s already has its maximum of open associations",
                   ae_title, address, peer)
    _reject(assoc, REASON_LOCAL_LIMIT_EXCEEDED, "too_many_per_peer", result=REJECT_TRANSIENT,
            source=SOURCE_PROVIDER_PRESENTATION)


def count_accepted(event: Any) -> None:
    """EVT_ACCEPTED."""
    _outcome(event.assoc).accept()


def count_rejected(event: Any) -> None:
    """EVT_REJECTED: pynetdicom's own rejections (ours are counted with their reason first)."""
    _outcome(event.assoc).reject("other")
