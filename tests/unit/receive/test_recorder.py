"""The receive path's batched recorder (service/receive/recorder.py) against the real query API on SQLite."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import pytest
import sqlalchemy
from sqlalchemy import func, select

from service.db.engine import read_session
from service.db.queries import InstanceRecord, record_instance, record_instances
from service.db.tables import Base, Instance, Series
from service.domain.status import InstanceStatus
from service.receive.recorder import BatchRecorder, RecorderSettings, RecordingError


def _row(i: int, series: str = "1.2.3.4", status: str = InstanceStatus.STORED) -> InstanceRecord:
    return InstanceRecord(sop_instance_uid=f"1.2.3.4.5.{i}", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                          study_instance_uid="1.2.3", series_instance_uid=series, modality="CT",
                          transfer_syntax_uid="1.2.840.10008.1.2.1", path=f"/spool/{i}.dcm", size_bytes=10,
                          calling_ae_title="PACS", status=status, reason=None if status == "stored" else "why")


def _count(engine: sqlalchemy.Engine) -> int:
    with read_session(engine) as session:
        return int(session.scalar(select(func.count()).select_from(Instance)) or 0)


def test_rows_are_committed_in_batches_and_the_barrier_waits_for_them(sqlite_engine: sqlalchemy.Engine) -> None:
    batches: list[int] = []

    def write(rows: Sequence[InstanceRecord]) -> Sequence[bool]:
        batches.append(len(rows))
        return record_instances(sqlite_engine, rows)

    recorder = BatchRecorder(write, lambda r: record_instance(sqlite_engine, r),
                             RecorderSettings(linger_s=0.2)).start()
    try:
        for i in range(50):
            recorder.submit(_row(i))
        assert recorder.wait_recorded(timeout_s=10)
        assert _count(sqlite_engine) == 50
        assert sum(batches) == 50 and len(batches) < 5, batches  # not one transaction per row
        with read_session(sqlite_engine) as session:
            series = session.scalar(select(Series))
            assert series is not None and series.instance_count == 50
    finally:
        recorder.stop()


def test_record_and_wait_does_not_linger_and_reports_a_row_that_cannot_be_recorded(
        sqlite_engine: sqlalchemy.Engine) -> None:
    def failing_row(row: InstanceRecord) -> bool:
        raise sqlalchemy.exc.OperationalError("insert", {}, Exception("database is locked"))

    def failing_batch(rows: Sequence[InstanceRecord]) -> Sequence[bool]:
        raise sqlalchemy.exc.OperationalError("insert", {}, Exception("database is locked"))

    recorder = BatchRecorder(failing_batch, failing_row, RecorderSettings(linger_s=30.0, wait_timeout_s=5)).start()
    try:
        with pytest.raises(RecordingError, match="could not be recorded"):
            recorder.record_and_wait(_row(1, status=InstanceStatus.IGNORED))  # 30 s linger would time out
    finally:
        recorder.stop()


def test_a_failed_batch_is_recorded_row_by_row(sqlite_engine: sqlalchemy.Engine) -> None:
    calls = {"batch": 0}

    def flaky_batch(rows: Sequence[InstanceRecord]) -> Sequence[bool]:
        calls["batch"] += 1
        raise sqlalchemy.exc.OperationalError("insert", {}, Exception("database is locked"))

    recorder = BatchRecorder(flaky_batch, lambda r: record_instance(sqlite_engine, r)).start()
    try:
        for i in range(5):
            recorder.submit(_row(i))
        assert recorder.wait_recorded(timeout_s=10)
    finally:
        recorder.stop()
    assert calls["batch"] >= 1 and _count(sqlite_engine) == 5


def test_stop_flushes_what_is_queued(sqlite_engine: sqlalchemy.Engine) -> None:
    recorder = BatchRecorder(lambda rows: record_instances(sqlite_engine, rows),
                             lambda r: record_instance(sqlite_engine, r), RecorderSettings(linger_s=30.0)).start()
    threads = [threading.Thread(target=lambda k=k: recorder.submit(_row(k))) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    recorder.stop()
    assert _count(sqlite_engine) == 8


def test_settings_validate_themselves() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        RecorderSettings(max_batch=0)
    with pytest.raises(ValueError, match="linger_s"):
        RecorderSettings(linger_s=-1)
    with pytest.raises(ValueError, match="wait_timeout_s"):
        RecorderSettings(wait_timeout_s=0)


def test_record_instances_keeps_the_duplicate_semantics(sqlite_engine: sqlalchemy.Engine) -> None:
    assert record_instances(sqlite_engine, [_row(1), _row(2), _row(1)]) == [True, True, False]
    assert _count(sqlite_engine) == 2


def test_a_batch_records_as_one_instance_at_a_time_would(tmp_path: Path, sqlite_engine: sqlalchemy.Engine) -> None:
    """A stored copy replaces an ignored one, within one batch and across batches; the series counts the stored
    ones; a second stored copy is a duplicate. The same rows one at a time (record_instance) give the same table."""
    ignored_1, stored_1 = _row(1, status=InstanceStatus.IGNORED), _row(1)
    ignored_2, stored_2 = _row(2, status=InstanceStatus.IGNORED), _row(2)
    batches = [[ignored_1, stored_1, _row(3), stored_1, ignored_2], [stored_2, _row(3), _row(4, "1.2.3.9")]]
    assert [record_instances(sqlite_engine, b) for b in batches] == [[True, True, True, False, True],
                                                                     [True, False, True]]

    def table(engine: sqlalchemy.Engine) -> tuple[object, object]:
        with read_session(engine) as session:
            instances = sorted((i.sop_instance_uid, i.status, i.path, i.reason, i.series.series_instance_uid)
                               for i in session.scalars(select(Instance)))
            series = sorted((s.series_instance_uid, s.instance_count, s.status)
                            for s in session.scalars(select(Series)))
        return instances, series

    one_at_a_time = sqlalchemy.create_engine(f"sqlite:///{tmp_path}/single.db")
    Base.metadata.create_all(one_at_a_time)
    assert [record_instance(one_at_a_time, r) for b in batches for r in b] == [True, True, True, False, True,
                                                                               True, False, True]
    assert table(sqlite_engine) == table(one_at_a_time)
    assert table(sqlite_engine)[0][0][1] == InstanceStatus.STORED and table(sqlite_engine)[1][0][1] == 3
