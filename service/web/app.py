"""The node's web application (Starlette): /health, /metrics, /metrics.json without login; the dashboard behind
login (pages: service/web/pages.py, actions: service/web/actions.py).

Every response carries security headers (no framing, a same-origin content security policy, no caching of pages).
Nothing here loads from the internet: the style sheet is served from service/web/static.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import quote

import sqlalchemy
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from service.config import Config
from service.web import actions, pages
from service.web.auth import (
    SESSION_COOKIE,
    check_csrf,
    current_user,
    load_or_create_secret,
    start_session,
)
from service.web.common import WebContext, context_of, render, safe_next
from service.web.health import disk_status, health_body, metrics_json
from service.web.metrics import NodeCollector, metrics_registry, render_metrics
from service.web.users import UserView, authenticate

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent
SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'none'; "
                               "form-action 'self'; frame-ancestors 'none'",
}


async def health(request: Request) -> Response:
    ctx = context_of(request)
    code, body = await run_in_threadpool(
        lambda: health_body(ctx.engine, ctx.config.node.ae_title, ctx.started_monotonic, ctx.components,
                            lambda: disk_status(ctx.config.node.storage_dir, ctx.config.storage.min_free_bytes),
                            max_queue_lag_seconds=ctx.config.node.max_queue_lag_seconds))
    return JSONResponse(body, status_code=code)


async def metrics(request: Request) -> Response:
    data = await run_in_threadpool(render_metrics, context_of(request).registry)
    return Response(data, media_type=CONTENT_TYPE_LATEST)


async def metrics_as_json(request: Request) -> Response:
    code, body = await run_in_threadpool(metrics_json, context_of(request).engine)
    return JSONResponse(body, status_code=code)


async def login_page(request: Request) -> Response:
    return render(request, "login.html", None, {"next": safe_next(request.query_params.get("next")), "error": None})


async def login(request: Request) -> Response:
    ctx = context_of(request)
    form = await check_csrf(request)
    username, password = form.get("username", ""), form.get("password", "")
    target = safe_next(form.get("next"))
    keys = (f"address:{request.client.host if request.client else '?'}", f"user:{username}")
    if ctx.limiter.blocked(*keys):
        return render(request, "login.html", None, {"next": target, "error": "Too many failed logins: wait a few "
                                                    "minutes."}, status_code=429)
    user = await run_in_threadpool(authenticate, ctx.engine, username, password)
    if user is None:
        ctx.limiter.failed(*keys)
        log.warning("dashboard: failed login for %r from %s", username[:64], keys[0].split(":", 1)[1])
        return render(request, "login.html", None, {"next": target, "error": "Wrong user name or password."},
                      status_code=401)
    ctx.limiter.succeeded(*keys)
    start_session(request, user)
    log.info("dashboard: %s (%s) logged in from %s", user.username, user.role, keys[0].split(":", 1)[1])
    return RedirectResponse(target, status_code=303)


async def logout(request: Request) -> Response:
    await check_csrf(request)
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


Endpoint = Callable[[Request, UserView], Awaitable[Response]]


def logged_in(endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    """Run ``endpoint`` with the session's user; without one: GET -> the login page, POST -> 401."""

    async def wrapper(request: Request) -> Response:
        user = await run_in_threadpool(current_user, request, context_of(request).engine)
        if user is None:
            if request.method != "GET":
                raise HTTPException(401, "log in first")
            return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)
        return await endpoint(request, user)

    return wrapper


class SecurityHeaders(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if not request.url.path.startswith("/static/"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response


def build_app(config: Config, engine: sqlalchemy.Engine,
              components: Callable[[], dict[str, bool]] | None = None) -> Starlette:
    templates = Jinja2Templates(directory=WEB_DIR / "templates")
    templates.env.filters.update(pages.FILTERS)
    collector = NodeCollector(engine, config.node.storage_dir, components, config.node.ae_title)
    ctx = WebContext(config, engine, components, metrics_registry(collector), templates)
    secret = load_or_create_secret(config.dashboard.session_secret_file)
    routes = [
        Route("/health", health), Route("/metrics", metrics), Route("/metrics.json", metrics_as_json),
        Route("/login", login_page, methods=["GET"]), Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        *[Route(path, logged_in(endpoint), methods=["GET"]) for path, endpoint in pages.ROUTES],
        *[Route(path, logged_in(endpoint), methods=["POST"]) for path, endpoint in actions.ROUTES],
        Mount("/static", app=StaticFiles(directory=WEB_DIR / "static"), name="static"),
    ]
    middleware = [
        Middleware(SecurityHeaders),
        Middleware(SessionMiddleware, secret_key=secret, session_cookie=SESSION_COOKIE,
                   max_age=config.dashboard.session_max_age_seconds, same_site="strict",
                   https_only=config.dashboard.secure_cookie),
    ]
    app = Starlette(routes=routes, middleware=middleware)
    app.state.web = ctx
    return app
