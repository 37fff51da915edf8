"""Loopback TCP ports for tests and benchmarks: the one place that asks the kernel for a free port, and the one
that reads which process holds which TCP connection (/proc)."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOOPBACK = "127.0.0.1"


@contextmanager
def held_port(host: str = LOOPBACK) -> Iterator[socket.socket]:
    """A TCP socket bound to a free port of ``host`` (port 0: the kernel picks), held for the block.

    The port stays taken while the block runs (``listen()`` on the socket to refuse other servers for good).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        yield sock


def port_of(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port free on ``host`` now (bound, read back, released): for a server the test starts next."""
    with held_port(host) as sock:
        return port_of(sock)


def wait_for_port(port: int, timeout_s: float = 20.0, host: str = LOOPBACK) -> None:
    """Return once something accepts connections on ``host:port``; TimeoutError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout_s} s")


def established_inodes(local_port: int | None = None) -> set[str]:
    """Socket inodes of the established IPv4 TCP connections (whose local end is ``local_port``, when given), from
    /proc/net/tcp."""
    rows = [row.split() for row in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    return {row[9] for row in rows if row[3] == "01"
            and (local_port is None or row[1].endswith(f":{local_port:04X}"))}


def sockets_held(pid: int, inodes: set[str]) -> int:
    """How many of ``inodes`` process ``pid`` holds open (/proc/<pid>/fd)."""
    held = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:[") and target[8:-1] in inodes:
                held += 1
    return held
