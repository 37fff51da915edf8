"""``bmd-node users add|passwd|role|remove|list``: the local accounts of the web dashboard.

The password is asked twice on the terminal (never echoed), or read from one line of stdin with
``--password-stdin`` (scripts: ``printf '%s\\n' "$PW" | bmd-node users add NAME --role admin --password-stdin``).
It is never an argument: arguments are visible to every user of the server in the process list.
"""

from __future__ import annotations

import argparse
import getpass
import sys

from service.cli.common import CommandParser, config_of, engine_of, print_rows, require_schema, timestamp
from service.web.users import Role, UserError, add_user, list_users, remove_user, set_password, set_role


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Password again: ") != first:
        raise UserError("the two passwords differ")
    return first


def _run(args: argparse.Namespace) -> int:
    config = config_of(args)
    require_schema(config)
    engine = engine_of(config)
    try:
        if args.users_command == "add":
            user = add_user(engine, args.name, args.role, _password(args))
            print(f"user {user.username} added ({user.role})")
        elif args.users_command == "passwd":
            set_password(engine, args.name, _password(args))
            print(f"password of {args.name} changed; its sessions are logged out")
        elif args.users_command == "role":
            set_role(engine, args.name, args.role)
            print(f"{args.name} is now {args.role}")
        elif args.users_command == "remove":
            remove_user(engine, args.name)
            print(f"user {args.name} removed")
        else:
            print_rows(("user", "role", "created", "password changed", "last login"),
                       [(u.username, u.role, timestamp(u.created_at), timestamp(u.password_changed_at),
                         timestamp(u.last_login_at)) for u in list_users(engine)])
    except UserError as exc:
        print(f"bmd-node users: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    return 0


def register(sub: argparse._SubParsersAction[CommandParser]) -> None:
    users = sub.add_parser("users", help="dashboard users (local accounts, roles viewer and admin)").add_subparsers(
        dest="users_command", metavar="ACTION", required=True)
    roles = [r.value for r in Role]
    p = users.add_parser("add", help="a new user (admin may retry and re-run; viewer only reads)")
    p.add_argument("name")
    p.add_argument("--role", choices=roles, required=True)
    p.add_argument("--password-stdin", action="store_true", help="read the password from one line of stdin")
    p.set_defaults(func=_run)
    p = users.add_parser("passwd", help="set a new password (logs the user's sessions out)")
    p.add_argument("name")
    p.add_argument("--password-stdin", action="store_true")
    p.set_defaults(func=_run)
    p = users.add_parser("role", help="change a user's role")
    p.add_argument("name")
    p.add_argument("role", choices=roles)
    p.set_defaults(func=_run)
    p = users.add_parser("remove", help="remove a user (its sessions stop working)")
    p.add_argument("name")
    p.set_defaults(func=_run)
    users.add_parser("list", help="users, roles and last logins").set_defaults(func=_run)
