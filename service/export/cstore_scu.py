"""C-ECHO and C-STORE SCU towards a configured peer, with every answer classified.

Files are sent byte-identically: the dataset part of the stored file is streamed as it is on disk, under its own
transfer syntax (pynetdicom's chunked send, no decode and re-encode), so a re-send after a failure carries exactly
the same object and the same SOP Instance UID.

Transfer syntax policy (decided here, see also the conformance notes in the report):
* For each (SOP Class, transfer syntax of the file) the association proposes one presentation context with
  exactly that transfer syntax; for uncompressed files it also proposes Explicit and Implicit VR Little Endian.
* If the peer accepts the file's own transfer syntax, the bytes go as stored.
* If the file is uncompressed and the peer accepts only another uncompressed syntax, the dataset is read and
  re-encoded by pynetdicom into that syntax (same element values, same UIDs; only the encoding differs).
* A compressed file whose transfer syntax the peer does not accept is NOT decompressed: the outcome is a permanent
  failure naming the transfer syntax. Every object the node itself produces (SR, SEG, key image) is uncompressed,
  so this only concerns ``bmd-node send`` of compressed images to a peer that cannot take them.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from pydicom import dcmread
from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from service.export.requestor import REQUESTOR_HANDLERS
from service.export.transport import DeliveryOutcome, OutcomeKind
from service.receive.tls import client_context

logger = logging.getLogger(__name__)

# Send the dataset part of a file path as stored (no decode/re-encode) when the exact transfer syntax is accepted.
_config.STORE_SEND_CHUNKED_DATASET = True

# PS3.8 9.3.3.2: at most 128 presentation contexts (odd IDs 1..255) per association.
MAX_CONTEXTS_PER_ASSOCIATION = 128
DEFAULT_ACSE_TIMEOUT_S = 30.0
DEFAULT_DIMSE_TIMEOUT_S = 120.0
DEFAULT_NETWORK_TIMEOUT_S = 60.0
DEFAULT_CONNECT_TIMEOUT_S = 10.0

UNCOMPRESSED_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)

# Status codes, PS3.4 Annex B.2.3 and PS3.7 Annex C.
STATUS_SUCCESS = 0x0000
WARNING_STATUSES = frozenset({0x0001, 0xB000, 0xB006, 0xB007})
PERMANENT_FAILURE_STATUSES = frozenset(
    {
        0x0117,  # invalid SOP instance
        0x0118,  # no such SOP class
        0x0122,  # SOP class not supported
        0x0124,  # not authorised
        0x0210,  # duplicate invocation
        0x0211,  # unrecognised operation
        0x0212,  # mistyped argument
    }
)
# Association reject result values, PS3.8 9.3.4.
REJECTED_PERMANENT = 0x01
REJECTED_TRANSIENT = 0x02


class PeerLike(Protocol):
    """What the SCU needs of a ``[[peers]]`` entry (read-only, so frozen settings objects match)."""

    @property
    def name(self) -> str: ...
    @property
    def ae_title(self) -> str: ...
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...


def classify_status(status: int) -> OutcomeKind:
    """Classify a C-STORE response status (PS3.4 B.2.3): success, warning, permanent or transient failure."""
    if status == STATUS_SUCCESS:
        return OutcomeKind.SUCCESS
    if status in WARNING_STATUSES or (status & 0xF000) == 0xB000:
        return OutcomeKind.WARNING
    if (status & 0xFF00) == 0xA700:  # refused: out of resources
        return OutcomeKind.TRANSIENT
    if (status & 0xFF00) == 0xA900:  # error: data set does not match SOP class
        return OutcomeKind.PERMANENT
    if (status & 0xF000) == 0xC000:  # error: cannot understand
        return OutcomeKind.PERMANENT
    if status in PERMANENT_FAILURE_STATUSES:
        return OutcomeKind.PERMANENT
    # 0x0110 processing failure, 0xFE00 cancel, anything unknown: try again later.
    return OutcomeKind.TRANSIENT


def _outcome_for_status(status: int) -> DeliveryOutcome:
    kind = classify_status(status)
    return DeliveryOutcome(kind, status, f"C-STORE status 0x{status:04X}")


def _node_ae_title(config: Any) -> str:
    return str(config.node.ae_title)


def _timeouts(config: Any) -> dict[str, float]:
    exporter = getattr(config, "exporter", None)

    def pick(name: str, default: float) -> float:
        value = getattr(exporter, name, None) if exporter is not None else None
        return float(value) if value is not None else default

    return {
        "acse_timeout": pick("acse_timeout_seconds", DEFAULT_ACSE_TIMEOUT_S),
        "dimse_timeout": pick("dimse_timeout_seconds", DEFAULT_DIMSE_TIMEOUT_S),
        "network_timeout": pick("network_timeout_seconds", DEFAULT_NETWORK_TIMEOUT_S),
        "connection_timeout": pick("connect_timeout_seconds", DEFAULT_CONNECT_TIMEOUT_S),
    }


def _make_ae(config: Any) -> AE:
    ae = AE(ae_title=_node_ae_title(config))
    for name, value in _timeouts(config).items():
        setattr(ae, name, value)
    return ae


def tls_args(peer: PeerLike, config: Any) -> tuple[ssl.SSLContext, None] | None:
    """pynetdicom's ``tls_args`` for a peer with ``tls = true``: DICOM TLS (BCP 195), the peer's certificate
    verified against ``[node.tls] ca_certificates``, the node's own certificate sent as the client's."""
    if not getattr(peer, "tls", False):
        return None
    tls = config.node.tls
    if tls.ca_certificates is None:
        raise ValueError(f"peer {peer.name} has tls = true but [node.tls] ca_certificates is not set")
    return client_context(tls.ca_certificates, tls.certificate, tls.private_key), None


def association_failure(assoc: Association) -> DeliveryOutcome:
    """Outcome for an association that did not get established."""
    if assoc.is_rejected:
        primitive = assoc.acceptor.primitive
        result = getattr(primitive, "result", None)
        source = getattr(primitive, "result_source", None)
        diagnostic = getattr(primitive, "diagnostic", None)
        detail = f"association rejected (result={result}, source={source}, reason={diagnostic})"
        if result == REJECTED_PERMANENT:
            return DeliveryOutcome(OutcomeKind.PERMANENT, None, detail)
        return DeliveryOutcome(OutcomeKind.TRANSIENT, None, detail)
    if assoc.rejected_contexts and not assoc.accepted_contexts:
        # The peer accepted the association but none of the presentation contexts (pynetdicom then aborts).
        # PS3.8 9.3.3.2 result: 0x03 abstract syntax (SOP class) not supported, 0x04 transfer syntaxes not supported.
        why = {0x03: "SOP class not accepted", 0x04: "transfer syntax not accepted"}
        refused = sorted({f"{UID(cx.abstract_syntax).name}: {why.get(cx.result or 0, 'refused')}"
                          for cx in assoc.rejected_contexts})
        return DeliveryOutcome(OutcomeKind.PERMANENT, None, f"no presentation context accepted ({'; '.join(refused)})")
    if assoc.is_aborted:
        return DeliveryOutcome(OutcomeKind.TRANSIENT, None, "association aborted or connection failed")
    return DeliveryOutcome(OutcomeKind.TRANSIENT, None, "association not established (timeout or connection failed)")


def echo(peer: PeerLike, config: Any) -> bool:
    """C-ECHO the peer; True when it answered success."""
    ae = _make_ae(config)
    ae.add_requested_context(Verification)
    assoc = ae.associate(peer.host, int(peer.port), ae_title=peer.ae_title, tls_args=tls_args(peer, config),
                         evt_handlers=REQUESTOR_HANDLERS)
    if not assoc.is_established:
        logger.warning("echo %s: %s", peer.name, association_failure(assoc).detail)
        return False
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    ok = bool(status) and "Status" in status and int(status.Status) == STATUS_SUCCESS
    if not ok:
        logger.warning("echo %s: no success status", peer.name)
    return ok


@dataclass(frozen=True)
class _FileInfo:
    path: Path
    sop_class_uid: UID
    sop_instance_uid: UID
    transfer_syntax_uid: UID


def _read_file_info(path: Path) -> _FileInfo:
    meta = read_file_meta_info(path)
    missing = [
        kw for kw in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID") if kw not in meta
    ]
    if missing:
        raise ValueError(f"{path.name}: file meta lacks {', '.join(missing)}")
    return _FileInfo(
        path,
        UID(meta.MediaStorageSOPClassUID),
        UID(meta.MediaStorageSOPInstanceUID),
        UID(meta.TransferSyntaxUID),
    )


def _proposed_syntaxes(transfer_syntax: UID) -> tuple[UID, ...]:
    if transfer_syntax in UNCOMPRESSED_SYNTAXES:
        return (transfer_syntax, *(ts for ts in UNCOMPRESSED_SYNTAXES if ts != transfer_syntax))
    return (transfer_syntax,)


def _context_pairs(infos: Iterable[_FileInfo]) -> list[tuple[UID, UID]]:
    pairs: list[tuple[UID, UID]] = []
    seen: set[tuple[UID, UID]] = set()
    for info in infos:
        for ts in _proposed_syntaxes(info.transfer_syntax_uid):
            pair = (info.sop_class_uid, ts)
            if pair not in seen:
                seen.add(pair)
                pairs.append(pair)
    return pairs


class StoreSession:
    """One association to a peer, proposing the contexts needed for a known set of files.

    Use as a context manager; ``store(path)`` sends one file and returns its classified outcome. When the
    association cannot be established, ``failure`` says why and every ``store`` returns that outcome.
    """

    def __init__(self, peer: PeerLike, config: Any, paths: Sequence[Path]) -> None:
        self.peer = peer
        self._config = config
        self._infos: dict[Path, _FileInfo] = {}
        self._unreadable: dict[Path, str] = {}
        for path in paths:
            try:
                self._infos[Path(path)] = _read_file_info(Path(path))
            except (OSError, ValueError) as exc:
                self._unreadable[Path(path)] = f"cannot read file meta: {type(exc).__name__}: {exc}"
        self._assoc: Association | None = None
        self.failure: DeliveryOutcome | None = None
        self._message_id = 0

    def __enter__(self) -> StoreSession:
        self.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def open(self) -> None:
        pairs = _context_pairs(self._infos.values())
        if not pairs:
            self.failure = DeliveryOutcome(OutcomeKind.PERMANENT, None, "no readable file to send")
            return
        if len(pairs) > MAX_CONTEXTS_PER_ASSOCIATION:
            raise ValueError(
                f"paths need {len(pairs)} presentation contexts, more than {MAX_CONTEXTS_PER_ASSOCIATION}: "
                "send them in smaller batches"
            )
        ae = _make_ae(self._config)
        for sop_class, ts in pairs:
            ae.add_requested_context(sop_class, ts)
        try:
            assoc = ae.associate(self.peer.host, int(self.peer.port), ae_title=self.peer.ae_title,
                                 tls_args=tls_args(self.peer, self._config), evt_handlers=REQUESTOR_HANDLERS)
        except Exception as exc:  # pynetdicom raises on bad addresses etc.: treat as transient
            self.failure = DeliveryOutcome(OutcomeKind.TRANSIENT, None, f"association failed: {type(exc).__name__}")
            return
        if not assoc.is_established:
            self.failure = association_failure(assoc)
            logger.warning("store to %s: %s", self.peer.name, self.failure.detail)
            return
        self._assoc = assoc

    def close(self) -> None:
        if self._assoc is not None and self._assoc.is_established:
            self._assoc.release()
        self._assoc = None

    def _accepted(self, sop_class: UID, ts: UID) -> bool:
        assoc = self._assoc
        if assoc is None:
            return False
        return any(
            cx.abstract_syntax == sop_class and cx.transfer_syntax and cx.transfer_syntax[0] == ts
            for cx in assoc.accepted_contexts
        )

    def store(self, path: Path) -> DeliveryOutcome:
        path = Path(path)
        if path in self._unreadable:
            return DeliveryOutcome(OutcomeKind.PERMANENT, None, self._unreadable[path])
        info = self._infos.get(path)
        if info is None:
            raise ValueError(f"{path} was not given when the session was opened")
        if self.failure is not None:
            return self.failure
        assoc = self._assoc
        if assoc is None or not assoc.is_established:
            return DeliveryOutcome(OutcomeKind.TRANSIENT, None, "association lost before the object was sent")
        payload: Path | Any
        if self._accepted(info.sop_class_uid, info.transfer_syntax_uid):
            payload = path  # chunked: dataset bytes as stored
        elif info.transfer_syntax_uid in UNCOMPRESSED_SYNTAXES and any(
            self._accepted(info.sop_class_uid, ts) for ts in UNCOMPRESSED_SYNTAXES
        ):
            payload = dcmread(path)  # same values, re-encoded into the accepted uncompressed syntax
        else:
            accepted_any = any(cx.abstract_syntax == info.sop_class_uid for cx in assoc.accepted_contexts)
            what = (
                f"transfer syntax {info.transfer_syntax_uid.name} not accepted"
                if accepted_any
                else f"SOP class {info.sop_class_uid.name} not accepted"
            )
            return DeliveryOutcome(OutcomeKind.PERMANENT, None, f"peer {self.peer.name}: {what}")
        self._message_id = (self._message_id % 0xFFFF) + 1
        try:
            status = assoc.send_c_store(payload, msg_id=self._message_id)
        except (OSError, RuntimeError, ValueError, AttributeError) as exc:
            return DeliveryOutcome(OutcomeKind.TRANSIENT, None, f"send failed: {type(exc).__name__}: {exc}")
        if not status or "Status" not in status:
            # pynetdicom returns an empty Dataset on abort, DIMSE timeout or an invalid response.
            return DeliveryOutcome(OutcomeKind.TRANSIENT, None, "no C-STORE response status (abort or timeout)")
        return _outcome_for_status(int(status.Status))

    def sop_instance_uid(self, path: Path) -> str | None:
        info = self._infos.get(Path(path))
        return str(info.sop_instance_uid) if info else None


class DicomStoreTransport:
    """The DICOM C-STORE transport: one association per batch (``StoreSession``)."""

    def open_session(self, peer: PeerLike, config: Any, paths: Sequence[Path]) -> StoreSession:
        return StoreSession(peer, config, paths)


def store_dataset_file(path: Path, peer: PeerLike, config: Any) -> DeliveryOutcome:
    """Send one file on its own association and classify the answer."""
    with StoreSession(peer, config, [Path(path)]) as session:
        return session.store(Path(path))


def _batches(paths: Sequence[Path]) -> Iterator[list[Path]]:
    """Split paths so that each association needs at most MAX_CONTEXTS_PER_ASSOCIATION contexts."""
    batch: list[Path] = []
    pairs: set[tuple[UID, UID]] = set()
    for path in paths:
        try:
            info = _read_file_info(path)
            new_pairs = {(info.sop_class_uid, ts) for ts in _proposed_syntaxes(info.transfer_syntax_uid)}
        except (OSError, ValueError):
            new_pairs = set()
        if batch and len(pairs | new_pairs) > MAX_CONTEXTS_PER_ASSOCIATION:
            yield batch
            batch, pairs = [], set()
        batch.append(path)
        pairs |= new_pairs
    if batch:
        yield batch


def send_outcomes(paths: Sequence[Path], peer: PeerLike, config: Any) -> list[DeliveryOutcome]:
    """Send files over as few associations as possible; one outcome per path, in order."""
    outcomes: list[DeliveryOutcome] = []
    for batch in _batches([Path(p) for p in paths]):
        with StoreSession(peer, config, batch) as session:
            outcomes.extend(session.store(p) for p in batch)
    return outcomes


# Status reported by ``send_files`` for a file that got no DIMSE status (not sent, association failure, abort).
NO_STATUS = -1


def send_files(paths: Sequence[Path], peer: PeerLike, config: Any) -> list[int]:
    """Send files; returns the C-STORE status per file (``NO_STATUS`` = -1 when none was received)."""
    return [o.status_code if o.status_code is not None else NO_STATUS for o in send_outcomes(paths, peer, config)]
