"""pynetdicom's acceptor with its polling latency taken out (subclasses, no patching).

pynetdicom 3.0 runs two polling loops per association: the association thread sleeps 1 ms, then looks for a decoded
DIMSE message (``Association._run_reactor``), and the DUL thread sleeps ``_run_loop_delay`` (1 ms) whenever it found
nothing to do, both when it waits for the peer's next PDU and when it has a response to send. With one association
every C-STORE waits on these sleeps three times (request read, request served, response sent): ~2-4 ms of a ~7 ms
image on the 2-core bench machine, where ``time.sleep(0.001)`` often takes 1.5-2 ms.

* ``QueueWaitAssociation``: the association thread waits on the DIMSE message queue itself (``Queue.get`` with a
  1 ms timeout) instead of sleeping and then polling, so a decoded C-STORE is served at once; the release / abort /
  idle checks still run at least every millisecond. The loop is pynetdicom 3.0.4's ``_run_reactor`` with that one
  change (a patch worth offering upstream).
* ``BulkRecvSocket``: a PDU read with a few ``recv_into`` calls instead of one ``recv`` per 4 KiB.
* ``LOW_LATENCY_DUL_DELAY_S``: the DUL's idle sleep while the association exists, 0.2 ms instead of 1 ms (the
  DUL thread's own documented knob; costs a few % of a core per association while it is open).
"""

from __future__ import annotations

import logging
import queue
import socket
from typing import Any, cast

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.transport import AssociationSocket, RequestHandler

logger = logging.getLogger(__name__)

REACTOR_WAIT_S = 0.001
LOW_LATENCY_DUL_DELAY_S = 0.0002


class QueueWaitAssociation(Association):
    """An acceptor association whose reactor waits on the DIMSE queue instead of sleeping (module doc)."""

    def _next_message(self) -> tuple[Any, Any]:
        try:
            return cast(tuple[Any, Any], self.dimse.msg_queue.get(block=True, timeout=REACTOR_WAIT_S))
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
        if self.is_established and self.acse.is_release_requested():
            self.acse.send_release(is_response=True)
            logger.info("Association Released")
            self.is_released = True
            self.is_established = False
            evt.trigger(self, evt.EVT_RELEASED, {})
            self.kill()
            return True
        if self.acse.is_aborted():
            logger.info("Association Aborted%s", " (A-P-ABORT)" if self.acse.is_aborted("a-p-abort") else "")
            self.dul.receive_pdu(wait=False)  # so that EVT_ACSE_RECV fires for subscribers
            self.is_aborted = True
            self.is_established = False
            evt.trigger(self, evt.EVT_ABORTED, {})
            self.kill()
            return True
        if not self.dul.is_alive():
            self.kill()
            return True
        if self.dul.idle_timer_expired():
            logger.error("Network timeout reached")
            if self.network_timeout_response == "A-RELEASE":
                self._is_paused = True
                self._reactor_checkpoint.wait()
                self.release()
                self._is_paused = False
            else:
                self.abort()
            self.kill()
            return True
        return False


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
    """pynetdicom's request handler, making a ``QueueWaitAssociation`` with a short DUL idle sleep and a
    ``BulkRecvSocket``."""

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        # the same object, given the subclass's reactor (it adds no state; pynetdicom's own DIMSE messages change
        # class the same way once their command set is decoded)
        assoc.__class__ = QueueWaitAssociation
        assoc.dul._run_loop_delay = LOW_LATENCY_DUL_DELAY_S
        if type(assoc.dul.socket) is AssociationSocket:
            assoc.dul.socket.__class__ = BulkRecvSocket
        return assoc
