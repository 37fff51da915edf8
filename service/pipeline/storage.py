"""Result files on disk: atomic writes (temp file, fsync, rename) and the per-job result folder."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from service.pipeline.types import EncodedObject


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees either nothing or the whole file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def result_dir(storage_dir: Path, job_id: int) -> Path:
    return Path(storage_dir) / "results" / f"job-{job_id}"


def object_filename(obj: EncodedObject) -> str:
    return f"{obj.kind}-{obj.sop_instance_uid}.dcm"


def write_object(folder: Path, obj: EncodedObject) -> tuple[Path, str]:
    """Write one object; returns (path, sha256 of the bytes)."""
    path = folder / object_filename(obj)
    atomic_write_bytes(path, obj.data)
    return path, hashlib.sha256(obj.data).hexdigest()


def write_result_json(folder: Path, document: dict[str, Any]) -> Path:
    path = folder / "result.json"
    atomic_write_bytes(path, (json.dumps(document, indent=2, sort_keys=False) + "\n").encode("utf-8"))
    return path


def clear_dir(folder: Path) -> None:
    """Remove leftovers of an earlier, uncommitted attempt of the same job."""
    if folder.exists():
        shutil.rmtree(folder)


def indeterminate_dir(storage_dir: Path, report_id: int) -> Path:
    """Folder of the objects of one indeterminate report (never cleared: each build writes new file names)."""
    return Path(storage_dir) / "results" / f"indeterminate-{report_id}"
