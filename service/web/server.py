"""The HTTP server of the node: uvicorn (asyncio, h11) in a thread of ``serve``, on ``[node] http_host``
(127.0.0.1 by default) and ``http_port``.

Connections cost a socket and a small protocol object, never a thread. Limits, so that half-open or idle
connections cannot hold the server:
* ``REQUEST_HEADER_TIMEOUT_SECONDS``: a connection whose request head is not complete within 10 s of connecting
  (or of the end of its previous response) is closed; uvicorn itself has no such deadline (slowloris);
* ``KEEP_ALIVE_SECONDS`` (uvicorn ``timeout_keep_alive``): an idle keep-alive connection is closed after 5 s;
* ``MAX_CONNECTIONS_PER_ADDRESS``: one client address holds at most 16 connections; more are closed at once, so
  that one host (a scanner, a slowloris) cannot take the server from the others (monitoring, users);
* ``MAX_CONNECTIONS`` (uvicorn ``limit_concurrency``): beyond 128 open connections or running requests, new
  requests get 503 at once;
* ``MAX_HEADER_BYTES`` (``h11_max_incomplete_event_size``): a request head over 16 KiB is refused (400);
* ``BACKLOG``: pending connections the kernel queues before accept.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any, ClassVar

import sqlalchemy
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.config import Config
from service.web.app import build_app

log = logging.getLogger(__name__)

REQUEST_HEADER_TIMEOUT_SECONDS = 10.0
KEEP_ALIVE_SECONDS = 5
MAX_CONNECTIONS = 128
MAX_CONNECTIONS_PER_ADDRESS = 16
MAX_HEADER_BYTES = 16 * 1024
BACKLOG = 128
STOP_TIMEOUT_SECONDS = 10.0


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request head and a cap on connections per client address
    (see the module docstring). ``per_address`` counts open connections per address (one dict per server, all
    protocol objects run in the server's event loop thread)."""

    per_address: ClassVar[dict[str, int]] = {}

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._address = self.client[0] if self.client else ""
        self.per_address[self._address] = self.per_address.get(self._address, 0) + 1
        if self.per_address[self._address] > MAX_CONNECTIONS_PER_ADDRESS:
            log.debug("http: more than %d connections from one address: closing one", MAX_CONNECTIONS_PER_ADDRESS)
            transport.close()
            return
        self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        left = self.per_address.get(self._address, 1) - 1
        if left > 0:
            self.per_address[self._address] = left
        else:
            self.per_address.pop(self._address, None)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_head_deadline()

    def _arm_head_deadline(self) -> None:
        self.loop.call_later(REQUEST_HEADER_TIMEOUT_SECONDS, self._head_deadline, self.cycle)

    def _head_deadline(self, cycle_when_armed: Any) -> None:
        """Close when no new request head arrived since arming and none is being answered."""
        waiting = self.cycle is cycle_when_armed and (self.cycle is None or self.cycle.response_complete)
        if waiting and not self.transport.is_closing():
            log.debug("http: closing a connection whose request did not arrive in time")
            self.transport.close()


class HttpServer:
    """A running server: ``port`` (the bound one, also with http_port 0), ``stop()``."""

    def __init__(self, server: uvicorn.Server, sock: socket.socket, thread: threading.Thread) -> None:
        self._server = server
        self._socket = sock
        self._thread = thread
        self.host, self.port = sock.getsockname()[:2]

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=STOP_TIMEOUT_SECONDS)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout=STOP_TIMEOUT_SECONDS)
        self._socket.close()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(BACKLOG)  # connections queue from now on, before the server thread runs
    return sock


def start_http(config: Config, engine: sqlalchemy.Engine, host: str | None = None,
               components: Callable[[], dict[str, bool]] | None = None) -> HttpServer:
    """Bind now (an error here means the port is taken) and serve in a daemon thread."""
    app = build_app(config, engine, components)
    sock = _bind(host or config.node.http_host, config.node.http_port)
    protocol = type("NodeH11Protocol", (DeadlineH11Protocol,), {"per_address": {}})  # counts of this server only
    server_config = uvicorn.Config(
        app, http=protocol, lifespan="off", access_log=False, log_config=None, server_header=False,
        timeout_keep_alive=KEEP_ALIVE_SECONDS, limit_concurrency=MAX_CONNECTIONS,
        h11_max_incomplete_event_size=MAX_HEADER_BYTES, backlog=BACKLOG, timeout_graceful_shutdown=5)
    server = uvicorn.Server(server_config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="http-server", daemon=True)
    thread.start()
    handle = HttpServer(server, sock, thread)
    log.info("HTTP (dashboard, /health, /metrics) on %s:%s", handle.host, handle.port)
    return handle


def run_http(config: Config, engine: sqlalchemy.Engine, stop_event: threading.Event,
             components: Callable[[], dict[str, bool]] | None = None) -> None:
    """``serve``'s HTTP part: serve until ``stop_event``; returns early (an error for ``serve``) when uvicorn
    stops on its own."""
    server = start_http(config, engine, components=components)
    try:
        while not stop_event.wait(1.0):
            if not server.running:
                raise RuntimeError("the HTTP server stopped")
    finally:
        server.stop()
