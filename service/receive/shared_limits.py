"""Connection caps and association counters shared by every receiver process of the node (issues 19 and 20).

The node's process creates one ``SharedReceiveState`` before it spawns the receiver processes and hands it to each
of them as a Process argument: a block of shared memory (a ``RawArray`` of the spawn context, int64) and the path of
a lock file. Layout: one row per process (row 0: the node's own SCP, row k: receiver process k), each

    [open connections | accepting (1 once the process accepts connections) |
     open associations per peer (a column per [[peers]] entry, sorted by name) |
     max_connections address entries: (address as two int64, open connections)]

then one counter per (outcome, reason) of ``ASSOCIATION_OUTCOMES``. A check-and-take reads every row, so the caps
hold over all processes; addresses are kept exactly (IPv4 as IPv4-mapped IPv6), not hashed, so two addresses never
share a cap. A process holds at most ``max_connections`` connections, so its row never runs out of entries.

Crash safety:
* A receiver process that dies (SIGKILL, the OOM killer) took its sockets with it; the node's process zeroes its
  row (``clear_row``) before it starts the replacement, so nothing it held stays counted.
* The lock is an ``flock`` on a lock file plus a ``threading.Lock`` (an flock is held per open file, so the threads
  of one process need their own lock). A multiprocessing.Lock held by a process that is killed stays held for ever
  and every other receiver would hang at its next accept(); the kernel drops an flock when its holder dies. The
  lock file is an empty temporary file (not in the spool), removed by ``close``; with one process there is none.
* The counters are not per row: they only grow, and a restarted process adds to the same ones.

``publish`` makes the node's state the one ``association_counts`` reads (for /metrics, service/web).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import multiprocessing
import os
import struct
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from service.receive.peers import normalise_ip

ACCEPTED, REJECTED, ABORTED = "accepted", "rejected", "aborted"
ASSOCIATION_OUTCOMES: tuple[tuple[str, str], ...] = (
    (ACCEPTED, "peer"),  # a configured peer's calling AE title at its address
    (ACCEPTED, "echo_only"),  # C-ECHO only, any AE title, from a peer's address
    (REJECTED, "address_not_allowed"),  # closed right after accept()
    (REJECTED, "too_many_per_address"),
    (REJECTED, "too_many_overall"),
    (REJECTED, "tls_handshake_failed"),
    (REJECTED, "client_certificate_refused"),
    (REJECTED, "pdu_too_large"),  # the A-ASSOCIATE-RQ's PDU header
    (REJECTED, "request_timeout"),  # no complete A-ASSOCIATE-RQ in time (or the peer closed before one)
    (REJECTED, "wrong_called_ae"),
    (REJECTED, "unknown_calling_ae"),
    (REJECTED, "too_many_per_peer"),
    (REJECTED, "other"),  # pynetdicom's own rejections (e.g. protocol version)
    (ABORTED, "pdu_too_large"),  # an accepted association, ended by the node for a limit
    (ABORTED, "idle_timeout"),
)
"""(outcome, reason) of the counters. Every connection counts once as accepted or rejected; an accepted
association that the node later aborts for a limit counts as aborted too."""
_OUTCOME_INDEX = {key: index for index, key in enumerate(ASSOCIATION_OUTCOMES)}
_ENTRY = 3  # address high, address low, open connections
_ACCEPTING = 1  # the column of a row's accepting flag
_PEERS_FROM = 2  # the first column of the per-peer association counts


def address_key(address: str) -> tuple[int, int]:
    """An address as two int64: its IPv6 form (IPv4 as ::ffff:a.b.c.d); a hash of the text when it is no IP."""
    try:
        ip = ipaddress.ip_address(normalise_ip(address))
        packed = (ipaddress.IPv6Address(f"::ffff:{ip}") if ip.version == 4 else ip).packed
    except ValueError:
        packed = hashlib.blake2b(address.encode(), digest_size=16).digest()
    high, low = struct.unpack(">qq", packed)
    return high, low


class SharedReceiveState:
    """The caps and counters of all receiver processes (module doc). Picklable to a spawned process."""

    def __init__(self, *, rows: int, per_address: int, total: int, peer_caps: Mapping[str, int] | None = None,
                 lock_path: Path | None = None) -> None:
        if rows < 1:
            raise ValueError(f"rows: must be >= 1, got {rows}")
        if not 1 <= per_address <= total:
            raise ValueError(f"per_address: must be 1..total ({total}), got {per_address}")
        caps = dict(peer_caps or {})
        if any(cap < 1 for cap in caps.values()):
            raise ValueError(f"peer_caps: every cap must be >= 1, got {caps}")
        self.rows, self.per_address, self.total = rows, per_address, total
        self.peers: tuple[str, ...] = tuple(sorted(caps))
        self.peer_caps: tuple[int, ...] = tuple(caps[name] for name in self.peers)
        self.lock_path = lock_path
        """None: one process only (a threading lock suffices)."""
        self._row_len = _PEERS_FROM + len(self.peers) + total * _ENTRY
        self._array: Any = multiprocessing.get_context("spawn").RawArray("q", rows * self._row_len
                                                                         + len(ASSOCIATION_OUTCOMES))
        self._setup_process_locals()

    @classmethod
    def for_node(cls, node: Any, peers: Any, rows: int) -> SharedReceiveState:
        """From ``[node]`` and ``[[peers]]`` (a peer's ``max_associations`` 0 = ``max_associations_per_peer``); a
        lock file when ``rows`` > 1 (``close`` removes it)."""
        default = int(node.max_associations_per_peer)
        caps = {str(p.name): int(getattr(p, "max_associations", 0)) or default for p in peers}
        lock_path = None
        if rows > 1:
            fd, name = tempfile.mkstemp(prefix="bmd-node-receive-", suffix=".lock")
            os.close(fd)
            lock_path = Path(name)
        return cls(rows=rows, per_address=int(node.max_connections_per_address), total=int(node.max_connections),
                   peer_caps=caps, lock_path=lock_path)

    def close(self) -> None:
        """The node's process, at the end: remove the lock file."""
        if self.lock_path is not None:
            self.lock_path.unlink(missing_ok=True)

    def _setup_process_locals(self) -> None:
        self._thread_lock = threading.Lock()
        self._lock_fd: int | None = None
        self._view: npt.NDArray[np.int64] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_thread_lock", "_lock_fd", "_view")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._setup_process_locals()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[npt.NDArray[np.int64]]:
        with self._thread_lock:
            if self._view is None:
                self._view = np.frombuffer(self._array, dtype=np.int64)
            if self.lock_path is not None and self._lock_fd is None:
                self._lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            if self._lock_fd is not None:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                yield self._view
            finally:
                if self._lock_fd is not None:
                    fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _table(self, view: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        return view[:self.rows * self._row_len].reshape(self.rows, self._row_len)

    def _entries(self, table: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        return table[:, _PEERS_FROM + len(self.peers):].reshape(self.rows, self.total, _ENTRY)

    def _check_row(self, row: int) -> None:
        if not 0 <= row < self.rows:
            raise ValueError(f"row: must be 0..{self.rows - 1}, got {row}")

    def acquire_connection(self, row: int, address: str) -> str | None:
        """Take a connection slot for ``address`` in ``row``; the reason when a cap is reached (nothing taken)."""
        self._check_row(row)
        high, low = address_key(address)
        with self._locked() as view:
            table = self._table(view)
            entries = self._entries(table)
            same = (entries[:, :, 0] == high) & (entries[:, :, 1] == low) & (entries[:, :, 2] > 0)
            if int(entries[:, :, 2][same].sum()) >= self.per_address:
                return "too_many_per_address"
            if int(table[:, 0].sum()) >= self.total:
                return "too_many_overall"
            own = entries[row]
            mine = np.flatnonzero(same[row])
            index = int(mine[0]) if mine.size else int(np.flatnonzero(own[:, 2] == 0)[0])
            own[index] = (high, low, own[index, 2] + 1)
            table[row, 0] += 1
        return None

    def release_connection(self, row: int, address: str) -> None:
        self._check_row(row)
        high, low = address_key(address)
        with self._locked() as view:
            table = self._table(view)
            own = self._entries(table)[row]
            mine = np.flatnonzero((own[:, 0] == high) & (own[:, 1] == low) & (own[:, 2] > 0))
            if not mine.size:
                return  # cleared meanwhile (clear_row)
            index = int(mine[0])
            own[index] = (high, low, own[index, 2] - 1) if own[index, 2] > 1 else (0, 0, 0)
            table[row, 0] = max(0, int(table[row, 0]) - 1)

    def acquire_peer(self, row: int, peer: str) -> bool:
        """Take an association slot of ``peer`` in ``row``; False when the peer is at its cap (or unknown)."""
        self._check_row(row)
        if peer not in self.peers:
            return False
        column = _PEERS_FROM + self.peers.index(peer)
        with self._locked() as view:
            table = self._table(view)
            if int(table[:, column].sum()) >= self.peer_caps[column - _PEERS_FROM]:
                return False
            table[row, column] += 1
        return True

    def release_peer(self, row: int, peer: str) -> None:
        self._check_row(row)
        if peer not in self.peers:
            return
        column = _PEERS_FROM + self.peers.index(peer)
        with self._locked() as view:
            table = self._table(view)
            table[row, column] = max(0, int(table[row, column]) - 1)

    def clear_row(self, row: int) -> None:
        """Forget every slot ``row`` holds: its process is gone, and its connections with it."""
        self._check_row(row)
        with self._locked() as view:
            self._table(view)[row] = 0

    def set_accepting(self, row: int) -> None:
        """``row``'s process accepts connections now (``clear_row`` takes it back)."""
        self._check_row(row)
        with self._locked() as view:
            self._table(view)[row, _ACCEPTING] = 1

    def accepting(self) -> int:
        """How many processes accept connections."""
        with self._locked() as view:
            return int(self._table(view)[:, _ACCEPTING].sum())

    def busier_than_least(self, row: int) -> bool:
        """Whether ``row`` holds more open connections than the accepting process that holds the fewest."""
        self._check_row(row)
        with self._locked() as view:
            table = self._table(view)
            counts = table[table[:, _ACCEPTING] == 1, 0]
            return bool(counts.size and table[row, 0] > counts.min())

    def open_connections(self, address: str | None = None) -> int:
        """Open connections over all processes, from ``address`` or in all."""
        with self._locked() as view:
            table = self._table(view)
            if address is None:
                return int(table[:, 0].sum())
            high, low = address_key(address)
            entries = self._entries(table)
            same = (entries[:, :, 0] == high) & (entries[:, :, 1] == low)
            return int(entries[:, :, 2][same].sum())

    def open_associations(self, peer: str) -> int:
        if peer not in self.peers:
            return 0
        with self._locked() as view:
            return int(self._table(view)[:, _PEERS_FROM + self.peers.index(peer)].sum())

    def count(self, outcome: str, reason: str) -> None:
        index = self.rows * self._row_len + _OUTCOME_INDEX[(outcome, reason)]
        with self._locked() as view:
            view[index] += 1

    def counts(self) -> dict[tuple[str, str], int]:
        """Every (outcome, reason) counter, summed over all processes since the node started."""
        start = self.rows * self._row_len
        with self._locked() as view:
            values = [int(v) for v in view[start:start + len(ASSOCIATION_OUTCOMES)]]
        return dict(zip(ASSOCIATION_OUTCOMES, values, strict=True))


_published: SharedReceiveState | None = None


def publish(state: SharedReceiveState) -> None:
    """Make ``state`` the one this process's /metrics reads (the node's SCP start does it)."""
    global _published
    _published = state


def published() -> SharedReceiveState | None:
    """The state the node's SCP published in this process (None before it started)."""
    return _published


def association_counts() -> dict[tuple[str, str], int]:
    """The association counters of the published state: every (outcome, reason), 0 before the SCP starts."""
    state = _published
    return state.counts() if state is not None else dict.fromkeys(ASSOCIATION_OUTCOMES, 0)
