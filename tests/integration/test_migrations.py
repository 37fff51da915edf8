"""Alembic migrations: a single head; upgrade, downgrade, upgrade again with data; the ORM matches the schema.
On SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import pytest
import sqlalchemy
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from service.db.engine import make_engine
from service.db.migrate import (
    SchemaError,
    alembic_config,
    current_revision,
    downgrade,
    ensure_schema,
    heads,
    upgrade,
)
from service.db.queries import count_by_status, record_instance
from service.db.tables import Base
from service.queue import jobs
from tests.node_support import _success_for_tests, record

pytestmark = pytest.mark.integration


def _revisions() -> list[str]:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return [r.revision for r in reversed(list(script.walk_revisions()))]


def _use(url: str, tag: str) -> int:
    engine = make_engine(url)
    try:
        uid = f"1.2.826.0.1.3680043.8.498.5.{tag}"
        assert record_instance(engine, record(uid, uid + ".1"))
        job_id = jobs.enqueue(engine, uid, max_attempts=2)
        assert job_id is not None
        assert jobs.claim_next(engine, worker_id="w", lease_seconds=60) is not None
        assert jobs.finish(engine, job_id, worker_id="w", success=_success_for_tests(job_id, 2, tag=tag),
                           peer_names=["pacs"])
        return job_id
    finally:
        engine.dispose()


def _schema_diff(url: str) -> list[object]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def test_single_head_and_linear_history() -> None:
    assert heads() == ["0007"]
    assert _revisions() == ["0001", "0002", "0003", "0004", "0005", "0006", "0007"]


def _round_trip(url: str) -> None:
    upgrade(url)
    assert current_revision(url) == "0007"
    assert _schema_diff(url) == []
    _use(url, "a")
    # down one revision at a time, each leaves a working schema below it
    for expected in ("0006", "0005", "0004", "0003", "0002", "0001"):
        downgrade(url, "-1")
        assert current_revision(url) == expected
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sqlalchemy.text("SELECT count(*) FROM instances")).scalar() == 1
    finally:
        engine.dispose()
    downgrade(url, "base")
    assert current_revision(url) is None
    engine = make_engine(url)
    try:
        assert set(sqlalchemy.inspect(engine).get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()
    upgrade(url)
    assert _schema_diff(url) == []
    _use(url, "b")
    _use(url, "c")
    engine = make_engine(url)
    try:
        counts_after = count_by_status(engine)
        assert counts_after["jobs"] == {"succeeded": 2}
        assert counts_after["exports"] == {"pending": 4}
    finally:
        engine.dispose()


def test_round_trip_sqlite(sqlite_url: str) -> None:
    _round_trip(sqlite_url)


def test_round_trip_postgresql(postgres_url: str) -> None:
    _round_trip(postgres_url)


def _schema_check(url: str, *, created_when_empty: bool) -> None:
    """serve's startup schema step: an empty SQLite database gets the schema, an empty PostgreSQL one does not;
    a database at an older revision is never upgraded silently."""
    if created_when_empty:
        assert ensure_schema(url, create_empty_sqlite=True)
    else:
        with pytest.raises(SchemaError, match=r"no schema yet.*run `bmd-node db upgrade`"):
            ensure_schema(url, create_empty_sqlite=True)
        assert current_revision(url) is None
        upgrade(url)
    assert current_revision(url) == "0007"
    assert not ensure_schema(url, create_empty_sqlite=True)  # at head: nothing to do
    downgrade(url, "0002")
    for create in (True, False):
        with pytest.raises(SchemaError, match=r"revision 0002, this version of bmd-node needs 0007.*db upgrade"):
            ensure_schema(url, create_empty_sqlite=create)
    assert current_revision(url) == "0002"


def test_schema_check_sqlite(sqlite_url: str) -> None:
    _schema_check(sqlite_url, created_when_empty=True)


def test_schema_check_postgresql(postgres_url: str) -> None:
    _schema_check(postgres_url, created_when_empty=False)


def test_upgrade_keeps_data_from_earlier_revision(sqlite_url: str) -> None:
    upgrade(sqlite_url, "0001")
    engine = make_engine(sqlite_url)
    try:
        assert record_instance(engine, record("1.2.3.4", "1.2.3.4.1"))
    finally:
        engine.dispose()
    upgrade(sqlite_url)
    engine = make_engine(sqlite_url)
    try:
        assert jobs.enqueue(engine, "1.2.3.4", max_attempts=1) is not None
    finally:
        engine.dispose()
