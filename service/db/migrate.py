"""Run the Alembic migrations programmatically (``bmd-node db upgrade``, tests, demo) and check a database's schema
revision before the node uses it (``ensure_schema``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import sqlalchemy
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.engine import make_url

from alembic import command
from service.db.engine import make_engine

REPO_ROOT = Path(__file__).resolve().parents[2]
ALEMBIC_DIR = REPO_ROOT / "alembic"
VERSION_TABLE = "alembic_version"
UPGRADE_HINT = "run `bmd-node db upgrade` (back the database up first)"


class SchemaError(RuntimeError):
    """The database's schema is not the one this version of bmd-node needs; the message says what to do."""


@dataclass(frozen=True)
class SchemaState:
    """What a database holds: its Alembic revision (None: no ``alembic_version`` row) and its other tables."""

    revision: str | None
    tables: frozenset[str]
    heads: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.heads:
            raise ValueError("heads: the migrations have no head revision")
        if VERSION_TABLE in self.tables:
            raise ValueError(f"tables: must not include {VERSION_TABLE!r} (it is read as the revision)")

    @property
    def empty(self) -> bool:
        """No revision and no tables: a new database (a leftover empty ``alembic_version`` counts as empty)."""
        return self.revision is None and not self.tables

    @property
    def at_head(self) -> bool:
        return self.revision in self.heads


def alembic_config(database_url: str) -> AlembicConfig:
    if not (ALEMBIC_DIR / "env.py").is_file():
        raise FileNotFoundError(f"alembic migrations not found at {ALEMBIC_DIR} (install with `pip install -e .`)")
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(ALEMBIC_DIR))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    command.downgrade(alembic_config(database_url), revision)


def heads(database_url: str = "sqlite://") -> list[str]:
    return list(ScriptDirectory.from_config(alembic_config(database_url)).get_heads())


def current_revision(database_url: str) -> str | None:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def schema_state(database_url: str) -> SchemaState:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            revision = MigrationContext.configure(conn).get_current_revision()
            tables = frozenset(sqlalchemy.inspect(conn).get_table_names()) - {VERSION_TABLE}
    finally:
        engine.dispose()
    return SchemaState(revision=revision, tables=tables, heads=tuple(heads(database_url)))


def is_sqlite_url(database_url: str) -> bool:
    return make_url(database_url).get_backend_name() == "sqlite"


def ensure_schema(database_url: str, *, create_empty_sqlite: bool = False) -> bool:
    """Check that the database is at the head revision before the node uses it; never upgrades a database that
    holds a schema. With ``create_empty_sqlite`` (``bmd-node serve``) an empty SQLite database gets the schema
    (upgrade to head). Returns True when it created the schema; raises SchemaError with what to do otherwise."""
    state = schema_state(database_url)
    if state.at_head:
        return False
    if state.empty and create_empty_sqlite and is_sqlite_url(database_url):
        upgrade(database_url)
        return True
    raise SchemaError(_refusal(state, database_url))


def _refusal(state: SchemaState, database_url: str) -> str:
    shown = make_url(database_url).render_as_string(hide_password=True)
    head = ", ".join(state.heads)
    if state.empty:
        return f"database {shown} has no schema yet (needs revision {head}): {UPGRADE_HINT}"
    if state.revision is None:
        listed = ", ".join(sorted(state.tables)[:5]) + (", ..." if len(state.tables) > 5 else "")
        return (f"database {shown} has tables ({listed}) but no schema revision ({VERSION_TABLE}): it was not "
                "made by `bmd-node db upgrade` and is left untouched; point database_url at a bmd-node database "
                "or at a new, empty one")
    if not _known_revision(state.revision, database_url):
        return (f"database {shown} is at schema revision {state.revision}, which this version of bmd-node does not "
                f"know (it needs {head}; was the database made by a newer bmd-node?)")
    return (f"database {shown} is at schema revision {state.revision}, this version of bmd-node needs {head}: "
            f"{UPGRADE_HINT}")


def _known_revision(revision: str, database_url: str) -> bool:
    try:
        return ScriptDirectory.from_config(alembic_config(database_url)).get_revision(revision) is not None
    except CommandError:
        return False
