"""The node's C-STORE / C-ECHO SCP (pynetdicom), with a peer allow-list.

Who may talk to us: an association is accepted only when the calling AE title AND the remote IP address match the
same ``[[peers]]`` entry. The IP is checked in the accept loop (``verify_request`` of the socketserver, right after
``accept()``), so a socket from an unknown address is closed before a single byte of it is read. The AE title is
known only once the A-ASSOCIATE-RQ has been read; it must match a peer's exactly as sent (trailing padding aside:
' TESTSCU' is not 'TESTSCU'); an AE title / IP pair that matches no peer is rejected with
A-ASSOCIATE-RJ (rejected-permanent, service-user, calling AE title not recognised), except an association that
proposes only the Verification SOP class (C-ECHO) from an allowed address: it is accepted, so that `echoscu` with
any AE title can check the node from a peer's host; nothing can be stored on it. Rejections are logged with
the address and AE title only (no patient data is available or logged at that point). With ``[node]
check_called_ae`` (default) a called AE title other than the node's is rejected first (reason: called AE title not
recognised), echo included. An allowed peer at its cap of open associations (``max_associations_per_peer`` or
its own ``max_associations``, over all receiver processes) is rejected transiently (local-limit-exceeded), so that
it retries later (these checks: service/receive/admission.py). Connection caps, PDU size limits and read
deadlines: service/receive/limits.py; the caps and the association counters are shared by all receiver processes:
service/receive/shared_limits.py; the listening socket they share and the balancing of new connections over them:
service/receive/server.py.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
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
from pynetdicom import AE, AllStoragePresentationContexts, _config, evt
from pynetdicom.pdu_primitives import A_RELEASE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from service.db.engine import make_engine
from service.db.queries import record_instance, record_instances, recorded_instance_paths
from service.logging import setup_logging
from service.receive.admission import check_calling_peer, count_accepted, count_rejected
from service.receive.handlers import ReceivedInstance, Recorder, StoreHandler, handle_echo
from service.receive.limits import ConnectionSlots, GuardedRequestHandler
from service.receive.peers import PeerAllowList
from service.receive.peers import normalise_ip as normalise_ip  # re-exported (tests, callers)
from service.receive.peers import resolve_host as resolve_host
from service.receive.quarantine import QuarantineCleaner
from service.receive.reconcile import reconcile_spool
from service.receive.recorder import BatchRecorder
from service.receive.server import PLAIN, TLS, AllowListAssociationServer, listening_sockets
from service.receive.settings import NetworkLimits
from service.receive.shared_limits import SharedReceiveState, publish
from service.receive.spool import SPOOL_MODE_DIRECT, Spool
from service.receive.supervision import ReceiverProcess, supervise
from service.receive.tls import TlsSettings, server_context

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
PR_SET_PDEATHSIG = 1
RECEIVERS_READY_TIMEOUT_S = 60.0
RECEIVE_SWITCH_INTERVAL_S = 0.0005
"""The interpreter's thread switch interval in a receiving process (default 5 ms). Every syscall of the spool
write (open, write, fsync, rename) releases the interpreter lock; getting it back behind a busy association thread
took up to the full interval each time, which made a 1 ms durable write cost 5-20 ms with several associations."""


def build_ae(config: Any) -> AE:
    # pynetdicom's "standard" event logging runs on every PDU and DIMSE message; for a C-STORE-RQ it copies the whole
    # received dataset (to log "Data Set: Present") and formats a page of DEBUG lines, for every image. The node
    # logs associations itself (service/receive/admission.py); pynetdicom still logs its warnings.
    _config.LOG_HANDLER_LEVEL = "none"
    limits = config.node if isinstance(config.node, NetworkLimits) else NetworkLimits()
    ae = AE(ae_title=str(config.node.ae_title))
    ae.maximum_pdu_size = limits.max_pdu_bytes  # announced; bigger PDUs are refused (service/receive/limits.py)
    ae.maximum_associations = limits.max_connections
    ae.acse_timeout = limits.association_request_timeout_seconds
    ae.network_timeout = limits.idle_timeout_seconds
    ae.dimse_timeout = limits.dimse_timeout_seconds
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, list(SUPPORTED_TRANSFER_SYNTAXES))
    ae.add_supported_context(Verification, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    return ae


def db_recorder(engine: Any) -> Recorder:
    """Recorder that writes an Instance row through node-core's query API."""

    def record(row: ReceivedInstance) -> bool:
        return bool(record_instance(engine, row))

    return record


def db_batch_recorder(engine: Any) -> BatchRecorder:
    """The SCP's background recorder: rows committed in batches through node-core's query API."""
    return BatchRecorder(lambda rows: record_instances(engine, rows), db_recorder(engine)).start()


def _release_barrier(event: Any, recorder: BatchRecorder) -> None:
    """EVT_ACSE_RECV: before the A-RELEASE-RP goes out, wait until the rows of every instance acknowledged so far
    are committed, so that a sender whose association ended cleanly finds its instances in the database."""
    primitive = event.primitive
    if isinstance(primitive, A_RELEASE) and primitive.result is None and not recorder.wait_recorded():
        logger.warning("association released before its instances were recorded (database slow or down); "
                       "their spool files are recorded later")


def reconcile(storage_dir: Path, engine: Any, *, while_receiving: bool = False) -> None:
    """Start-up: record spool files whose database row was lost (the process died before the recorder's commit).
    ``while_receiving``: after a receiver process died, the node still running: its pool is drained and the files it
    acknowledged are recorded now, not at the node's next start; the temporary files of the live processes stay."""
    reconcile_spool(storage_dir, lambda: recorded_instance_paths(engine),
                    lambda rows: record_instances(engine, rows), remove_partials=not while_receiving)


def start_scp(
    config: Any,
    engine: Any,
    *,
    recorder: Recorder | None = None,
    spool: Spool | None = None,
    reconcile_at_start: bool = True,
    shared: SharedReceiveState | None = None,
    row: int = 0,
    listening: Mapping[str, socket.socket] | None = None,
    serve: bool = True,
) -> AllowListAssociationServer:
    """Start the SCP in a background thread and return the running server (``server.shutdown()`` stops it).

    ``recorder`` and ``spool`` default to the database behind ``engine`` (batched recorder, see
    service/receive/recorder.py) and ``config.node.storage_dir``; tests may inject others (e.g. a spool whose disk
    is full; an injected recorder is called synchronously for every row). ``reconcile_at_start``: first remove
    temporary files and record the spool files the database lacks (service/receive/reconcile.py); the extra
    receiver processes, started after it, skip it. ``shared``, ``row``: the caps and counters of all receiver
    processes and this process's row in them (service/receive/shared_limits.py); by default a state of this process
    alone. Row 0 (the node's own process) publishes its state for /metrics. ``listening``: the node's listening
    sockets ("plain", "tls"; ``listening_sockets``), for a receiver process (it accepts from them instead of
    binding); ``serve=False``: bound, not yet accepting (``server.serve_in_thread()`` starts it), so that the
    node's process can start its receiver processes first.
    """
    storage_dir = Path(config.node.storage_dir)
    storage_dir.mkdir(parents=True, exist_ok=True)
    if reconcile_at_start and engine is not None:
        reconcile(storage_dir, engine)
    spool = spool or Spool(storage_dir, reserve_bytes=config.storage.min_free_bytes,
                           mode=getattr(config.node, "spool_mode", SPOOL_MODE_DIRECT))
    batch = None if recorder is not None else db_batch_recorder(engine)
    allow_list = PeerAllowList.from_peers(config.peers)
    if not allow_list.entries:
        logger.warning("no [[peers]] configured: every association will be refused")

    shared = shared or SharedReceiveState.for_node(config.node, config.peers, rows=1)
    if row == 0:
        publish(shared)
    ae = build_ae(config)
    store = StoreHandler(spool, recorder) if batch is None else StoreHandler(spool, batch.record_and_wait, batch)
    handlers = [
        (evt.EVT_C_STORE, store),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_REQUESTED, check_calling_peer,
         [allow_list, str(config.node.ae_title) if config.node.check_called_ae else None]),
        (evt.EVT_ACCEPTED, count_accepted),
        (evt.EVT_REJECTED, count_rejected),
        *([] if batch is None else [(evt.EVT_ACSE_RECV, _release_barrier, [batch])]),
    ]
    slots = ConnectionSlots(shared.per_address, shared.total, shared=shared, row=row)
    tls: TlsSettings = getattr(config.node, "tls", TlsSettings())
    sockets = dict(listening or {})
    balance = None if shared.rows == 1 else lambda: shared.busier_than_least(row)
    servers = []
    if tls.plain:
        servers.append(_server(ae, config, int(config.node.port), handlers, allow_list, slots, sockets.get(PLAIN),
                               balance))
    if tls.enabled:
        servers.append(_server(ae, config, tls.port, handlers, allow_list, slots, sockets.get(TLS), balance, tls))
    server = servers[0]
    server.companions = tuple(servers[1:])
    server.batch_recorder = batch
    server.announce = lambda: shared.set_accepting(row)
    for each in servers:
        host, bound = each.server_address[:2]
        logger.info("SCP %s listening on %s:%s%s", config.node.ae_title, host, bound,
                    " (DICOM TLS)" if each.tls_context is not None else "")
    if serve:
        server.serve_in_thread()
    return server


def _server(ae: AE, config: Any, port: int, handlers: list[Any], allow_list: PeerAllowList, slots: ConnectionSlots,
            listening: socket.socket | None, balance: Callable[[], None] | None,
            tls: TlsSettings | None = None) -> AllowListAssociationServer:
    """One server, bound (or on ``listening``), not yet accepting (plain, or DICOM TLS with the handshake in each
    connection's thread)."""
    server_class = AllowListAssociationServer.on_socket(listening)
    server = ae.make_server((str(config.node.host), port), evt_handlers=handlers,
                            server_class=server_class, request_handler=GuardedRequestHandler)
    server.allow_list = allow_list
    server.limits = config.node
    server.slots = slots
    server.balance = balance
    if tls is not None:
        server.tls_context = server_context(tls)
        if tls.require_client_certificate:
            server.tls_fingerprints = allow_list.fingerprints_by_address()
    ae._servers.append(server)  # so that server.shutdown() (which removes it) and ae.shutdown() work
    return server


def start_receiver_processes(config: Any, listening: Mapping[str, socket.socket], count: int,
                             shared: SharedReceiveState | None = None, first_row: int = 1) -> list[ReceiverProcess]:
    """``count`` receiver processes (spawned) accepting from the node's ``listening`` sockets next to this
    process's SCP; with ``shared``, they take rows ``first_row``.. of it."""
    context = multiprocessing.get_context("spawn")
    out = []
    for index in range(count):
        stop, ready = context.Event(), context.Event()
        row = first_row + index if shared is not None else 0
        process = context.Process(target=receiver_process_main,
                                  args=(config, dict(listening), os.getpid(), stop, shared, row, ready),
                                  name="receiver", daemon=True)
        process.start()
        out.append(ReceiverProcess(process, stop, ready))
    return out


def _die_with_parent(parent_pid: int) -> None:
    """A receiver process must not outlive the node's process (it would keep answering on the port): on Linux
    the kernel kills it when its parent dies (PR_SET_PDEATHSIG); the caller also polls the parent's pid."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:
        os._exit(0)


def receiver_process_main(config: Any, listening: Mapping[str, socket.socket], parent_pid: int, stop: Any,
                          shared: SharedReceiveState | None = None, row: int = 0, ready: Any = None) -> None:
    """An extra receiver process: the SCP on the node's listening sockets, its own recorder and database
    connection, its row ``row`` of the shared caps; sets ``ready`` once it accepts."""
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the group; the parent decides when to stop
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=stop.set, daemon=True).start())
    setup_logging(config.logging)
    sys.setswitchinterval(RECEIVE_SWITCH_INTERVAL_S)
    engine = make_engine(str(config.node.database_url))
    server = start_scp(config, engine, reconcile_at_start=False, shared=shared, row=row, listening=listening)
    if ready is not None:
        ready.set()
    try:
        while not stop.wait(0.25):
            if os.getppid() != parent_pid:
                logger.error("the node's process is gone: receiver process stopping")
                break
    finally:
        server.shutdown()
        engine.dispose()


def _recover_after(row: int, config: Any, engine: Any) -> None:
    """Receiver process ``row`` died: what it acknowledged and had not recorded (in its pool, or moved into place
    without a row) is recorded now, not at the node's next start."""
    try:
        reconcile(Path(config.node.storage_dir), engine, while_receiving=True)
    except Exception:  # the database is down, say: the next start-up reconciles (nothing is lost meanwhile)
        logger.exception("receiver process %d: its spool could not be reconciled now; it is at the next start", row)


def receive_process_count(config: Any) -> int:
    """``[node] receive_processes``; 0 means min(4, CPU count)."""
    configured = int(getattr(config.node, "receive_processes", 1))
    return configured if configured > 0 else max(1, min(4, os.cpu_count() or 1))


def run_scp(config: Any, engine: Any, stop_event: threading.Event, ready: threading.Event | None = None) -> None:
    """Serve until ``stop_event`` is set: the SCP in this process (after the spool reconciliation) plus
    ``receive_processes - 1`` receiver processes accepting from the same listening socket, each with its own
    recorder and database connection, so that receiving scales with cores instead of sharing one interpreter lock.
    This process accepts only once its receiver processes do (or ``RECEIVERS_READY_TIMEOUT_S`` passed), so that the
    first connections spread over all of them too; then it sets ``ready`` (when given)."""
    sys.setswitchinterval(RECEIVE_SWITCH_INTERVAL_S)
    quarantine = QuarantineCleaner(Path(config.node.storage_dir), config.quarantine)
    quarantine.run_if_due()  # at start-up, then every cleanup_interval_seconds
    extra = receive_process_count(config) - 1
    shared = SharedReceiveState.for_node(config.node, config.peers, rows=1 + extra)
    server = start_scp(config, engine, shared=shared, serve=False)
    child_config = config.with_node(port=int(server.server_address[1]))  # the bound port, when 0 was configured
    listening = listening_sockets(server)
    children = start_receiver_processes(child_config, listening, extra, shared)
    deadline = time.monotonic() + RECEIVERS_READY_TIMEOUT_S
    for child in children:
        if not child.ready.wait(max(0.0, deadline - time.monotonic())):
            logger.warning("receiver processes not ready after %.0f s: accepting without them",
                           RECEIVERS_READY_TIMEOUT_S)
            break
    server.serve_in_thread()
    logger.info("receiving with %d process(es)", 1 + extra)
    if ready is not None:
        ready.set()
    try:
        while not stop_event.wait(1.0):
            quarantine.run_if_due()
            for index in range(len(children)):
                if not stop_event.is_set():
                    children[index] = supervise(children[index], index + 1, time.monotonic(), shared,
                                                lambda row: start_receiver_processes(child_config, listening, 1,
                                                                                     shared, first_row=row)[0],
                                                lambda row: _recover_after(row, config, engine))
    finally:
        for child in children:
            child.stop.set()
        server.shutdown()
        for child in children:
            child.process.join(timeout=30)
            if child.process.is_alive():
                child.process.terminate()
        shared.close()
        logger.info("SCP stopped")
