"""Spool: received DICOM bytes on disk, written atomically.

Layout: ``storage_dir/<study_instance_uid>/<series_instance_uid>/<sop_instance_uid>.dcm``, each UID sanitised
so that it is a safe single path component. A file either exists complete or not at all: the bytes go to a
temporary file in the destination directory, are fsync'ed, and the temporary file is renamed onto the final name
(then the directory is fsync'ed so that the rename survives a power loss).

Two modes (``[node] spool_mode``): ``direct`` does the above before the C-STORE response (two flushes: the file
and its directory); ``pool`` writes into an already-durable empty file of the process's pool and answers after one
``fdatasync``, the rename and the directory flush following in batches (``settle``, called by the recorder before
it commits the rows): service/receive/spool_pool.py.

Out of disk: before writing, the spool checks that the file system keeps ``reserve_bytes`` free after the write
and raises ``OSError(ENOSPC)`` otherwise; a real ENOSPC during the write removes the temporary file and is
re-raised. The free-space probe and the low-level writer are injectable so tests can simulate a full disk.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from service.receive.spool_pool import SpoolPool, fsync_dir, poolable

logger = logging.getLogger(__name__)

# A DICOM UID is at most 64 characters of digits and dots (PS3.5 9.1); anything else is replaced.
_UID_MAX_CHARS = 64
_UNSAFE_UID_CHARS = re.compile(r"[^0-9A-Za-z.\-]")
UNKNOWN_UID_COMPONENT = "unknown"
# Keep this much free space on the spool's file system (the database and logs live nearby).
DEFAULT_RESERVE_BYTES = 64 * 1024 * 1024
SPOOL_MODE_DIRECT = "direct"
SPOOL_MODE_POOL = "pool"
SPOOL_MODES = (SPOOL_MODE_DIRECT, SPOOL_MODE_POOL)

FreeBytesProbe = Callable[[Path], int]
FileWriter = Callable[[int, bytes], None]
"""Writes all bytes to an open file descriptor (raises OSError on failure)."""


def sanitize_uid(uid: str) -> str:
    """Return ``uid`` as one safe path component (no separators, no '..', bounded length)."""
    cleaned = _UNSAFE_UID_CHARS.sub("_", uid.strip().rstrip("\x00"))[:_UID_MAX_CHARS]
    if not cleaned or set(cleaned) <= {"."}:
        return UNKNOWN_UID_COMPONENT
    return cleaned


def disk_free_bytes(path: Path) -> int:
    """Free bytes available to this process on the file system holding ``path``."""
    return shutil.disk_usage(path).free


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


@dataclass(frozen=True)
class SpoolResult:
    path: Path
    size_bytes: int
    already_present: bool
    """True when a complete file with this SOP Instance UID was already there (nothing written)."""
    pending: bool = False
    """Pool mode: the bytes are durable in a pool file; ``path`` is where ``Spool.settle`` moves it."""


@dataclass
class Spool:
    storage_dir: Path
    reserve_bytes: int = DEFAULT_RESERVE_BYTES
    free_bytes: FreeBytesProbe = field(default=disk_free_bytes)
    writer: FileWriter = field(default=_write_all)
    mode: str = SPOOL_MODE_DIRECT
    _pool: SpoolPool | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.storage_dir = Path(self.storage_dir)
        if self.reserve_bytes < 0:
            raise ValueError(f"reserve_bytes must be >= 0, got {self.reserve_bytes}")
        if self.mode not in SPOOL_MODES:
            raise ValueError(f"mode must be one of {', '.join(SPOOL_MODES)}, got {self.mode!r}")
        if self.pooled:  # this process's pool directory, its empty files made durable ahead of need
            self._pool = SpoolPool(self.storage_dir, self.writer)

    @property
    def pooled(self) -> bool:
        return self.mode == SPOOL_MODE_POOL

    def settle(self) -> set[Path]:
        """Pool mode: move the instances written since the last call into place (renames, then one fsync per
        directory); returns the final paths that could not be moved. Direct mode: nothing to do."""
        return set() if self._pool is None else self._pool.settle()

    def path_for(self, study_instance_uid: str, series_instance_uid: str, sop_instance_uid: str) -> Path:
        return (
            self.storage_dir
            / sanitize_uid(study_instance_uid)
            / sanitize_uid(series_instance_uid)
            / f"{sanitize_uid(sop_instance_uid)}.dcm"
        )

    def write(
        self, study_instance_uid: str, series_instance_uid: str, sop_instance_uid: str, data: bytes
    ) -> SpoolResult:
        """Store ``data`` at the instance's path; keep an existing complete file (duplicate instance). Pool mode:
        the file is durable when this returns, but is at ``path`` only after the next ``settle``."""
        final_path = self.path_for(study_instance_uid, series_instance_uid, sop_instance_uid)
        pool = self._pool
        if pool is None or not poolable(data):
            return self.write_path(final_path, data)
        if pool.is_pending(final_path):
            return SpoolResult(final_path, len(data), already_present=True, pending=True)
        if final_path.exists():
            return SpoolResult(final_path, final_path.stat().st_size, already_present=True)
        self._check_free(pool.dir, len(data))
        pool.write(final_path, data)
        return SpoolResult(final_path, len(data), already_present=False, pending=True)

    def _check_free(self, directory: Path, size_bytes: int) -> None:
        free = self.free_bytes(directory)
        if free - size_bytes < self.reserve_bytes:
            raise OSError(
                errno.ENOSPC,
                f"spool full: {free} bytes free, {size_bytes} needed plus {self.reserve_bytes} reserved",
                str(directory),
            )

    def write_path(self, final_path: Path, data: bytes) -> SpoolResult:
        """Direct mode's write (also used for the quarantine of rejected objects in both modes)."""
        if final_path.exists():
            return SpoolResult(final_path, final_path.stat().st_size, already_present=True)
        final_path.parent.mkdir(parents=True, exist_ok=True)
        self._check_free(final_path.parent, len(data))
        fd, tmp_name = tempfile.mkstemp(prefix=".incoming-", suffix=".part", dir=final_path.parent)
        tmp_path = Path(tmp_name)
        try:
            try:
                self.writer(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp_path, final_path)
        except BaseException:
            tmp_path.unlink(missing_ok=True)
            raise
        fsync_dir(final_path.parent)
        return SpoolResult(final_path, len(data), already_present=False)


def remove_stale_partials(storage_dir: Path) -> int:
    """Delete temporary files left by a crash in the middle of a write; returns how many were removed."""
    removed = 0
    if not storage_dir.exists():
        return 0
    for partial in storage_dir.rglob(".incoming-*.part"):
        try:
            partial.unlink()
            removed += 1
        except OSError as exc:
            logger.warning("could not remove stale partial file %s: %s", partial, exc)
    return removed
