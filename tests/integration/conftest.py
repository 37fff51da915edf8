"""Integration fixtures: a real PostgreSQL server (initdb + pg_ctl in a temp dir) for the whole session.

As root, initdb refuses to run, so the server runs as the ``postgres`` user (runuser) in a temp dir chowned to
it; the unix socket lives in that dir and the server listens on a free loopback TCP port. Missing binaries fail
the tests that need the server with a message saying what to install (``make install`` does).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import pytest

from tests.support.net import free_port

PG_BIN_ENV = "BMD_NODE_PG_BIN"


def _find_pg_bin() -> Path | None:
    candidates = []
    if os.environ.get(PG_BIN_ENV):
        candidates.append(Path(os.environ[PG_BIN_ENV]))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    which = shutil.which("initdb")
    if which:
        candidates.append(Path(which).parent)
    for candidate in candidates:
        if (candidate / "initdb").is_file() and (candidate / "pg_ctl").is_file():
            return candidate
    return None


@dataclass
class PostgresServer:
    port: int
    base_dir: Path
    _counter: itertools.count  # type: ignore[type-arg]

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        name = f"bmd_test_{os.getpid()}_{next(self._counter)}"
        conn = psycopg2.connect(self.url())
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        conn = psycopg2.connect(self.url())
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            conn.close()


def _as_postgres(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    if os.geteuid() == 0:
        args = ["runuser", "-u", "postgres", "--", *args]
    return subprocess.run(args, check=False, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    pg_bin = _find_pg_bin()
    if pg_bin is None:
        pytest.fail("PostgreSQL server binaries (initdb, pg_ctl) not found: install the Debian package "
                    f"'postgresql' (make install) or set {PG_BIN_ENV}")
    if os.geteuid() == 0:
        try:
            pg_user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail("running as root but there is no 'postgres' user to run initdb as")
    base = Path(tempfile.mkdtemp(prefix="bmd-pg-"))
    if os.geteuid() == 0:
        os.chown(base, pg_user.pw_uid, pg_user.pw_gid)
    data = base / "data"
    port = free_port()
    init = _as_postgres([str(pg_bin / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                         "--no-sync", "-E", "UTF8"])
    if init.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"initdb failed ({init.returncode}): {init.stderr[-2000:]}")
    options = (f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
               "-c full_page_writes=off -c max_connections=60")
    start = _as_postgres([str(pg_bin / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(base / "log"),
                          "-w", "-t", "60", "start"])
    if start.returncode != 0:
        log_text = (base / "log").read_text(errors="replace") if (base / "log").exists() else ""
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"pg_ctl start failed: {start.stderr[-1000:]} {log_text[-2000:]}")
    try:
        yield PostgresServer(port, base, itertools.count())
    finally:
        _as_postgres([str(pg_bin / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database on the session's PostgreSQL server."""
    url = postgres_server.create_database()
    try:
        yield url
    finally:
        with contextlib.suppress(Exception):
            postgres_server.drop_database(url)
