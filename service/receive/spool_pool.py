"""The spool's pool mode: a C-STORE is answered after ONE data flush, with no rename and no directory flush.

Each receiving process owns a pool directory ``<pool root>/p<pid>-<token>/`` (held with an exclusive ``flock`` on
its ``lock`` file for the life of the process) of empty files that were created, and whose directory
was fsynced, ahead of need by a background thread: their directory entries are already durable. A store takes one,
writes the instance into it and ``fdatasync``s it (data and size) before the response: the one flush of the path.
The move to ``<study>/<series>/<sop>.dcm`` (rename, then one fsync per directory touched) is done later, for all
files received meanwhile, by ``settle`` (the batched recorder calls it before it commits their rows, so that no row
names a file that is not yet in place).

Completeness marker: the 128-byte File Preamble of PS3.10 7.1 is free for an implementation's use; while the file
is in the pool it holds ``MARKER`` and the file's whole length (the received preamble is all zeros; zeros are
written back once the move is durable, never before, so a pool file never loses its mark). A pool file is a
received instance when its mark is there and its length is the recorded one; an empty file is free; anything else
was cut short by a crash in the middle of its write (so never acknowledged) and goes to quarantine. With ext4's
default ``data=ordered`` a size that was made durable covers data that is durable too, so the length is enough (no
checksum on the response path: it would cost ~0.2 ms an image).

``drain_pools`` does this at start-up for every pool directory whose lock is free (its process is gone).

The pool root is ``<storage_dir>-pool`` next to the spool, so that the spool holds nothing but instances (and
results, and the quarantine); it must be on the spool's file system (a rename cannot cross file systems), so when
``storage_dir`` is a mount point, or its parent is not writable, it is ``storage_dir/_pool`` instead.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import logging
import os
import secrets
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

POOL_SUBDIR = "_pool"
"""The pool root inside the spool, when the one next to it is not possible."""
SIBLING_SUFFIX = "-pool"
LOCK_NAME = "lock"
POOL_SUFFIX = ".pool"
MARKER = b"BMDPOOL1"
PREAMBLE_BYTES = 128
ZERO_PREAMBLE = b"\x00" * PREAMBLE_BYTES
DICM_PREFIX = b"DICM"
DEFAULT_READY_FILES = 64
"""Empty files kept ready (refilled in the background when half are used): ~0.3 s of 4 busy associations."""

FileWriter = Callable[[int, bytes], None]


def fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories; the rename is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def poolable(data: bytes) -> bool:
    """A DICOM file stream whose preamble is all zeros (what pynetdicom builds): its preamble can carry the mark."""
    return len(data) > PREAMBLE_BYTES + len(DICM_PREFIX) and data[:PREAMBLE_BYTES] == ZERO_PREAMBLE and \
        data[PREAMBLE_BYTES:PREAMBLE_BYTES + len(DICM_PREFIX)] == DICM_PREFIX


def marked_preamble(length_bytes: int) -> bytes:
    head = MARKER + length_bytes.to_bytes(8, "little")
    return head + b"\x00" * (PREAMBLE_BYTES - len(head))


def complete_length(head: bytes) -> int | None:
    """The length a pool file's marked preamble records, or None when ``head`` is not a marked preamble."""
    if len(head) < PREAMBLE_BYTES + len(DICM_PREFIX) or not head.startswith(MARKER):
        return None
    if head[PREAMBLE_BYTES:PREAMBLE_BYTES + len(DICM_PREFIX)] != DICM_PREFIX:
        return None
    return int.from_bytes(head[len(MARKER):len(MARKER) + 8], "little")


def make_dirs(directory: Path) -> set[Path]:
    """``mkdir -p``; returns the directories whose entries changed (the parents of those created), to fsync."""
    missing = []
    probe = directory
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    directory.mkdir(parents=True, exist_ok=True)
    return {path.parent for path in missing}


def restore_preamble(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, ZERO_PREAMBLE, 0)
    finally:
        os.close(fd)


def pool_roots(storage_dir: Path) -> tuple[Path, Path]:
    """Where pools may be: next to the spool (preferred) and inside it."""
    storage_dir = Path(storage_dir)
    return storage_dir.with_name(storage_dir.name + SIBLING_SUFFIX), storage_dir / POOL_SUBDIR


def _make_root(storage_dir: Path) -> Path:
    """The pool root for a new pool (created, its entry durable): next to the spool when that is on the same file
    system and writable, else inside the spool."""
    make_dirs(storage_dir)
    sibling, inside = pool_roots(storage_dir)
    try:
        changed = make_dirs(sibling)
        if os.stat(sibling).st_dev == os.stat(storage_dir).st_dev:
            for directory in changed:
                fsync_dir(directory)
            return sibling
    except OSError as exc:
        logger.info("spool pool: %s not usable (%s); the pool goes inside the spool", sibling, exc)
    for directory in make_dirs(inside):
        fsync_dir(directory)
    return inside


def _lock(directory: Path) -> int | None:
    """An exclusive flock on ``directory/lock`` (its fd, held open), or None when another process holds it."""
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return None
        raise
    return fd


class SpoolPool:
    """This process's pool of durable empty files, and the instances written into them that are not yet moved."""

    def __init__(self, storage_dir: Path, writer: FileWriter, ready_files: int = DEFAULT_READY_FILES) -> None:
        if ready_files < 1:
            raise ValueError(f"ready_files must be >= 1, got {ready_files}")
        self.root = _make_root(Path(storage_dir))
        self.dir = self.root / f"p{os.getpid()}-{secrets.token_hex(4)}"
        self.dir.mkdir()
        self._lock_fd = _lock(self.dir)
        fsync_dir(self.root)
        self.writer = writer
        self.ready_files = ready_files
        self._names = itertools.count()
        self._mutex = threading.Lock()
        self._ready: deque[Path] = deque()
        self._pending: list[tuple[Path, Path]] = []
        self._pending_finals: set[Path] = set()
        self._unplaced: set[Path] = set()
        """Final paths whose move failed (their files stay in the pool until the next start-up)."""
        self._refill_needed = threading.Event()
        self._refill()
        self._thread = threading.Thread(target=self._refill_forever, name="spool-pool", daemon=True)
        self._thread.start()

    def _new_file(self) -> Path:
        path = self.dir / f"slot-{next(self._names):08d}{POOL_SUFFIX}"
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        return path

    def _refill(self) -> None:
        with self._mutex:
            missing = self.ready_files - len(self._ready)
        if missing <= 0:
            return
        created = [self._new_file() for _ in range(missing)]
        fsync_dir(self.dir)  # one flush makes all their entries durable
        with self._mutex:
            self._ready.extend(created)

    def _refill_forever(self) -> None:
        while True:
            self._refill_needed.wait()
            self._refill_needed.clear()
            try:
                self._refill()
            except OSError as exc:  # disk full, say: stores fall back to creating their file themselves
                logger.warning("spool pool: could not create empty files (%s)", exc)

    def _take(self) -> tuple[Path, bool]:
        """A pool file and whether its directory entry is already durable."""
        with self._mutex:
            path = self._ready.popleft() if self._ready else None
            if len(self._ready) < self.ready_files // 2:
                self._refill_needed.set()
        if path is not None:
            return path, True
        return self._new_file(), False

    def is_pending(self, final_path: Path) -> bool:
        with self._mutex:
            return final_path in self._pending_finals

    def write(self, final_path: Path, data: bytes) -> None:
        """Write ``data`` (see ``poolable``) durably into a pool file; its move to ``final_path`` is pending."""
        path, entry_durable = self._take()
        try:
            fd = os.open(path, os.O_WRONLY)
            try:
                self.writer(fd, marked_preamble(len(data)))
                self.writer(fd, memoryview(data)[PREAMBLE_BYTES:])  # type: ignore[arg-type]
                os.fdatasync(fd)
            finally:
                os.close(fd)
            if not entry_durable:
                fsync_dir(self.dir)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        with self._mutex:
            self._pending.append((path, final_path))
            self._pending_finals.add(final_path)

    def settle(self) -> set[Path]:
        """Move every pending file into place (then fsync each directory touched, once); returns every final path
        that could not be moved so far (their files stay in the pool: the next start-up's ``drain_pools`` moves
        them)."""
        with self._mutex:
            batch, self._pending = self._pending, []
        failed: set[Path] = set()
        placed: list[Path] = []
        to_sync: set[Path] = {self.dir} if batch else set()
        for pool_path, final_path in batch:
            try:
                changed = place(pool_path, final_path)
            except OSError as exc:
                logger.error("spool pool: could not move %s into place (%s); it is moved at the next start-up",
                             pool_path.name, exc)
                failed.add(final_path)
                continue
            to_sync |= changed
            placed += [final_path] if changed else []
        for directory in to_sync:
            fsync_dir(directory)
        restore_preambles(placed)
        with self._mutex:
            self._pending_finals.difference_update(final for _, final in batch)
            self._unplaced |= failed
            return set(self._unplaced)


def place(pool_path: Path, final_path: Path) -> set[Path]:
    """Move a complete pool file to ``final_path`` (kept when a complete file is already there: a duplicate);
    returns the directories to fsync. Its marked preamble is cleared only once those are fsynced
    (``restore_preambles``): a pool file that lost its mark would be taken for one cut short."""
    if final_path.exists():
        pool_path.unlink()
        return set()
    changed = make_dirs(final_path.parent)
    os.replace(pool_path, final_path)
    return {*changed, final_path.parent}


def restore_preambles(paths: list[Path]) -> None:
    """Zeros back into the preambles of files moved into place (the bytes as received); not flushed: a file that
    keeps its mark after a crash is still a valid DICOM file (the preamble is free for an implementation's use)."""
    for path in paths:
        try:
            restore_preamble(path)
        except OSError as exc:
            logger.warning("spool pool: preamble of %s not cleared (%s); the file is valid as it is", path, exc)


@dataclass(frozen=True)
class DrainReport:
    moved: int = 0
    free: int = 0
    quarantined: int = 0

    def __post_init__(self) -> None:
        for name in ("moved", "free", "quarantined"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


FinalPathFor = Callable[[bytes], Path | None]
"""The spool path of an instance, from its bytes; None when it does not decode (it goes to quarantine)."""


def drain_pools(storage_dir: Path, final_path_for: FinalPathFor, quarantine_dir: Path) -> DrainReport:
    """Start-up: for every pool directory no live process holds, move its received instances into place, remove
    its empty files and quarantine the partly written ones; then remove the directory."""
    moved = free = quarantined = 0
    roots = [root for root in pool_roots(storage_dir) if root.is_dir()]
    for directory in sorted(p for root in roots for p in root.iterdir() if p.is_dir()):
        lock_fd = _lock(directory)
        if lock_fd is None:
            continue  # a live receiver's pool
        try:
            counts = _drain_one(directory, final_path_for, quarantine_dir)
        finally:
            os.close(lock_fd)
        moved, free, quarantined = moved + counts[0], free + counts[1], quarantined + counts[2]
        (directory / LOCK_NAME).unlink(missing_ok=True)
        try:
            directory.rmdir()
        except OSError as exc:
            logger.warning("spool pool: %s not removed (%s)", directory, exc)
    for root in roots:
        fsync_dir(root)
    report = DrainReport(moved, free, quarantined)
    if moved or quarantined:
        logger.info("spool pool: %d received instance(s) moved into place, %d partly written file(s) quarantined, "
                    "%d empty file(s) removed", moved, quarantined, free)
    return report


def _drain_one(directory: Path, final_path_for: FinalPathFor, quarantine_dir: Path) -> tuple[int, int, int]:
    moved = free = quarantined = 0
    placed: list[Path] = []
    to_sync: set[Path] = {directory}
    for path in sorted(directory.glob(f"*{POOL_SUFFIX}")):
        data = path.read_bytes()
        if not data:
            path.unlink()
            free += 1
            continue
        expected = complete_length(data)
        final_path = final_path_for(ZERO_PREAMBLE + data[PREAMBLE_BYTES:]) if expected == len(data) else None
        if final_path is None:
            reason = ("no completeness mark" if expected is None else
                      f"{len(data)} of {expected} bytes written" if expected != len(data) else "does not decode")
            to_sync |= _quarantine(path, directory, quarantine_dir, reason)
            quarantined += 1
            continue
        fd = os.open(path, os.O_RDONLY)  # it may not have been acknowledged: flush it before it is recorded
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        changed = place(path, final_path)
        to_sync |= changed
        placed += [final_path] if changed else []
        moved += 1
    for synced in to_sync:
        fsync_dir(synced)
    restore_preambles(placed)
    return moved, free, quarantined


def _quarantine(path: Path, directory: Path, quarantine_dir: Path, reason: str) -> set[Path]:
    """A partly written pool file (never acknowledged) goes to the quarantine, its reason logged."""
    changed = make_dirs(quarantine_dir)
    target = quarantine_dir / f"pool-{directory.name}-{path.stem}.partial"
    os.replace(path, target)
    logger.warning("spool pool: %s was cut short by a crash (%s; never acknowledged): kept as %s", path.name,
                   reason, target)
    return {*changed, quarantine_dir}
