"""The spool's pool mode (service/receive/spool_pool.py): one data flush before the answer, the move into place
batched before the rows' commit, and the start-up drain of the pools of processes that are gone."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
import sqlalchemy
from pydicom.uid import ExplicitVRLittleEndian
from sqlalchemy import select

from service.db.engine import read_session
from service.db.queries import InstanceRecord, record_instance, record_instances, recorded_instance_paths
from service.db.tables import Instance
from service.domain.status import InstanceStatus
from service.receive.handlers import STATUS_SUCCESS, StoreHandler
from service.receive.part10 import received_part10
from service.receive.reconcile import reconcile_spool, spool_files
from service.receive.recorder import BatchRecorder, RecorderSettings, RecordingError
from service.receive.spool import Spool
from service.receive.spool_pool import pool_roots
from tests.support.ct_series import write_ct_series
from tests.support.store_event import store_event

REPO_ROOT = Path(__file__).resolve().parents[3]


def _series(folder: Path, n: int) -> list[Path]:
    return write_ct_series(folder, np.arange(n * 16 * 16, dtype=np.int16).reshape(n, 16, 16))


def _uids(path: Path) -> tuple[str, str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


def _pool_files(storage: Path) -> list[Path]:
    return sorted(p for root in pool_roots(storage) for p in root.rglob("*.pool"))


def test_a_pooled_write_is_durable_in_the_pool_and_in_place_after_settle(tmp_path: Path) -> None:
    (source,) = _series(tmp_path / "src", 1)
    data = source.read_bytes()
    assert data[:128] == b"\x00" * 128  # what pynetdicom and pydicom write: the preamble can carry the mark
    spool = Spool(tmp_path / "storage", reserve_bytes=0, mode="pool")
    result = spool.write(*_uids(source), data)

    assert result.pending and not result.already_present and not result.path.exists()
    filled = [p for p in _pool_files(spool.storage_dir) if p.stat().st_size]
    assert len(filled) == 1 and filled[0].stat().st_size == len(data)
    assert filled[0].read_bytes()[128:] == data[128:] and filled[0].read_bytes()[:8] == b"BMDPOOL1"
    assert spool.write(*_uids(source), data).already_present  # the same instance again while it is pending

    assert spool.settle() == set()
    assert result.path.read_bytes() == data  # byte for byte what was received, preamble zeros again
    assert not [p for p in _pool_files(spool.storage_dir) if p.stat().st_size]
    assert list(spool_files(spool.storage_dir)) == [result.path]
    assert [p for p in spool.storage_dir.rglob("*") if p.is_file()] == [result.path]  # the pool is next to it
    again = spool.write(*_uids(source), data)
    assert again.already_present and not again.pending


def test_a_full_disk_answers_enospc_and_leaves_no_filled_pool_file(tmp_path: Path) -> None:
    (source,) = _series(tmp_path / "src", 1)
    spool = Spool(tmp_path / "storage", reserve_bytes=1000, free_bytes=lambda _p: 1500, mode="pool")
    with pytest.raises(OSError, match="spool full"):
        spool.write(*_uids(source), source.read_bytes())
    assert not [p for p in _pool_files(spool.storage_dir) if p.stat().st_size]
    assert spool.settle() == set()


def test_spool_mode_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mode must be one of direct, pool"):
        Spool(tmp_path, mode="fast")


def _event(path: Path) -> SimpleNamespace:
    return store_event(path.read_bytes())


def test_without_a_batched_recorder_the_handler_moves_the_file_before_recording(tmp_path: Path) -> None:
    (source,) = _series(tmp_path / "src", 1)
    in_place: list[bool] = []
    event = _event(source)
    received, _ = received_part10(event)
    handler = StoreHandler(Spool(tmp_path / "storage", reserve_bytes=0, mode="pool"),
                           lambda row: in_place.append(Path(str(row.path)).read_bytes() == received) or True)
    assert handler(event) == STATUS_SUCCESS
    assert in_place == [True]


def test_the_recorder_moves_files_into_place_before_it_commits_their_rows(
        tmp_path: Path, sqlite_engine: sqlalchemy.Engine) -> None:
    sources = _series(tmp_path / "src", 3)
    spool = Spool(tmp_path / "storage", reserve_bytes=0, mode="pool")
    seen_at_commit: list[bool] = []

    def write_batch(rows: object) -> list[bool]:
        batch = list(rows)  # type: ignore[call-overload]
        seen_at_commit.extend(Path(r.path).is_file() for r in batch)
        return list(record_instances(sqlite_engine, batch))

    recorder = BatchRecorder(write_batch, lambda row: bool(record_instance(sqlite_engine, row)),
                             RecorderSettings(linger_s=0.05)).start()
    handler = StoreHandler(spool, recorder.record_and_wait, recorder)
    try:
        for path in sources:
            assert handler(_event(path)) == STATUS_SUCCESS
        assert recorder.wait_recorded(timeout_s=30)
    finally:
        recorder.stop()
    assert seen_at_commit == [True, True, True]
    with read_session(sqlite_engine) as session:
        rows = list(session.scalars(select(Instance)))
    assert sorted(Path(str(r.path)).read_bytes() for r in rows) == sorted(
        received_part10(_event(p))[0] for p in sources)


def test_a_row_whose_file_could_not_be_moved_is_not_committed() -> None:
    committed: list[str] = []
    row = InstanceRecord(sop_instance_uid="1.2.3", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                         study_instance_uid="1.2", series_instance_uid="1.2.4", modality="CT",
                         transfer_syntax_uid=str(ExplicitVRLittleEndian), path="/spool/1.2/1.2.4/1.2.3.dcm",
                         size_bytes=10, calling_ae_title="SCANNER", status=InstanceStatus.STORED)
    def commit_row(r: InstanceRecord) -> bool:
        committed.append(r.sop_instance_uid)
        return True

    recorder = BatchRecorder(lambda rows: [commit_row(r) for r in rows], commit_row, RecorderSettings(linger_s=0))
    recorder.add_before_commit(lambda: {Path("/spool/1.2/1.2.4/1.2.3.dcm")})
    recorder.start()
    try:
        with pytest.raises(RecordingError, match="could not be recorded"):
            recorder.record_and_wait(row)
    finally:
        recorder.stop()
    assert committed == []


_CRASHING_WRITER = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    import pydicom
    from service.receive.spool import Spool
    spool = Spool(Path(sys.argv[1]), reserve_bytes=0, mode="pool")
    for name in sys.argv[2:]:
        ds = pydicom.dcmread(name, stop_before_pixels=True)
        spool.write(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, Path(name).read_bytes())
    os._exit(0)  # gone before any settle: every instance is in the pool only
""")


def test_start_up_drains_the_pool_of_a_process_that_is_gone(tmp_path: Path,
                                                            sqlite_engine: sqlalchemy.Engine) -> None:
    sources = _series(tmp_path / "src", 4)
    storage = tmp_path / "storage"
    subprocess.run([sys.executable, "-c", _CRASHING_WRITER, str(storage), *map(str, sources)], cwd=REPO_ROOT,
                   check=True, timeout=120)
    filled = [p for p in _pool_files(storage) if p.stat().st_size]
    empty = [p for p in _pool_files(storage) if not p.stat().st_size]
    assert len(filled) == 4 and empty and list(spool_files(storage)) == []
    cut = filled[-1]  # a crash in the middle of this one's write: never acknowledged
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    alive = Spool(storage, reserve_bytes=0, mode="pool")  # a live process's pool is left alone

    report = reconcile_spool(storage, lambda: recorded_instance_paths(sqlite_engine),
                             lambda rows: record_instances(sqlite_engine, rows))

    assert (report.pool_moved, report.pool_quarantined, report.recorded) == (3, 1, 3)
    with read_session(sqlite_engine) as session:
        rows = list(session.scalars(select(Instance)))
    by_bytes = {p.read_bytes(): p for p in sources}
    assert sorted(by_bytes[Path(str(r.path)).read_bytes()].name for r in rows) == sorted(p.name for p in sources[:3])
    quarantined = list((storage / "_rejected").iterdir())
    assert len(quarantined) == 1 and quarantined[0].suffix == ".partial"
    assert [p.parent for p in _pool_files(storage)] == [alive._pool.dir] * len(_pool_files(storage))  # type: ignore[union-attr]
    assert not [p for p in _pool_files(storage) if p.stat().st_size]
    assert reconcile_spool(storage, lambda: recorded_instance_paths(sqlite_engine),
                           lambda rows: record_instances(sqlite_engine, rows)).recorded == 0  # nothing twice


def test_the_pool_goes_inside_the_spool_when_it_cannot_be_next_to_it(tmp_path: Path) -> None:
    (source,) = _series(tmp_path / "src", 1)
    storage = tmp_path / "storage"
    storage.mkdir()
    pool_roots(storage)[0].write_text("a file where the pool root would be")
    spool = Spool(storage, reserve_bytes=0, mode="pool")
    assert spool._pool is not None and spool._pool.root == storage / "_pool"
    result = spool.write(*_uids(source), source.read_bytes())
    spool.settle()
    assert result.path.read_bytes() == source.read_bytes()
