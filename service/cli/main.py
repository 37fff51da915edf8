"""``bmd-node`` command line: the parser, assembled from the command modules of this package, and ``main``.

Node roles (node.py): ``serve`` (everything in one process tree), or separately ``scp``, ``scheduler``, ``worker``,
``exporter``. Operations: ``db upgrade|downgrade|current`` (db.py), ``jobs list|show|retry``, ``series list``,
``exports list|retry`` (jobs.py), ``users add|passwd|role|remove|list`` (users.py: the dashboard's accounts),
``echo PEER``, ``send DIR --to PEER`` (peers.py), ``analyze INPUT --out DIR`` (analyze.py), ``calibrate phantom DIR``
(calibrate.py), ``config show``. The offline tools' commands (``train``,
``evaluate``, ``cohort``, ``phantom``, ``models``) come from ``service.offline.*`` and are loaded only when they
run (offline_commands.py). ``--config`` and ``--log-level`` go before or after the command.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence

from service import __version__
from service.cli import analyze, db, jobs, node, offline_commands, peers, users
from service.cli.calibrate import register_calibrate
from service.cli.common import CommandParser, add_common_options, config_of
from service.config import load_config
from service.config_loader import ConfigError
from service.logging import setup_logging

log = logging.getLogger(__name__)

ROOT_OPTIONS_WITH_VALUE = ("--config", "--log-level")
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def cmd_config_show(args: argparse.Namespace) -> int:
    config = config_of(args)
    print(json.dumps({"source": config.source, **config.redacted()}, indent=2))
    return 0


def build_parser(load_offline: str | None = None) -> argparse.ArgumentParser:
    """The whole command line. Every command is listed; of the offline tools only the command ``load_offline``
    is loaded (``main`` passes the command it was asked to run)."""
    parser = argparse.ArgumentParser(prog="bmd-node", description="DICOM node for opportunistic osteoporosis "
                                     "screening on routine CT")
    add_common_options(parser, default=None)
    parser.add_argument("--version", action="version", version=f"bmd-node {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=CommandParser)
    for module in (node, db, jobs, peers, analyze, users):
        module.register(sub)
    config = sub.add_parser("config", help="configuration").add_subparsers(dest="config_command", metavar="ACTION",
                                                                           required=True)
    config.add_parser("show", help="the effective configuration, secrets redacted").set_defaults(func=cmd_config_show)
    register_calibrate(sub.add_parser("calibrate", help="calibrate commands").add_subparsers(
        dest="calibrate_command", metavar="WHAT", required=True))
    offline_commands.register(sub, load=load_offline)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(offline_commands.requested_command(argv, ROOT_OPTIONS_WITH_VALUE))
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"bmd-node: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    args._config_cache = config
    settings = config.logging
    if args.log_level:
        settings = dataclasses.replace(settings, level=args.log_level)
    setup_logging(settings)
    if args.func in node.ROLE_HANDLERS:
        log.info("configuration from %s: %s", config.source, json.dumps(config.redacted()))
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
