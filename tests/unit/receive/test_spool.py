"""Spool: path layout, UID sanitising, atomic writes, out-of-disk behaviour (no partial file)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from service.receive.spool import UNKNOWN_UID_COMPONENT, Spool, remove_stale_partials, sanitize_uid


def _all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize(
    ("uid", "expected"),
    [
        ("1.2.840.113619.2.55", "1.2.840.113619.2.55"),
        ("1.2.3\x00", "1.2.3"),
        (" 1.2.3 ", "1.2.3"),
        ("../../etc/passwd", ".._.._etc_passwd"),
        ("a/b\\c", "a_b_c"),
        ("", UNKNOWN_UID_COMPONENT),
        ("..", UNKNOWN_UID_COMPONENT),
        ("1." * 50, ("1." * 50)[:64]),
    ],
)
def test_sanitize_uid_gives_one_safe_component(uid: str, expected: str) -> None:
    cleaned = sanitize_uid(uid)
    assert cleaned == expected
    assert "/" not in cleaned and "\\" not in cleaned and cleaned not in ("", ".", "..")


def test_write_lays_out_study_series_sop(tmp_path: Path) -> None:
    spool = Spool(tmp_path, reserve_bytes=0)
    result = spool.write("1.2.3", "1.2.3.4", "1.2.3.4.5", b"DICM-bytes")
    assert result.path == tmp_path / "1.2.3" / "1.2.3.4" / "1.2.3.4.5.dcm"
    assert result.path.read_bytes() == b"DICM-bytes"
    assert result.size_bytes == 10 and not result.already_present
    assert _all_files(tmp_path) == [result.path]


def test_traversal_uids_stay_inside_storage_dir(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    result = Spool(storage, reserve_bytes=0).write("../..", "../x", "../../y", b"x")
    assert storage.resolve() in result.path.resolve().parents


def test_existing_complete_file_is_kept_for_a_duplicate(tmp_path: Path) -> None:
    spool = Spool(tmp_path, reserve_bytes=0)
    first = spool.write("1", "2", "3", b"first")
    second = spool.write("1", "2", "3", b"second copy")
    assert second.already_present and second.path == first.path
    assert first.path.read_bytes() == b"first"


def test_full_disk_raises_enospc_before_writing(tmp_path: Path) -> None:
    spool = Spool(tmp_path, reserve_bytes=1000, free_bytes=lambda _p: 1500)
    with pytest.raises(OSError) as info:
        spool.write("1", "2", "3", b"x" * 600)
    assert info.value.errno == errno.ENOSPC
    assert _all_files(tmp_path) == []


def test_enospc_during_write_leaves_no_partial_file(tmp_path: Path) -> None:
    def half_then_full(fd: int, data: bytes) -> None:
        os.write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    spool = Spool(tmp_path, reserve_bytes=0, writer=half_then_full)
    with pytest.raises(OSError) as info:
        spool.write("1", "2", "3", b"y" * 4096)
    assert info.value.errno == errno.ENOSPC
    assert _all_files(tmp_path) == []


def test_remove_stale_partials_only_removes_temporary_files(tmp_path: Path) -> None:
    spool = Spool(tmp_path, reserve_bytes=0)
    kept = spool.write("1", "2", "3", b"complete").path
    (kept.parent / ".incoming-abc.part").write_bytes(b"half")
    assert remove_stale_partials(tmp_path) == 1
    assert _all_files(tmp_path) == [kept]


def test_negative_reserve_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="reserve_bytes"):
        Spool(tmp_path, reserve_bytes=-1)
