"""What every ``bmd-node`` command shares: the global options, the configuration and engine of a run, the schema
check of the node roles and table printing."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy

from service.config import Config, load_config
from service.db.engine import make_engine
from service.db.migrate import SchemaError, ensure_schema
from service.logging import LOG_LEVELS

Handler = Callable[[argparse.Namespace], int]


def add_common_options(parser: argparse.ArgumentParser, *, default: Any) -> None:
    """``--config`` and ``--log-level``, accepted before the command (root parser, ``default=None``) and after it
    (every subcommand, ``default=argparse.SUPPRESS``: given there it wins, else the root's value stays)."""
    group = parser.add_argument_group("node options")
    group.add_argument("--config", metavar="PATH", default=default,
                       help="TOML configuration (default: env BMD_NODE_CONFIG, else embedded defaults)")
    group.add_argument("--log-level", default=default, choices=LOG_LEVELS)


class CommandParser(argparse.ArgumentParser):
    """The parser of every subcommand: it takes the global options too. Subparsers of a subcommand are made with
    the parser's own class, so commands registered by other packages get them as well."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        add_common_options(self, default=argparse.SUPPRESS)


def config_of(args: argparse.Namespace) -> Config:
    """The run's configuration: loaded once (``main`` loads it before the command runs)."""
    config: Config | None = getattr(args, "_config_cache", None)
    if config is None:
        config = load_config(args.config)
        args._config_cache = config
    return config


def engine_of(config: Config) -> sqlalchemy.Engine:
    return make_engine(config.node.database_url)


def require_schema(config: Config) -> None:
    """A node role (scp, scheduler, worker, exporter) starts only on a database at the head revision."""
    try:
        ensure_schema(config.node.database_url)
    except SchemaError as exc:
        raise SystemExit(f"bmd-node: {exc}") from exc


def print_rows(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    text = [[str(h) for h in header]] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in text) for i in range(len(header))]
    for row in text:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def timestamp(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else ""

