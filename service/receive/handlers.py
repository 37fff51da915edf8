"""C-STORE / C-ECHO handlers: the only code that runs on pynetdicom's association threads. Keep them thin.

C-STORE: raw bytes as received (``part10.received_part10``, no decode/re-encode) -> minimal header parse
(``header.parse_received_header``: UIDs, modality) -> atomic spool write -> one database row via the
injected ``recorder`` -> status.

Statuses (PS3.4 B.2.3):
* 0x0000 stored, duplicate (idempotent) or not for the pipeline, acknowledged and recorded as ``ignored`` with the
  reason (``ignore_reason``): the node's own result objects coming back, dose reports, secondary captures, other
  structured reports and every other non-CT object; the series is then recorded ``ignored`` with that reason;
* 0xA700 out of resources: disk full (no partial file is left) or the database could not record the instance;
* 0xA900 the dataset's SOP Instance/Class UID differs from the C-STORE request's;
* 0xC210 cannot understand: the dataset does not decode or lacks the identifying UIDs (recorded ``rejected``).
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from typing import Any

from pydicom.uid import UID

from service.db.queries import InstanceRecord
from service.domain.identity import NODE_MANUFACTURER
from service.domain.status import InstanceStatus
from service.receive.header import (
    DatasetMismatchError,
    HeaderSummary,
    UndecodableDatasetError,
    parse_received_header,
)
from service.receive.part10 import received_part10
from service.receive.spool import Spool, sanitize_uid
from service.series.multiframe import MULTIFRAME_CT_SOP_CLASSES

logger = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DATASET_MISMATCH = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC210

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
PIPELINE_SOP_CLASSES = frozenset({CT_IMAGE_STORAGE, *MULTIFRAME_CT_SOP_CLASSES})
"""What goes to the pipeline: CT Image Storage, Enhanced CT Image Storage and Legacy Converted Enhanced CT Image
Storage (multi-frame, loaded through the per-frame functional groups by ``service.series``)."""
CT_MODALITY = "CT"
"""Manufacturer the node writes into its SEG, SR and key image (General Equipment and Contributing Equipment)."""
DOSE_REPORT_SOP_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.88.67",  # X-Ray Radiation Dose SR
    "1.2.840.10008.5.1.4.1.1.88.76",  # Enhanced X-Ray Radiation Dose SR
    "1.2.840.10008.5.1.4.1.1.88.68",  # Radiopharmaceutical Radiation Dose SR
})
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
"""Secondary Capture and its multi-frame variants (.7.1 - .7.4): dose screens, screenshots, key images."""
STRUCTURED_REPORT_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
REJECTED_SUBDIR = "_rejected"
"""Undecodable objects are kept here (storage_dir/_rejected/<sop>.dcm) so that a person can look at them."""

ReceivedInstance = InstanceRecord
"""What the handler hands to the recorder: the database's own instance record (validated once built)."""


Recorder = Callable[[ReceivedInstance], bool]
"""Persists one instance row; returns False when the SOP Instance UID was already recorded."""


def is_node_object(header: HeaderSummary) -> bool:
    """The node's own SEG / SR / key image coming back (a PACS echoing the study): recognised by the Manufacturer
    the node writes, in General Equipment or in a Contributing Equipment item. Series numbers (9801-9803) are not
    used: any scanner or archive may number a series so."""
    return NODE_MANUFACTURER in (header.manufacturer, *header.contributing_manufacturers)


def ignore_reason(header: HeaderSummary) -> str | None:
    """Why an instance is not for the pipeline (recorded as ignored, not stored), or None when it is a CT image.

    Localizers are CT images: they are stored, and the scheduler records their series as ignored."""
    name = UID(header.sop_class_uid).name
    if is_node_object(header):
        return f"the node's own result object ({name}) coming back"
    if header.sop_class_uid in DOSE_REPORT_SOP_CLASSES:
        return f"radiation dose report ({name}): not CT Image Storage"
    if header.sop_class_uid == SECONDARY_CAPTURE_PREFIX or header.sop_class_uid.startswith(
            SECONDARY_CAPTURE_PREFIX + "."):
        return f"secondary capture ({name}, e.g. a dose screen): not CT Image Storage"
    if header.sop_class_uid.startswith(STRUCTURED_REPORT_PREFIX):
        return f"structured report ({name}): not CT Image Storage"
    return non_ct_reason(header)


def non_ct_reason(header: HeaderSummary) -> str | None:
    """Why an instance is not for the pipeline, or None when it is a CT image (single- or multi-frame)."""
    if header.sop_class_uid not in PIPELINE_SOP_CLASSES:
        return f"not CT Image Storage (SOP class {UID(header.sop_class_uid).name})"
    if header.modality and header.modality != CT_MODALITY:
        return f"modality {header.modality} is not CT"
    return None


class StoreHandler:
    """The EVT_C_STORE handler, bound to a spool and a recorder.

    ``deferred``, when given, records the rows of instances whose file is in the spool (``status`` stored): it may
    return before the row is committed (the SCP's batched recorder), because the fsynced spool file is the truth
    and the start-up reconciliation records a file whose row was lost. Rows without a file (ignored, rejected) go
    through ``recorder``, which must have committed them when it returns.

    A pool-mode spool (service/receive/spool_pool.py) answers before the file is at its path: its ``settle`` runs on
    the batched recorder's thread before each commit (``add_before_commit``), or here, before the row is recorded,
    when there is no batched recorder."""

    def __init__(self, spool: Spool, recorder: Recorder, deferred: Recorder | None = None) -> None:
        self.spool = spool
        self.recorder = recorder
        self.deferred = deferred
        add_before_commit = getattr(deferred, "add_before_commit", None)
        self._settle_inline = spool.pooled and add_before_commit is None
        if spool.pooled and add_before_commit is not None:
            add_before_commit(spool.settle)

    def __call__(self, event: Any) -> int:
        request = event.request
        calling_ae_title = str(event.assoc.requestor.ae_title).strip()
        transfer_syntax = str(event.context.transfer_syntax)
        request_sop_instance = str(request.AffectedSOPInstanceUID or "").strip()
        request_sop_class = str(request.AffectedSOPClassUID or "").strip()
        encoded, dataset_offset = received_part10(event)

        def record(**fields: Any) -> bool:
            row = ReceivedInstance(transfer_syntax_uid=transfer_syntax, calling_ae_title=calling_ae_title, **fields)
            if self.deferred is not None and row.status == InstanceStatus.STORED:
                return self.deferred(row)
            return self.recorder(row)

        try:
            header = parse_received_header(
                encoded, dataset_offset, transfer_syntax,
                request_sop_class_uid=request_sop_class, request_sop_instance_uid=request_sop_instance,
            )
        except DatasetMismatchError as exc:
            self._reject(record, request_sop_instance, request_sop_class, encoded, str(exc))
            return STATUS_DATASET_MISMATCH
        except UndecodableDatasetError as exc:
            return self._reject(record, request_sop_instance, request_sop_class, encoded, str(exc))

        common = {
            "sop_instance_uid": header.sop_instance_uid,
            "sop_class_uid": header.sop_class_uid,
            "study_instance_uid": header.study_instance_uid,
            "series_instance_uid": header.series_instance_uid,
            "modality": header.modality,
        }
        reason = ignore_reason(header)
        if reason is not None:
            try:
                record(path=None, size_bytes=len(encoded), status=InstanceStatus.IGNORED, reason=reason, **common)
            except Exception:
                logger.exception("could not record ignored instance from %s", calling_ae_title)
                return STATUS_OUT_OF_RESOURCES
            return STATUS_SUCCESS

        try:
            written = self.spool.write(
                header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid, encoded
            )
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                logger.error("spool out of disk space; answering 0xA700 to %s", calling_ae_title)
            else:
                logger.error("spool write failed (%s); answering 0xA700 to %s", type(exc).__name__, calling_ae_title)
            return STATUS_OUT_OF_RESOURCES
        if written.already_present:
            logger.info("duplicate SOP instance from %s: the spool already holds it", calling_ae_title)
        if written.pending and self._settle_inline and written.path in self.spool.settle():
            return STATUS_OUT_OF_RESOURCES  # durable in the pool, recorded at the next start-up

        try:
            is_new = record(
                path=str(written.path),
                size_bytes=written.size_bytes,
                status=InstanceStatus.STORED,
                reason=None,
                **common,
            )
        except Exception:
            # The file is complete on disk; a re-send finds it and records it then.
            logger.exception("could not record stored instance from %s", calling_ae_title)
            return STATUS_OUT_OF_RESOURCES
        if not is_new:
            logger.info("duplicate SOP instance from %s acknowledged (already recorded)", calling_ae_title)
        return STATUS_SUCCESS

    def _reject(
        self, record: Callable[..., bool], sop_instance_uid: str, sop_class_uid: str, encoded: bytes, reason: str
    ) -> int:
        logger.warning("rejected C-STORE: %s", reason)
        kept: str | None = None
        if sop_instance_uid:
            try:
                target = self.spool.storage_dir / REJECTED_SUBDIR / f"{sanitize_uid(sop_instance_uid)}.dcm"
                kept = str(self.spool.write_path(target, encoded).path)
            except OSError as exc:
                logger.warning("could not keep the rejected object (%s)", type(exc).__name__)
        try:
            record(
                sop_instance_uid=sop_instance_uid or "",
                sop_class_uid=sop_class_uid,
                study_instance_uid="",
                series_instance_uid="",
                modality="",
                path=kept,
                size_bytes=len(encoded),
                status=InstanceStatus.REJECTED,
                reason=reason,
            )
        except Exception:
            logger.exception("could not record rejected instance")
        return STATUS_CANNOT_UNDERSTAND


def handle_echo(event: Any) -> int:
    return STATUS_SUCCESS
