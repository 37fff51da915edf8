"""Retention of the quarantine (storage_dir/_rejected): age cap, then size cap, oldest first."""

from __future__ import annotations

import os
import time
from pathlib import Path

from service.receive.quarantine import QuarantineCleaner, enforce_retention
from service.receive.settings import QuarantineSettings

DAY_S = 86400.0


def _file(folder: Path, name: str, size: int, age_days: float, now: float) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * size)
    os.utime(path, (now - age_days * DAY_S, now - age_days * DAY_S))
    return path


def test_files_over_the_age_cap_are_removed(tmp_path: Path) -> None:
    now = time.time()
    old = _file(tmp_path, "old.dcm", 100, 31, now)
    young = _file(tmp_path, "young.dcm", 100, 29, now)
    result = enforce_retention(tmp_path, QuarantineSettings(max_bytes=10_000, max_age_days=30), now=now)
    assert not old.exists() and young.exists()
    assert (result.removed_files, result.removed_bytes, result.kept_files, result.kept_bytes) == (1, 100, 1, 100)


def test_the_oldest_files_go_until_the_total_fits_the_size_cap(tmp_path: Path) -> None:
    now = time.time()
    files = [_file(tmp_path, f"sub/{i}.dcm", 1000, 10 - i, now) for i in range(10)]  # 0 is the oldest
    enforce_retention(tmp_path, QuarantineSettings(max_bytes=3500, max_age_days=30), now=now)
    assert [f.exists() for f in files] == [False] * 7 + [True] * 3


def test_the_cleaner_runs_at_start_then_only_when_due(tmp_path: Path) -> None:
    clock = [0.0]
    cleaner = QuarantineCleaner(tmp_path, QuarantineSettings(max_bytes=0, cleanup_interval_seconds=60),
                                clock=lambda: clock[0])
    first = _file(tmp_path / "_rejected", "a.dcm", 10, 0, time.time())
    assert cleaner.run_if_due() is not None and not first.exists()
    second = _file(tmp_path / "_rejected", "b.dcm", 10, 0, time.time())
    clock[0] = 59.0
    assert cleaner.run_if_due() is None and second.exists()
    clock[0] = 60.0
    assert cleaner.run_if_due() is not None and not second.exists()
