"""pynetdicom's acceptor with its polling latency taken out (subclasses, no patching).

pynetdicom 3.0 runs two polling loops per association: the association thread sleeps 1 ms, then looks for a decoded
DIMSE message (``Association._run_reactor``), and the DUL thread sleeps ``_run_loop_delay`` (1 ms) whenever it found
nothing to do, both when it waits for the peer's next PDU and when it has a response to send. With one association
every C-STORE waits on these sleeps three times (request read, request served, response sent): ~2-4 ms of a ~7 ms
image on the 2-core bench machine, where ``time.sleep(0.001)`` often takes 1.5-2 ms. Shortening the sleeps (as this
module did first: 0.2 ms DUL delay) buys the latency back with CPU: every open association then woke its two
threads up to 6000 times a second (1 / 0.2 ms + 1 / 1 ms), each wake-up taking the interpreter lock from the threads
that do the work, and four associations received hardly faster than one (make bench of 23c1f2e: 170 against 137
images/s).

Here both threads block until there is something to do, and are woken by it (a patch worth offering upstream; the
TODO at ``DULServiceProvider._run_loop_delay`` in pynetdicom 3.0.4 asks for exactly this):

* ``WakingDUL``: when idle, the DUL thread blocks in ``select`` on the association's socket and on a wake-up
  socketpair, which every put on its ``to_provider_queue`` / ``event_queue`` (the primitives to send, the events
  to act on, from any thread) and every kill writes a byte to. ``select`` also returns after ``IDLE_WAIT_S`` so
  that the ARTIM timer is still looked at. The loop is pynetdicom 3.0.4's ``run_reactor`` with the sleep replaced.
* ``QueueWaitAssociation``: the association thread blocks on an event set by every put on the DIMSE message queue
  and on the DUL's ``to_user_queue`` (release and abort requests) and when the DUL thread ends; the release / abort /
  idle checks run after each wake-up and at least every ``IDLE_WAIT_S``. The loop is pynetdicom 3.0.4's
  ``_run_reactor`` with that one change.
* ``BulkRecvSocket``: a PDU read with a few ``recv_into`` calls instead of one ``recv`` per 4 KiB.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any, cast

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.transport import AssociationSocket, RequestHandler
from pynetdicom.utils import make_target

logger = logging.getLogger(__name__)

IDLE_WAIT_S = 0.05
"""Longest an idle reactor thread blocks before it looks at its timers (ARTIM, network idle timeout) again."""


class WakingQueue(queue.Queue):  # type: ignore[type-arg]
    """A ``queue.Queue`` that calls ``wake`` after every put."""

    def __init__(self, wake: Callable[[], None]) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake()

    @classmethod
    def replacing(cls, old: queue.Queue, wake: Callable[[], None]) -> WakingQueue:  # type: ignore[type-arg]
        """A waking queue holding what ``old`` holds (e.g. the connection event the socket queued at creation)."""
        new = cls(wake)
        while True:
            try:
                new.put(old.get(block=False))
            except queue.Empty:
                return new


class WakingDUL(DULServiceProvider):
    """pynetdicom's DUL thread, blocking while idle until its socket or a wake-up has something (module doc).

    Made from a DUL that has not started (``adopt``): its class changes and it gains the wake-up socketpair and
    waking queues; the state machine, timers and socket are pynetdicom's."""

    _wake_recv: socket.socket
    _wake_send: socket.socket
    _reactor_target: Callable[[], None]

    @classmethod
    def adopt(cls, dul: DULServiceProvider, wake_user: Callable[[], None]) -> WakingDUL:
        dul.__class__ = cls
        waking = cast(WakingDUL, dul)
        waking._wake_recv, waking._wake_send = socket.socketpair()
        waking._wake_recv.setblocking(False)
        waking._wake_send.setblocking(False)
        waking.event_queue = WakingQueue.replacing(dul.event_queue, waking.wake)
        waking.to_provider_queue = WakingQueue.replacing(dul.to_provider_queue, waking.wake)
        waking.to_user_queue = WakingQueue.replacing(dul.to_user_queue, wake_user)
        # pynetdicom bound the thread's target to its own run_reactor in __init__, before the class changed
        waking._reactor_target = make_target(waking.run_reactor)
        return waking

    def run(self) -> None:
        self._reactor_target()

    def wake(self) -> None:
        if threading.get_ident() == self.ident:
            return  # the DUL thread itself (an event it queued while reading a PDU): it is awake
        # BlockingIOError: wake-ups already pending; closed: the thread has ended
        with contextlib.suppress(OSError):
            self._wake_send.send(b"\0")

    def kill_dul(self) -> None:
        super().kill_dul()
        self.wake()

    def stop_dul(self) -> bool:
        if self.state_machine.current_state != "Sta1":
            return False
        self._kill_thread = True
        self.wake()
        if threading.current_thread() is not self:
            self.join()
        return True

    def _idle_wait(self) -> None:
        """Block until the socket is readable, a wake-up arrives, or ``IDLE_WAIT_S`` passes."""
        sock = getattr(self.socket, "socket", None)
        if sock is None or not getattr(self.socket, "_is_connected", False):
            time.sleep(self._run_loop_delay)
            return
        if isinstance(sock, ssl.SSLSocket) and sock.pending():  # decrypted bytes select cannot see
            return
        try:
            ready, _, _ = select.select([sock, self._wake_recv], [], [], IDLE_WAIT_S)
        except (OSError, ValueError):  # the socket closed under us: the loop's own read reports it
            time.sleep(self._run_loop_delay)
            return
        if self._wake_recv in ready:
            with contextlib.suppress(OSError):
                while self._wake_recv.recv(4096):
                    pass

    def run_reactor(self) -> None:
        try:
            self._run_waking_reactor()
        finally:
            self._wake_send.close()
            self._wake_recv.close()
            waking = getattr(self.assoc, "wake", None)
            if waking is not None:
                waking()

    def _run_waking_reactor(self) -> None:
        """pynetdicom 3.0.4's ``DULServiceProvider.run_reactor`` with its idle sleep replaced by ``_idle_wait``."""
        self._idle_timer.start()
        idle = False
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
                idle = True
            if idle:
                self._idle_wait()
            if self._kill_thread:
                break
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")
            try:
                # as pynetdicom: send one primitive OR receive one PDU per turn of the loop
                if self._process_recv_primitive():
                    pass
                elif self._is_transport_event():
                    self._idle_timer.restart()
            except Exception as exc:
                logger.error("Exception in DUL.run(), aborting association")
                logger.exception(exc)
                abort_pdu = A_ABORT_RQ()
                abort_pdu.source = 0x02
                abort_pdu.reason_diagnostic = 0x00
                cast(AssociationSocket, self.socket).send(abort_pdu.encode())
                self.assoc.is_aborted = True
                self.assoc.is_established = False
                self.assoc._kill = True
                self._kill_thread = True
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                idle = True
                continue
            self.state_machine.do_action(event)
            idle = False


class QueueWaitAssociation(Association):
    """An acceptor association whose reactor blocks until a message or an end-of-association event wakes it
    (module doc). ``install_wake`` (from ``LowLatencyRequestHandler``) sets it up before the threads start."""

    _wake_event: threading.Event

    def install_wake(self) -> None:
        self._wake_event = threading.Event()
        self.dimse.msg_queue = WakingQueue.replacing(self.dimse.msg_queue, self.wake)
        WakingDUL.adopt(self.dul, self.wake)

    def wake(self) -> None:
        self._wake_event.set()

    def kill(self) -> None:
        self.wake()
        super().kill()

    def _next_message(self) -> tuple[Any, Any]:
        self._wake_event.clear()
        try:
            return cast(tuple[Any, Any], self.dimse.msg_queue.get(block=False))
        except queue.Empty:
            pass
        self._wake_event.wait(IDLE_WAIT_S)
        try:
            return cast(tuple[Any, Any], self.dimse.msg_queue.get(block=False))
        except queue.Empty:
            return None, None

    def _run_reactor(self) -> None:
        self._is_paused = False
        while not self._kill:
            # as pynetdicom: the reactor may be paused by the send_*() methods of an acceptor
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False

            context_id, msg = self._next_message()
            if msg:
                self._serve_request(msg, cast(int, context_id))
            if self._peer_finished():
                return

    def _peer_finished(self) -> bool:
        """pynetdicom's end-of-association checks (release, abort, DUL gone, network timeout); True when done."""
        return association_finished(self)


class BulkRecvSocket(AssociationSocket):
    """pynetdicom's association socket reading a PDU with as few ``recv`` calls as the kernel allows.

    pynetdicom 3.0 reads in 4096-byte pieces appended to a bytearray: ~130 system calls for a 0.5 MB image, each
    releasing and re-taking the interpreter lock (behind the other associations' threads). This reads straight
    into one buffer of the PDU's size (``recv_into``), as much as is there each time."""

    def recv(self, nr_bytes: int) -> bytearray:
        sock = cast(socket.socket, self.socket)
        buffer = bytearray(nr_bytes)
        view = memoryview(buffer)
        read = 0
        while read < nr_bytes:
            n = sock.recv_into(view[read:], nr_bytes - read)
            if not n:  # connection closed: what was read so far, as pynetdicom
                del view
                return buffer[:read]
            read += n
        return buffer


class LowLatencyRequestHandler(RequestHandler):
    """pynetdicom's request handler, making a ``QueueWaitAssociation`` with a ``WakingDUL`` and a
    ``BulkRecvSocket``."""

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        # the same object, given the subclass's reactor (it adds no state; pynetdicom's own DIMSE messages change
        # class the same way once their command set is decoded)
        assoc.__class__ = QueueWaitAssociation
        cast(QueueWaitAssociation, assoc).install_wake()
        if type(assoc.dul.socket) is AssociationSocket:
            assoc.dul.socket.__class__ = BulkRecvSocket
        return assoc


def association_finished(assoc: Association) -> bool:
    """pynetdicom's end-of-association checks after each reactor pass (release, abort, DUL gone, network timeout),
    for the reactors of our own association classes (acceptor and requestor); True when the association is done."""
    if assoc.is_established and assoc.acse.is_release_requested():
        assoc.acse.send_release(is_response=True)
        logger.info("Association Released")
        assoc.is_released = True
        assoc.is_established = False
        evt.trigger(assoc, evt.EVT_RELEASED, {})
        assoc.kill()
        return True
    if assoc.acse.is_aborted():
        logger.info("Association Aborted%s", " (A-P-ABORT)" if assoc.acse.is_aborted("a-p-abort") else "")
        assoc.dul.receive_pdu(wait=False)  # so that EVT_ACSE_RECV fires for subscribers
        assoc.is_aborted = True
        assoc.is_established = False
        evt.trigger(assoc, evt.EVT_ABORTED, {})
        assoc.kill()
        return True
    if not assoc.dul.is_alive():
        assoc.kill()
        return True
    if assoc.dul.idle_timer_expired():
        logger.error("Network timeout reached")
        if assoc.network_timeout_response == "A-RELEASE":
            assoc._is_paused = True
            assoc._reactor_checkpoint.wait()
            assoc.release()
            assoc._is_paused = False
        else:
            assoc.abort()
        assoc.kill()
        return True
    return False
