"""Local users of the web dashboard: scrypt password hashes (stdlib ``hashlib.scrypt``), two roles.

``bmd-node users add|passwd|remove|list`` (service/cli/users.py) manages them; the dashboard only reads them and
records the last login. Roles: ``viewer`` reads every page; ``admin`` may also retry or re-run jobs and exports.
This module imports nothing of the web stack, so the command line can use it without Starlette.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import sqlalchemy
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db.engine import read_session, write_session
from service.db.tables import User, utcnow

SCRYPT_N = 2**15
"""CPU/memory cost: 32 MiB and ~0.1 s per hash (OWASP's minimum for scrypt is N=2^17 with r=8 at p=1 *or*
an equivalent; 2^15 keeps a login under a second on a small node while a leaked hash still costs an attacker
~0.1 s per guess on one core)."""
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
MIN_PASSWORD_LENGTH = 10
_USERNAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


class Role(StrEnum):
    VIEWER = "viewer"
    ADMIN = "admin"


class UserError(ValueError):
    """A user command that cannot be done (unknown or duplicate user, weak password); the message says why."""


@dataclass(frozen=True)
class UserView:
    user_id: int
    username: str
    role: Role
    created_at: datetime
    password_changed_at: datetime
    last_login_at: datetime | None

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=HASH_BYTES,
                          maxmem=256 * n * r)


def hash_password(password: str) -> str:
    """``scrypt$N$r$p$salt$hash`` (hex); parameters are stored so that they can be raised later."""
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        computed = _scrypt(password, bytes.fromhex(salt), int(n), int(r), int(p))
    except (ValueError, OverflowError):
        return False
    return hmac.compare_digest(computed, bytes.fromhex(digest))


_DUMMY_HASH = hash_password(secrets.token_hex(8))
"""Checked against when the user does not exist, so that a wrong name costs as long as a wrong password."""


def check_username(username: str) -> str:
    if not _USERNAME_RE.match(username):
        raise UserError(f"username: 1-64 letters, digits or '_', '.', '@', '-', got {username!r}")
    return username


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(f"password: at least {MIN_PASSWORD_LENGTH} characters, got {len(password)}")
    return password


def _view(user: User) -> UserView:
    return UserView(user.id, user.username, Role(user.role), user.created_at, user.password_changed_at,
                    user.last_login_at)


def add_user(engine: sqlalchemy.Engine, username: str, role: Role | str, password: str) -> UserView:
    check_username(username)
    check_password(password)
    role = Role(role)
    now = utcnow()
    with write_session(engine) as session:
        if session.scalar(select(User.id).where(User.username == username)) is not None:
            raise UserError(f"user {username!r} exists already (use `bmd-node users passwd` or `remove`)")
        user = User(username=username, role=role.value, password_hash=hash_password(password), created_at=now,
                    password_changed_at=now)
        session.add(user)
        session.flush()
        return _view(user)


def set_password(engine: sqlalchemy.Engine, username: str, password: str) -> None:
    """New password; every session of the user issued before now stops working."""
    check_password(password)
    with write_session(engine) as session:
        user = _existing(session, username)
        user.password_hash = hash_password(password)
        user.password_changed_at = utcnow()


def set_role(engine: sqlalchemy.Engine, username: str, role: Role | str) -> None:
    with write_session(engine) as session:
        _existing(session, username).role = Role(role).value


def remove_user(engine: sqlalchemy.Engine, username: str) -> None:
    with write_session(engine) as session:
        session.delete(_existing(session, username))


def _existing(session: Session, username: str) -> User:
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise UserError(f"no user {username!r}")
    return user


def list_users(engine: sqlalchemy.Engine) -> list[UserView]:
    with read_session(engine) as session:
        return [_view(u) for u in session.scalars(select(User).order_by(User.username))]


def get_user(engine: sqlalchemy.Engine, user_id: int) -> UserView | None:
    with read_session(engine) as session:
        user = session.get(User, user_id)
        return None if user is None else _view(user)


def authenticate(engine: sqlalchemy.Engine, username: str, password: str) -> UserView | None:
    """The user when the password matches (and records the login), else None; as slow for unknown names."""
    with read_session(engine) as session:
        user = session.scalar(select(User).where(User.username == username))
        stored = user.password_hash if user is not None else _DUMMY_HASH
    if not verify_password(password, stored) or user is None:
        return None
    with write_session(engine) as session:
        row = session.get(User, user.id)
        if row is None:
            return None
        row.last_login_at = utcnow()
        session.flush()
        return _view(row)
