"""Fixtures shared by every test package: a migrated SQLite database per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy

from service.db.engine import make_engine
from service.db.migrate import upgrade


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'db' / 'bmd-node.db'}"


@pytest.fixture
def sqlite_engine(sqlite_url: str) -> Iterator[sqlalchemy.Engine]:
    """A SQLite database with every migration applied."""
    upgrade(sqlite_url)
    engine = make_engine(sqlite_url)
    try:
        yield engine
    finally:
        engine.dispose()
