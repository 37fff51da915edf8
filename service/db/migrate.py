"""Run the Alembic migrations programmatically (``bmd-node db upgrade``, tests, demo)."""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory

from alembic import command

REPO_ROOT = Path(__file__).resolve().parents[2]
ALEMBIC_DIR = REPO_ROOT / "alembic"


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
    from alembic.runtime.migration import MigrationContext

    from service.db.engine import make_engine

    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
