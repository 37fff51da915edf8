"""Sessions, CSRF tokens and roles of the dashboard.

* The session is Starlette's signed cookie (itsdangerous, HMAC-SHA1 with a timestamp): HttpOnly, SameSite=Strict,
  ``[dashboard] session_max_age_seconds``. It holds the user id, when it was issued and the CSRF token, nothing else.
  A session issued before the user's last password change, or of a removed user, is refused.
* Every POST carries ``csrf_token`` (a hidden field) equal to the session's token (compared in constant time).
* Roles: viewer reads, admin may also retry and re-run (``require_admin``).
* Failed logins are limited per address and per user name (``LoginLimiter``).
"""

from __future__ import annotations

import contextlib
import hmac
import os
import secrets
import threading
import time
from collections import deque
from pathlib import Path

import sqlalchemy
from starlette.exceptions import HTTPException
from starlette.requests import Request

from service.web.users import UserView, get_user

SESSION_COOKIE = "bmd_node_session"
CSRF_FIELD = "csrf_token"
SECRET_BYTES = 32


def load_or_create_secret(path: Path) -> str:
    """The key that signs the session cookies: read from ``path``, or made (mode 0600) when the file is missing.
    Made in a temporary file and linked into place, so that two processes starting at once agree on one key."""
    path = Path(path)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="ascii") as handle:
                handle.write(secrets.token_hex(SECRET_BYTES) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            with contextlib.suppress(FileExistsError):  # another process was first: its key wins
                os.link(tmp, path)
        finally:
            tmp.unlink()
    secret = path.read_text(encoding="ascii").strip()
    if len(secret) < 32:
        raise ValueError(f"dashboard.session_secret_file: {path} holds fewer than 32 characters")
    return secret


def csrf_token(request: Request) -> str:
    """The session's CSRF token (made on first use)."""
    token = request.session.get("csrf")
    if not isinstance(token, str) or not token:
        token = secrets.token_urlsafe(32)
        request.session["csrf"] = token
    return token


async def check_csrf(request: Request) -> dict[str, str]:
    """The POST's form fields, after checking its CSRF token (403 when missing or wrong)."""
    form = await request.form()
    sent = form.get(CSRF_FIELD)
    expected = request.session.get("csrf")
    if not isinstance(sent, str) or not isinstance(expected, str) or not hmac.compare_digest(sent, expected):
        raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again")
    return {k: v for k, v in form.items() if isinstance(v, str)}


def start_session(request: Request, user: UserView) -> None:
    request.session.clear()
    request.session.update({"uid": user.user_id, "iat": time.time(), "csrf": secrets.token_urlsafe(32)})


def current_user(request: Request, engine: sqlalchemy.Engine) -> UserView | None:
    uid, issued = request.session.get("uid"), request.session.get("iat")
    if not isinstance(uid, int) or not isinstance(issued, int | float):
        return None
    user = get_user(engine, uid)
    if user is None or issued < user.password_changed_at.timestamp():
        request.session.clear()
        return None
    return user


def require_admin(user: UserView) -> None:
    if not user.is_admin:
        raise HTTPException(403, f"user {user.username!r} is a viewer: retry and re-run need the admin role")


class LoginLimiter:
    """At most ``max_failures`` failed logins per address and per user name within ``window_seconds``."""

    def __init__(self, max_failures: int = 5, window_seconds: float = 300.0) -> None:
        self.max_failures = max_failures
        self.window_seconds = window_seconds
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failures.setdefault(key, deque())
        while times and now - times[0] > self.window_seconds:
            times.popleft()
        return times

    def blocked(self, *keys: str) -> bool:
        now = time.monotonic()
        with self._lock:
            return any(len(self._recent(k, now)) >= self.max_failures for k in keys)

    def failed(self, *keys: str) -> None:
        now = time.monotonic()
        with self._lock:
            for key in keys:
                self._recent(key, now).append(now)
            if len(self._failures) > 10000:  # bounded memory under a spray of names
                self._failures = {k: v for k, v in self._failures.items() if self._recent(k, now)}

    def succeeded(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
                self._failures.pop(key, None)
