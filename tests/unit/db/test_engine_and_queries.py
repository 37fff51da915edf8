from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
import sqlalchemy
from sqlalchemy import func, select

from service.db.engine import SQLITE_BUSY_TIMEOUT_MS, make_engine, read_session, write_session
from service.db.queries import InstanceRecord, count_by_status, list_series, record_instance, stored_instance_paths
from service.db.tables import Instance, Series
from tests.node_support import record


def test_sqlite_engine_creates_parent_dir_and_sets_pragmas(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a' / 'b' / 'node.db'}"
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == SQLITE_BUSY_TIMEOUT_MS
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert (tmp_path / "a" / "b" / "node.db").exists()
    finally:
        engine.dispose()


def test_unsupported_url_is_refused() -> None:
    with pytest.raises(ValueError, match="database_url"):
        make_engine("mysql://u@h/db")


def test_record_instance_new_duplicate_and_series(sqlite_engine: sqlalchemy.Engine) -> None:
    assert record_instance(sqlite_engine, record("1.2.3", "1.2.3.1", path="/s/1.dcm"))
    assert record_instance(sqlite_engine, record("1.2.3", "1.2.3.2", path="/s/2.dcm"))
    with read_session(sqlite_engine) as s:
        before = s.scalar(select(Series.last_received_at))
    assert not record_instance(sqlite_engine, record("1.2.3", "1.2.3.1", path="/s/1-again.dcm"))
    with read_session(sqlite_engine) as s:
        series = s.scalars(select(Series)).one()
        assert series.instance_count == 2 and series.status == "receiving"
        assert series.last_received_at >= before  # a duplicate still counts as activity
    assert stored_instance_paths(sqlite_engine, "1.2.3") == ["/s/1.dcm", "/s/2.dcm"]


def test_ignored_and_rejected_instances_are_recorded_not_counted(sqlite_engine: sqlalchemy.Engine) -> None:
    assert record_instance(sqlite_engine, record("9.9", "9.9.1", status="ignored", modality="MR"))
    assert record_instance(sqlite_engine, record("1.2.3", "1.2.3.7", status="rejected"))
    rows = {s.series_instance_uid: s for s in list_series(sqlite_engine)}
    assert rows["9.9"].status == "ignored" and rows["9.9"].instance_count == 0
    assert rows["1.2.3"].instance_count == 0
    # a good copy of the rejected instance later replaces it
    assert record_instance(sqlite_engine, record("1.2.3", "1.2.3.7", path="/s/7.dcm"))
    assert count_by_status(sqlite_engine)["instances"] == {"ignored": 1, "stored": 1}


def test_rejected_instance_without_series_uid_makes_no_series(sqlite_engine: sqlalchemy.Engine) -> None:
    assert record_instance(sqlite_engine, record("", "1.2.3.99", study_uid="", status="rejected"))
    assert list_series(sqlite_engine) == []
    with read_session(sqlite_engine) as s:
        instance = s.scalars(select(Instance)).one()
        assert instance.series_id is None and instance.status == "rejected"


def test_instance_record_validates() -> None:
    with pytest.raises(ValueError, match="status"):
        InstanceRecord("1", "2", "3", "4", "CT", "5", "/p", 1, "AE", "weird")
    with pytest.raises(ValueError, match="path"):
        InstanceRecord("1", "2", "3", "4", "CT", "5", None, 1, "AE", "stored")


def test_concurrent_threads_store_duplicates_once(sqlite_engine: sqlalchemy.Engine) -> None:
    results: list[bool] = []
    lock = threading.Lock()
    barrier = threading.Barrier(4)

    def store() -> None:
        barrier.wait()
        for i in range(15):
            new = record_instance(sqlite_engine, record("5.5", f"5.5.{i}"))
            with lock:
                results.append(new)

    threads = [threading.Thread(target=store) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results.count(True) == 15 and len(results) == 60
    with read_session(sqlite_engine) as s:
        assert s.scalar(select(func.count()).select_from(Instance)) == 15


def test_write_session_takes_the_write_lock_at_begin(sqlite_engine: sqlalchemy.Engine, sqlite_url: str) -> None:
    """BEGIN IMMEDIATE: the lock is held from the start of the transaction, before any statement."""
    other = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), timeout=0, isolation_level=None)
    try:
        with write_session(sqlite_engine) as session:
            session.execute(sqlalchemy.text("SELECT 1"))  # a read only: a deferred transaction would not lock
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
        other.execute("BEGIN IMMEDIATE")  # released at commit
        other.execute("ROLLBACK")
    finally:
        other.close()
