"""What the web modules share: the application's context, rendering a page, safe redirect targets."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy
from prometheus_client import CollectorRegistry
from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from service.config import Config
from service.web.auth import LoginLimiter, csrf_token
from service.web.users import UserView


@dataclass
class WebContext:
    config: Config
    engine: sqlalchemy.Engine
    components: Callable[[], dict[str, bool]] | None
    registry: CollectorRegistry
    templates: Jinja2Templates
    started_monotonic: float = field(default_factory=time.monotonic)
    limiter: LoginLimiter = field(default_factory=LoginLimiter)

    @property
    def peers_by_ae(self) -> dict[str, str]:
        return {p.ae_title: p.name for p in self.config.peers}


def context_of(request: Request) -> WebContext:
    ctx: WebContext = request.app.state.web
    return ctx


def safe_next(target: str | None) -> str:
    """A redirect target inside this site only (no scheme, no host, no '//')."""
    if (not target or not target.startswith("/") or target.startswith("//") or "\\" in target
            or any(ord(c) < 32 or ord(c) == 127 for c in target)):  # browsers drop tabs: "/\t/x" -> "//x"
        return "/"
    return target


def render(request: Request, template: str, user: UserView | None, values: dict[str, Any], *,
           status_code: int = 200) -> Response:
    ctx = context_of(request)
    flash = request.session.pop("flash", None) if user is not None else None
    return ctx.templates.TemplateResponse(request, template, {
        "user": user, "csrf_token": csrf_token(request), "flash": flash,
        "show_patient_names": ctx.config.dashboard.show_patient_names, **values}, status_code=status_code)
