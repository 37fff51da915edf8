"""The node's listening server: pynetdicom's threaded association server with the IP allow-list, one listening
socket shared by every receiver process, and new connections balanced over those processes (used by
service/receive/scp.py)."""

from __future__ import annotations

import copy
import logging
import select
import socket
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import ThreadedAssociationServer

from service.receive.limits import ConnectionSlots
from service.receive.peers import PeerAllowList
from service.receive.recorder import BatchRecorder
from service.receive.settings import NetworkLimits
from service.receive.shared_limits import REJECTED

logger = logging.getLogger(__name__)

PLAIN, TLS = "plain", "tls"
BALANCE_WAIT_S = 0.02
"""How long a receiver process with more open connections than the least busy one leaves a new connection to the
others before it accepts it itself."""


class SupportedContexts(list[PresentationContext]):
    """The server's supported presentation contexts, with a cheap copy for each association.

    pynetdicom's request handler deep-copies the server's contexts for every association it accepts
    (``RequestHandler._create_association``): 170 storage SOP classes with 16 transfer syntaxes each, every UID
    rebuilt and validated again, about 17 ms of CPU per association (``python -m bench.receive_costs``; a PACS
    that opens one association per image pays it per image). A context's state is immutable values (UIDs, ints,
    bools) and its list of transfer syntaxes, so a copy of each context with a list of its own is as independent
    of the server's as a deep copy."""

    def __deepcopy__(self, memo: dict[int, Any]) -> list[PresentationContext]:
        copies = []
        for context in self:
            duplicate = copy.copy(context)
            duplicate._transfer_syntax = list(context._transfer_syntax)
            copies.append(duplicate)
        return copies


class AllowListAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with the IP allow-list applied as soon as a connection is accepted.

    Several receiver processes serve one port through ONE listening socket: the node's process binds it and hands
    it to each receiver process it spawns (``listening``: a subclass made by ``on_socket``), and every process
    accepts from it. The socket is non-blocking, so a process that loses the race for a connection goes back to
    waiting. ``balance`` (when set) runs before each accept: a process with more open connections than the least
    busy one waits a moment, so that connections spread evenly over the processes. (SO_REUSEPORT, used before,
    pins each connection to a process by a hash of its addresses: four associations often landed 3 + 1 or 4 + 0 on
    two processes, and a second node started by mistake on the same port silently took a share of them.)
    ``shutdown()`` also flushes and stops the batched recorder of the server (when it has one)."""

    allow_list: PeerAllowList = PeerAllowList(frozenset())
    limits: NetworkLimits = NetworkLimits()
    slots: ConnectionSlots | None = None
    tls_context: Any = None
    """DICOM TLS: an ssl.SSLContext (service/receive/tls.py); the handshake runs in the connection's thread."""
    tls_fingerprints: dict[str, frozenset[str]] | None = None
    companions: tuple[AllowListAssociationServer, ...] = ()
    """The TLS server next to the plain one (same handlers, recorder and slots), shut down with it."""
    batch_recorder: BatchRecorder | None = None
    listening: socket.socket | None = None
    """The listening socket of the node's process (receiver processes); None: bind one."""
    balance: Callable[[], bool] | None = None
    """True when this process holds more open connections than the least busy receiver process."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.contexts = SupportedContexts(self.contexts)

    @classmethod
    def on_socket(cls, listening: socket.socket | None) -> type[AllowListAssociationServer]:
        if listening is None:
            return cls
        return type(cls.__name__, (cls,), {"listening": listening})

    def server_bind(self) -> None:
        if self.listening is None:
            super().server_bind()
        else:
            self.socket.close()
            self.socket = self.listening
            self.server_address = self.socket.getsockname()
        self.socket.setblocking(False)

    def server_activate(self) -> None:
        if self.listening is None:
            super().server_activate()

    def server_close(self) -> None:
        # close only: pynetdicom's shutdown(SHUT_RDWR) would end the accepting of every process sharing the socket
        self.socket.close()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        if self.balance is not None and self.balance():
            self._leave_to_others(BALANCE_WAIT_S)
        return super().get_request()  # BlockingIOError (OSError): another process took it; socketserver goes on

    def _leave_to_others(self, seconds: float) -> None:
        """Every process was woken by the new connection: leave it to the less busy ones for up to ``seconds``
        (until it is gone from the accept queue), then take it if it is still there."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            readable, _, _ = select.select([self.socket], [], [], 0)
            if not readable:
                return
            time.sleep(0.001)

    serving = False
    announce: Callable[[], None] | None = None
    """Called once the accept loops run (marks this process accepting in the shared state)."""

    def serve_in_thread(self) -> None:
        """Start accepting (the accept loop in a daemon thread); the companion servers too."""
        for server in (self, *self.companions):
            timestamp = datetime.now().strftime("%Y%m%d%H%M%S")
            server.serving = True
            threading.Thread(target=server.serve_forever, name=f"AcceptorServer@{timestamp}", daemon=True).start()
        if self.announce is not None:
            self.announce()

    def shutdown(self) -> None:
        for companion in self.companions:
            companion.shutdown()
        if self.serving:
            super().shutdown()  # pynetdicom's: stops the accept loop, closes the socket, leaves ae._servers
        else:  # it never served (the node stopped before its receiver processes were ready)
            self.server_close()
            if self in self.ae._servers:
                self.ae._servers.remove(self)
        if self.batch_recorder is not None:
            self.batch_recorder.stop()

    def verify_request(self, request: Any, client_address: Any) -> bool:
        address = str(client_address[0])
        if not self.allow_list.ip_allowed(address):
            logger.warning("connection from %s refused: address is not a configured peer", address)
            if self.slots is not None:
                self.slots.count(REJECTED, "address_not_allowed")
            return False
        return self.slots is None or self.slots.acquire(address)


def listening_sockets(server: AllowListAssociationServer) -> dict[str, socket.socket]:
    """The listening socket of ``server`` and of its companion, by kind (what ``start_scp`` takes as
    ``listening``)."""
    return {TLS if each.tls_context is not None else PLAIN: each.socket for each in (server, *server.companions)}
