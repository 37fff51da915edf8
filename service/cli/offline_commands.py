"""Commands of the offline tools (``train``, ``evaluate``, ``cohort``, ``phantom``, ``models``), registered from
``service.offline.*`` only when their command runs: the node's own commands never load the offline tools.
``bmd-node --help`` lists them all from the table below."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from service.cli.common import CommandParser


@dataclass(frozen=True)
class OfflineCommand:
    """A root command of the offline tools. ``registrations`` are (module, function) pairs. A parent command is
    made here (with subparsers) and each function adds its subcommands to them; otherwise the (one) function adds
    the root command itself, and a placeholder with ``help`` stands in for it while it is not loaded."""

    command: str
    help: str
    registrations: tuple[tuple[str, str], ...]
    parent: bool

    def __post_init__(self) -> None:
        if not self.command or self.command.startswith("-"):
            raise ValueError(f"command: must be a command name, got {self.command!r}")
        if not self.registrations:
            raise ValueError(f"registrations: {self.command} needs at least one (module, function)")
        if not self.parent and len(self.registrations) != 1:
            raise ValueError(f"registrations: the root command {self.command} is added by exactly one function")


_EVALUATION = "service.offline.evaluation.commands"
_COHORT = "service.offline.cohort.commands"
_PHANTOM = "service.offline.phantom.commands"

OFFLINE_COMMANDS: tuple[OfflineCommand, ...] = (
    OfflineCommand("train", "train commands", ((_EVALUATION, "register_train"), (_COHORT, "register_train")),
                   parent=True),
    OfflineCommand("evaluate", "evaluate commands",
                   ((_EVALUATION, "register_evaluate"), (_COHORT, "register_evaluate")), parent=True),
    OfflineCommand("cohort", "cohort commands", ((_COHORT, "register_cohort"),), parent=True),
    OfflineCommand("phantom", "write a synthetic CT phantom series with known anatomy and bone density",
                   ((_PHANTOM, "register"),), parent=False),
    OfflineCommand("models", "site model registry: list, activate, deactivate", ((_COHORT, "register"),),
                   parent=False),
)


def register(sub: argparse._SubParsersAction[CommandParser], load: str | None) -> None:
    """Add every offline command to the root ``sub``; only the one named ``load`` is loaded and runnable."""
    for entry in OFFLINE_COMMANDS:
        loaded = entry.command == load
        if entry.parent:
            parent = sub.add_parser(entry.command, help=entry.help).add_subparsers(
                dest=f"{entry.command}_command", metavar="WHAT", required=True)
            if loaded:
                for module_name, function in entry.registrations:
                    _call(module_name, function, parent)
        elif not loaded or not _call(*entry.registrations[0], sub):
            sub.add_parser(entry.command, help=entry.help)  # placeholder: listed in --help, loaded when it runs


def _call(module_name: str, function: str, subparsers: Any) -> bool:
    """``module_name.function(subparsers)``; False (after saying why) when the module cannot be loaded: a broken
    offline tool must not take the node's own commands down."""
    try:
        module = importlib.import_module(module_name)  # offline tools are loaded only when their command runs
    except Exception as exc:
        print(f"bmd-node: commands of {module_name} unavailable: {type(exc).__name__}: {exc}", file=sys.stderr)
        return False
    getattr(module, function)(subparsers)
    return True


def requested_command(argv: Sequence[str], options_with_value: Sequence[str]) -> str | None:
    """The command named in ``argv``: the first word that is not a root option (``options_with_value`` take the
    next word, also when abbreviated as argparse allows) nor such an option's value."""
    words = iter(argv)
    for word in words:
        if word == "--":
            return next(words, None)
        if not word.startswith("-"):
            return word
        if "=" not in word and len(word) > 2 and any(o.startswith(word) for o in options_with_value):
            next(words, None)
    return None
