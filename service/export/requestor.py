"""pynetdicom's requestor association without its response race (pass ``REQUESTOR_HANDLERS`` to ``AE.associate``).

pynetdicom 3.0's association thread runs a reactor loop that takes any decoded DIMSE message off the queue and serves
it as a request. A ``send_*`` method pauses it first: it clears ``_reactor_checkpoint`` and waits until the reactor
says ``_is_paused``. But the reactor sets ``_is_paused = True`` *before* ``_reactor_checkpoint.wait()``: when the
wait returns just before the clear, the sender reads the stale True, sends its request, and the reactor, once it runs
again, sets ``_is_paused = False`` and takes the peer's response off the queue as a request ("Received unexpected
C-STORE service message"). The sender then waits ``dimse_timeout`` for a response that was already swallowed and
aborts. On a loaded 2-core machine the window is wide enough: a fresh-clone CI run (session 13) lost image 31 of the
demo's 163 that way. For the node's exporter it means an aborted association and a re-sent SR or SEG.

``PausingAssociation`` makes the pause a handshake: the reactor looks at the checkpoint again, and reads the queues,
only while it holds ``_reactor_lock`` (and serves a request it took there), and reading ``_is_paused`` takes the same
lock. A sender that cleared the
checkpoint therefore sees True only when the reactor is blocked in ``wait()`` or will skip its next pass. The loop is
pynetdicom 3.0.4's ``Association._run_reactor`` with that one change. ``REQUESTOR_HANDLERS`` turns a requestor
association into one on ``EVT_CONN_OPEN`` (fired on the DUL thread while the association thread still waits for the
A-ASSOCIATE-AC, before its reactor starts); the acceptor side has its own reactor (``service.receive.latency``).
"""

from __future__ import annotations

import threading
import time
from typing import Any, cast

from pynetdicom import evt
from pynetdicom.association import Association

from service.receive.latency import association_finished


class PausingAssociation(Association):
    """A requestor association whose reactor cannot take a response meant for a paused ``send_*`` (module doc)."""

    _reactor_lock: threading.RLock
    _paused_flag: bool

    @property  # type: ignore[override]
    def _is_paused(self) -> bool:
        with self._reactor_lock:
            return self._paused_flag

    @_is_paused.setter
    def _is_paused(self, value: bool) -> None:
        self.__dict__["_paused_flag"] = value

    def _run_reactor(self) -> None:
        self._is_paused = False
        while not self._kill:
            time.sleep(0.001)
            self._is_paused = True
            self._reactor_checkpoint.wait()
            with self._reactor_lock:
                if not self._reactor_checkpoint.is_set():
                    continue  # a sender paused the reactor after the wait returned: the queues are its now
                self._is_paused = False
                context_id, msg = self.dimse.get_msg(block=False)
                if msg:
                    self._serve_request(msg, cast(int, context_id))
            if association_finished(self):
                return


def _adopt(event: Any) -> None:
    assoc = event.assoc
    if assoc.is_requestor and type(assoc) is Association:
        # the state the subclass reads first, then the class (the base keeps its flag in the instance's __dict__)
        assoc.__dict__["_paused_flag"] = bool(assoc.__dict__.get("_is_paused", False))
        assoc.__dict__["_reactor_lock"] = threading.RLock()
        assoc.__class__ = PausingAssociation


REQUESTOR_HANDLERS: list[tuple[Any, Any]] = [(evt.EVT_CONN_OPEN, _adopt)]
"""``evt_handlers`` for ``AE.associate``: the association becomes a ``PausingAssociation`` before its reactor runs."""
