"""The node's watch over its receiver processes (service/receive/scp.py ``run_scp``): a dead one's slots are freed,
what it acknowledged is recorded, and a successor is started, with a back-off when it keeps dying at start-up."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from service.receive.shared_limits import SharedReceiveState

logger = logging.getLogger(__name__)

QUICK_DEATH_S = 30.0
RESTART_BACKOFF_MAX_S = 60.0
"""A receiver process that keeps dying right after its start is restarted after 1, 2, 4 ... up to this many
seconds, not every second (each death also walks the spool: the ``recover`` of ``supervise``)."""


@dataclass
class ReceiverProcess:
    process: Any
    stop: Any
    """A multiprocessing Event: set to stop the process (it flushes its recorder first)."""
    ready: Any
    """A multiprocessing Event the process sets once it accepts connections."""
    started_monotonic: float = field(default_factory=time.monotonic)
    quick_deaths: int = 0
    """How many times in a row the process of this row died within ``QUICK_DEATH_S`` of its start."""
    restart_at: float | None = None
    """Set once the process is seen dead: when its successor starts."""


def supervise(child: ReceiverProcess, row: int, now: float, shared: SharedReceiveState,
              start: Callable[[int], ReceiverProcess], recover: Callable[[int], None]) -> ReceiverProcess:
    """The receiver process of ``row`` as it should be now: ``child`` while it lives; once it is seen dead its
    slots are freed and what it acknowledged is recorded (``recover``), then a successor is started (``start``) at
    once, or after a back-off when it died within ``QUICK_DEATH_S`` of its start (1, 2, 4 ... s, at most
    ``RESTART_BACKOFF_MAX_S``)."""
    if child.process.is_alive():
        return child
    if child.restart_at is None:
        quick = now - child.started_monotonic < QUICK_DEATH_S
        child.quick_deaths = child.quick_deaths + 1 if quick else 0
        delay = min(RESTART_BACKOFF_MAX_S, 2.0 ** (child.quick_deaths - 1)) if quick else 0.0
        child.restart_at = now + delay
        logger.error("receiver process %d exited with code %s%s; restarting it in %.0f s", row,
                     child.process.exitcode, f" ({child.quick_deaths} time(s) in a row right after its start)"
                     if quick else "", delay)
        shared.clear_row(row)  # its connections died with it
        recover(row)
    if now < child.restart_at:
        return child
    successor = start(row)
    successor.quick_deaths = child.quick_deaths
    return successor
