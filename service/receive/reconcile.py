"""Start-up reconciliation of the receive spool with the database.

The spool is the source of truth for stored instances: a C-STORE is acknowledged once its file is fsynced at
``storage_dir/<study>/<series>/<sop>.dcm``; its database row is written afterwards by the batched recorder. If the
process died in between, the file has no row. At start-up, before the SCP accepts anything, every spool file is
compared with the recorded paths and each file without a row is recorded (its header parsed from the file), so that
the scheduler sees it and it goes through a job like any other. Temporary files of interrupted writes are removed
first (they were never acknowledged). Before that, the pools of the pool-mode spool (service/receive/spool_pool.py)
left by processes that are gone are drained: a pool file holding a whole instance (acknowledged, or at least
complete) is moved to its spool path and so recorded here; an empty one is removed; a partly written one (a crash in
the middle of its write, never acknowledged) goes to the quarantine (``_rejected``) with its reason logged.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread

from service.db.queries import InstanceRecord
from service.domain.status import InstanceStatus
from service.receive.handlers import REJECTED_SUBDIR, ignore_reason
from service.receive.header import DatasetMismatchError, UndecodableDatasetError, parse_header
from service.receive.spool import Spool, remove_stale_partials
from service.receive.spool_pool import drain_pools

logger = logging.getLogger(__name__)

RECONCILED_CALLING_AE_TITLE = ""
"""The calling AE title of a reconciled instance is not known (it was in the lost row)."""
_SPOOL_COMPONENT = re.compile(r"^[0-9][0-9A-Za-z.\-_]*$")
"""A sanitised UID component (``spool.sanitize_uid`` of a UID that ``parse_header`` accepted starts with a digit);
this keeps ``results/`` and ``_rejected/`` out of the walk."""


@dataclass(frozen=True)
class ReconcileReport:
    partials_removed: int
    spool_files: int
    recorded: int
    unreadable: int
    pool_moved: int = 0
    """Whole instances moved from the pools of processes that are gone to their spool paths."""
    pool_quarantined: int = 0
    """Partly written pool files (never acknowledged) moved to the quarantine."""

    def __post_init__(self) -> None:
        for name in ("partials_removed", "spool_files", "recorded", "unreadable", "pool_moved", "pool_quarantined"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


def spool_files(storage_dir: Path) -> Iterator[Path]:
    """Every instance file of the spool: ``<study>/<series>/<sop>.dcm``."""
    if not storage_dir.is_dir():
        return
    for study in storage_dir.iterdir():
        if not (study.is_dir() and _SPOOL_COMPONENT.match(study.name)):
            continue
        for series in study.iterdir():
            if not (series.is_dir() and _SPOOL_COMPONENT.match(series.name)):
                continue
            for path in series.iterdir():
                if path.suffix == ".dcm" and not path.name.startswith(".") and path.is_file():
                    yield path


def record_for_file(path: Path) -> InstanceRecord | None:
    """The instance row for a spool file, from its header; None when it does not decode or is not for the
    pipeline (the receiver would not have stored it)."""
    try:
        with path.open("rb") as handle:
            encoded = handle.read()
        header = parse_header(encoded)
        meta = dcmread(path, stop_before_pixels=True, specific_tags=["TransferSyntaxUID"]).file_meta
    except (OSError, UndecodableDatasetError, DatasetMismatchError) as exc:
        logger.warning("spool file %s cannot be reconciled: %s", path, exc)
        return None
    if ignore_reason(header) is not None:
        logger.warning("spool file %s is not for the pipeline; left unrecorded", path)
        return None
    return InstanceRecord(
        sop_instance_uid=header.sop_instance_uid,
        sop_class_uid=header.sop_class_uid,
        study_instance_uid=header.study_instance_uid,
        series_instance_uid=header.series_instance_uid,
        modality=header.modality,
        transfer_syntax_uid=str(meta.get("TransferSyntaxUID", "") or ""),
        path=str(path),
        size_bytes=len(encoded),
        calling_ae_title=RECONCILED_CALLING_AE_TITLE,
        status=InstanceStatus.STORED,
    )


def pool_final_path(storage_dir: Path) -> Callable[[bytes], Path | None]:
    """The spool path of a pool file's instance, from its header (None: it does not decode or is not for the
    pipeline, so the receiver did not store it; it goes to the quarantine)."""
    spool_paths = Spool(storage_dir)

    def final_path(encoded: bytes) -> Path | None:
        try:
            header = parse_header(encoded)
        except (UndecodableDatasetError, DatasetMismatchError):
            return None
        if ignore_reason(header) is not None:
            return None
        return spool_paths.path_for(header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid)

    return final_path


def reconcile_spool(storage_dir: Path, recorded_paths: Callable[[], set[str]],
                    record: Callable[[Sequence[InstanceRecord]], object], *, batch: int = 256,
                    remove_partials: bool = True) -> ReconcileReport:
    """Remove temporary files, then record every spool file that has no row (``recorded_paths``: the paths the
    database holds; ``record``: records rows in one transaction). The pools of processes that are gone are drained
    first. ``remove_partials=False`` while other receiver processes run (a receiver process died and the node goes
    on): their temporary files are writes in progress; a file a live process moved into place but has not recorded
    yet may be recorded here first (its own commit then finds it recorded: a duplicate, which is idempotent)."""
    drained = drain_pools(storage_dir, pool_final_path(storage_dir), storage_dir / REJECTED_SUBDIR)
    removed = remove_stale_partials(storage_dir) if remove_partials else 0
    known = recorded_paths()
    files = 0
    missing: list[InstanceRecord] = []
    unreadable = 0
    recorded = 0
    for path in spool_files(storage_dir):
        files += 1
        if str(path) in known:
            continue
        row = record_for_file(path)
        if row is None:
            unreadable += 1
            continue
        missing.append(row)
        if len(missing) >= batch:
            record(missing)
            recorded += len(missing)
            missing = []
    if missing:
        record(missing)
        recorded += len(missing)
    report = ReconcileReport(removed, files, recorded, unreadable, drained.moved, drained.quarantined)
    if removed or recorded or unreadable:
        logger.info("spool reconciliation: %d temporary files removed, %d of %d files recorded, %d unreadable",
                    removed, recorded, files, unreadable)
    return report
