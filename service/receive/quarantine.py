"""Retention of the quarantine: the objects that could not be decoded, kept in storage_dir/_rejected
(service/receive/handlers.py) so that a person can look at them, within ``[quarantine] max_age_days`` and
``max_bytes``. Files older than the age cap go first, then the oldest until the total fits the size cap. The
instance rows keep the reason and size; their ``path`` may then name a file that is gone. Run by the node's main
process at start-up and every ``cleanup_interval_seconds`` (service/receive/scp.py run_scp)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from service.receive.handlers import REJECTED_SUBDIR
from service.receive.settings import QuarantineSettings

logger = logging.getLogger(__name__)

SECONDS_PER_DAY = 86400.0


@dataclass(frozen=True)
class CleanupResult:
    removed_files: int
    removed_bytes: int
    kept_files: int
    kept_bytes: int


def _entries(folder: Path) -> list[tuple[float, int, Path]]:
    out = []
    for path in folder.rglob("*"):
        try:
            stat = path.stat()
        except OSError:
            continue
        if path.is_file():
            out.append((stat.st_mtime, stat.st_size, path))
    out.sort()
    return out


def enforce_retention(folder: Path, settings: QuarantineSettings, *, now: float | None = None) -> CleanupResult:
    """Remove quarantined files over the age cap, then the oldest until the total is within ``max_bytes``."""
    if not folder.is_dir():
        return CleanupResult(0, 0, 0, 0)
    cutoff = (time.time() if now is None else now) - settings.max_age_days * SECONDS_PER_DAY
    entries = _entries(folder)
    total = sum(size for _, size, _ in entries)
    removed_files = removed_bytes = 0
    for mtime, size, path in entries:
        if mtime >= cutoff and total <= settings.max_bytes:
            break  # sorted oldest first: everything after is younger and fits
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            logger.warning("quarantine: could not remove %s (%s)", path.name, type(exc).__name__)
            continue
        total -= size
        removed_files += 1
        removed_bytes += size
    if removed_files:
        logger.info("quarantine: removed %d file(s), %d bytes (caps: %s days, %d bytes)", removed_files,
                    removed_bytes, settings.max_age_days, settings.max_bytes)
    return CleanupResult(removed_files, removed_bytes, len(entries) - removed_files, total)


class QuarantineCleaner:
    """Runs ``enforce_retention`` on storage_dir/_rejected when due (never raises: a failure is logged)."""

    def __init__(self, storage_dir: Path, settings: QuarantineSettings,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.folder = Path(storage_dir) / REJECTED_SUBDIR
        self.settings = settings
        self.clock = clock
        self._next_run: float | None = None

    def run_if_due(self) -> CleanupResult | None:
        now = self.clock()
        if self._next_run is not None and now < self._next_run:
            return None
        self._next_run = now + self.settings.cleanup_interval_seconds
        try:
            return enforce_retention(self.folder, self.settings)
        except Exception:  # the receive loop must go on whatever the file system does
            logger.exception("quarantine clean-up failed")
            return None
