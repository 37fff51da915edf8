"""``bmd-node db upgrade|downgrade|current``: the database schema (Alembic migrations)."""

from __future__ import annotations

import argparse

from service.cli.common import CommandParser, config_of
from service.config import redact_url
from service.db.migrate import current_revision, downgrade, heads, upgrade


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    config = config_of(args)
    upgrade(config.node.database_url, args.revision)
    print(f"database {redact_url(config.node.database_url)} at revision "
          f"{current_revision(config.node.database_url)}")
    return 0


def cmd_db_downgrade(args: argparse.Namespace) -> int:
    config = config_of(args)
    downgrade(config.node.database_url, args.revision)
    print(f"database at revision {current_revision(config.node.database_url) or 'base'}")
    return 0


def cmd_db_current(args: argparse.Namespace) -> int:
    config = config_of(args)
    print(f"current: {current_revision(config.node.database_url) or 'none'}  head: {', '.join(heads())}")
    return 0


def register(sub: argparse._SubParsersAction[CommandParser]) -> None:
    db = sub.add_parser("db", help="database schema").add_subparsers(dest="db_command", metavar="ACTION",
                                                                      required=True)
    p = db.add_parser("upgrade", help="apply the migrations")
    p.add_argument("--revision", default="head")
    p.set_defaults(func=cmd_db_upgrade)
    p = db.add_parser("downgrade", help="revert migrations down to REVISION ('base' = empty)")
    p.add_argument("revision")
    p.set_defaults(func=cmd_db_downgrade)
    db.add_parser("current", help="show the schema revision").set_defaults(func=cmd_db_current)
