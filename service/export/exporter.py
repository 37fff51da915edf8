"""The exporter: drains the outbox (export/outbox.py) to every result destination.

Loop: claim due exports (a lease per row) -> group by peer -> one session per peer per batch through the peer's
transport (export/transport.py; DICOM C-STORE today, one association) -> send each object byte-identically ->
report each outcome to the outbox:
* success / warning        -> mark_export_sent (the warning text is kept);
* permanent failure        -> mark_export_dead (dead letter, no retry loop);
* transient / unknown      -> mark_export_retry (backoff; the outbox turns it dead when attempts/age run out).
An unknown peer name (removed from the configuration) or a missing file is permanent.

Exactly-once towards the PACS as far as DICOM allows: a row is marked sent right after the peer's success status;
an exporter killed between the peer's answer and the mark re-sends the same bytes with the same SOP Instance UID
after its lease expires, which a PACS treats as the same object (the duplicate is idempotent on the PACS side).
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy

from service.db.lease_owner import current_owner
from service.domain.retry import RetryPolicy
from service.domain.status import ExportStatus
from service.export.cstore_scu import DicomStoreTransport
from service.export.outbox import (
    ExportTask,
    claim_due_exports,
    export_retry_policy,
    mark_export_dead,
    mark_export_retry,
    mark_export_sent,
)
from service.export.transport import DeliveryOutcome, OutcomeKind, Transport

logger = logging.getLogger(__name__)

TRANSPORTS: dict[str, Transport] = {"dicom": DicomStoreTransport()}
"""Transport per kind of peer. A peer names its kind with a ``transport`` attribute; without one it is DICOM."""


def transport_for(peer: Any) -> Transport | None:
    """The transport that serves ``peer``; None when its kind has no transport here (a permanent failure)."""
    return TRANSPORTS.get(str(getattr(peer, "transport", "dicom")))


def default_exporter_id() -> str:
    return str(current_owner("exporter"))


def _apply(engine: sqlalchemy.Engine, task: ExportTask, outcome: DeliveryOutcome, policy: RetryPolicy,
           now: datetime | None) -> str:
    if outcome.kind == OutcomeKind.SUCCESS:
        mark_export_sent(engine, task.export_id, status_code=outcome.status_code or 0)
        return ExportStatus.SENT.value
    if outcome.kind == OutcomeKind.WARNING:
        mark_export_sent(engine, task.export_id, status_code=outcome.status_code or 0, warning=outcome.detail)
        return ExportStatus.SENT.value
    if outcome.kind == OutcomeKind.PERMANENT:
        mark_export_dead(engine, task.export_id, error=outcome.detail)
        logger.error("export %s to %s: dead letter (%s)", task.export_id, task.peer_name, outcome.detail)
        return ExportStatus.DEAD.value
    new_status = mark_export_retry(engine, task.export_id, error=outcome.detail, now=now, policy=policy)
    logger.warning("export %s to %s: attempt %d failed (%s), now %s", task.export_id, task.peer_name,
                   task.attempts, outcome.detail, new_status)
    return new_status


def _send_to_peer(engine: sqlalchemy.Engine, config: Any, peer: Any, tasks: Sequence[ExportTask],
                  policy: RetryPolicy, now: datetime | None) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    present = [t for t in tasks if Path(t.path).is_file()]
    for task in tasks:
        if task not in present:
            counts[_apply(engine, task, DeliveryOutcome(OutcomeKind.PERMANENT, None, f"file missing: {task.path}"),
                          policy, now)] += 1
    if not present:
        return counts
    transport = transport_for(peer)
    if transport is None:
        for task in present:
            outcome = DeliveryOutcome(OutcomeKind.PERMANENT, None, f"no transport for peer {peer.name!r}")
            counts[_apply(engine, task, outcome, policy, now)] += 1
        return counts
    with transport.open_session(peer, config, [Path(t.path) for t in present]) as session:
        for task in present:
            try:
                outcome = session.store(Path(task.path))
            except Exception as exc:  # never lose the row: an unexpected error is a transient failure
                logger.exception("export %s: unexpected error while sending", task.export_id)
                outcome = DeliveryOutcome(OutcomeKind.TRANSIENT, None, f"unexpected error: {type(exc).__name__}")
            sent_uid = session.sop_instance_uid(Path(task.path))
            if outcome.delivered and sent_uid is not None and sent_uid != task.sop_instance_uid:
                logger.warning("export %s: file's SOP Instance UID differs from the outbox row", task.export_id)
            counts[_apply(engine, task, outcome, policy, now)] += 1
    return counts


def export_once(config: Any, engine: sqlalchemy.Engine, *, exporter_id: str | None = None,
                now: datetime | None = None) -> dict[str, int]:
    """Claim one batch of due exports and send it; returns counts per resulting status (empty: nothing due)."""
    settings = config.exporter
    policy = export_retry_policy(settings)
    peers = {p.name: p for p in config.peers}
    tasks = claim_due_exports(engine, exporter_id=exporter_id or default_exporter_id(), limit=settings.batch_size,
                              lease_seconds=settings.lease_seconds, now=now)
    counts: dict[str, int] = defaultdict(int)
    by_peer: dict[str, list[ExportTask]] = defaultdict(list)
    for task in tasks:
        by_peer[task.peer_name].append(task)
    for peer_name, peer_tasks in by_peer.items():
        peer = peers.get(peer_name)
        if peer is None:
            for task in peer_tasks:
                outcome = DeliveryOutcome(OutcomeKind.PERMANENT, None, f"peer {peer_name!r} is not configured")
                counts[_apply(engine, task, outcome, policy, now)] += 1
            continue
        for status, n in _send_to_peer(engine, config, peer, peer_tasks, policy, now).items():
            counts[status] += n
    return dict(counts)


def run_exporter(config: Any, engine: sqlalchemy.Engine, stop_event: threading.Event, *,
                 exporter_id: str | None = None) -> None:
    """Drain the outbox until ``stop_event`` is set; polls every ``exporter.poll_seconds`` when idle."""
    exporter_id = exporter_id or default_exporter_id()
    poll_s = float(config.exporter.poll_seconds)
    logger.info("exporter %s started", exporter_id)
    while not stop_event.is_set():
        try:
            counts = export_once(config, engine, exporter_id=exporter_id)
        except Exception:
            logger.exception("exporter loop error; retrying after %.1f s", poll_s)
            counts = {}
        if not counts:
            stop_event.wait(poll_s)
    logger.info("exporter %s stopped", exporter_id)
