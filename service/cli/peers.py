"""``bmd-node echo PEER`` and ``bmd-node send PATH --to PEER``: talk to a configured DICOM peer."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from service.cli.common import CommandParser, config_of
from service.config import Config, PeerSettings
from service.export.cstore_scu import STATUS_SUCCESS, echo, send_files
from service.series.volume_loader import dicom_files

STORED_WITH_WARNING = range(0xB000, 0xC000)
"""C-STORE warning statuses Bxxx (PS3.4 B.2.3): the object was stored; counted as accepted."""


def _peer(config: Config, name: str) -> PeerSettings | None:
    """The configured peer ``name``, or None after saying why not."""
    try:
        return config.peer(name)
    except KeyError as exc:
        print(str(exc).strip("'\""), file=sys.stderr)
        return None


def cmd_echo(args: argparse.Namespace) -> int:
    config = config_of(args)
    peer = _peer(config, args.peer)
    if peer is None:
        return 2
    ok = echo(peer, config)
    print(f"echo {peer.name} ({peer.ae_title}@{peer.host}:{peer.port}): {'success' if ok else 'FAILED'}")
    return 0 if ok else 1


def cmd_send(args: argparse.Namespace) -> int:
    config = config_of(args)
    peer = _peer(config, args.to)
    if peer is None:
        return 2
    source = Path(args.path)
    paths = dicom_files(source) if source.is_dir() else [source]
    if not paths:
        print(f"no DICOM files under {source}", file=sys.stderr)
        return 2
    statuses = send_files(paths, peer, config)
    failed = [s for s in statuses if s != STATUS_SUCCESS and s not in STORED_WITH_WARNING]
    print(f"sent {len(paths)} file(s) to {peer.name}: {len(paths) - len(failed)} accepted, {len(failed)} failed")
    return 0 if not failed else 1


def register(sub: argparse._SubParsersAction[CommandParser]) -> None:
    p = sub.add_parser("echo", help="C-ECHO a configured peer")
    p.add_argument("peer")
    p.set_defaults(func=cmd_echo)
    p = sub.add_parser("send", help="C-STORE a DICOM file or folder to a configured peer")
    p.add_argument("path")
    p.add_argument("--to", required=True, metavar="PEER")
    p.set_defaults(func=cmd_send)
