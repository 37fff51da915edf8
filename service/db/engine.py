"""Database engines: SQLite (embedded default) and PostgreSQL.

SQLite: WAL journal, ``busy_timeout``, foreign keys on, and transactions that write start with
``BEGIN IMMEDIATE`` (take the write lock up front, so two processes claiming the same job serialise on the
lock instead of failing a deferred read->write upgrade). PostgreSQL: claims use ``SELECT ... FOR UPDATE
SKIP LOCKED`` (see queue/jobs.py and export/outbox.py).

Use ``write_session(engine)`` for every transaction that changes rows and ``read_session(engine)`` for reads.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000
"""How long a SQLite writer waits for the lock before 'database is locked' (30 s: claims are short)."""

_BEGIN_OPTION = "bmd_sqlite_begin"


def is_sqlite(engine: sqlalchemy.Engine) -> bool:
    return engine.dialect.name == "sqlite"


def make_engine(database_url: str) -> sqlalchemy.Engine:
    """An engine for ``database_url``; for a SQLite file, its parent directory is created."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        return _make_sqlite_engine(url)
    if url.get_backend_name() == "postgresql":
        if url.drivername == "postgresql":  # SQLAlchemy 2.1 defaults to psycopg 3; the project ships psycopg2
            url = url.set(drivername="postgresql+psycopg2")
        return sqlalchemy.create_engine(url, pool_pre_ping=True)
    raise ValueError(f"database_url: unsupported backend {url.get_backend_name()!r} (sqlite or postgresql)")


def _make_sqlite_engine(url: sqlalchemy.URL) -> sqlalchemy.Engine:
    database = url.database or ""
    in_memory = database in ("", ":memory:") or database.startswith("file::memory:")
    if not in_memory:
        Path(database).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
    engine = sqlalchemy.create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000.0})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below emit BEGIN itself (pysqlite's own BEGIN is deferred only).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            if not in_memory:
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable at checkpoint, no corruption
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sqlalchemy.Connection) -> None:
        mode = conn.get_execution_options().get(_BEGIN_OPTION, "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


@contextmanager
def write_session(engine: sqlalchemy.Engine) -> Iterator[Session]:
    """A session in one transaction that commits on success and rolls back on error.

    On SQLite the transaction starts with BEGIN IMMEDIATE (write lock taken before the first read).
    """
    with engine.connect() as conn:
        if is_sqlite(engine):
            conn = conn.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})
        with Session(bind=conn, expire_on_commit=False) as session, conn.begin():
            yield session
            session.flush()


@contextmanager
def read_session(engine: sqlalchemy.Engine) -> Iterator[Session]:
    """A session for reads (deferred transaction; never blocks writers under WAL)."""
    with Session(bind=engine, expire_on_commit=False) as session:
        yield session
