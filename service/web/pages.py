"""The dashboard's pages (GET, any logged-in user): studies received, a result page per study, failures, exports.
Every page has the node status strip (queue depth, workers, disk free, database)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from service.domain.status import ExportStatus
from service.web import data
from service.web.common import WebContext, context_of, render
from service.web.health import disk_free_bytes
from service.web.images import NoImageError, key_image_png
from service.web.users import UserView

PAGE_ROWS = 100


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else ""


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _size(n_bytes: int | None) -> str:
    if n_bytes is None:
        return "?"
    return f"{n_bytes / 2**30:.1f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.0f} MiB"


def _number(value: Any, digits: int = 1) -> str:
    return "" if value is None else f"{float(value):.{digits}f}"


FILTERS: dict[str, Callable[..., str]] = {"when": _when, "duration": _duration, "size": _size, "number": _number}


def _status(ctx: WebContext) -> data.NodeStatus:
    components = ctx.components() if ctx.components is not None else None
    return data.node_status(ctx.engine, components, disk_free_bytes(ctx.config.node.storage_dir))


async def _page(request: Request, user: UserView, template: str, load: Callable[[WebContext], dict[str, Any]],
                ) -> Response:
    ctx = context_of(request)

    def values() -> dict[str, Any]:
        return {"status": _status(ctx), **load(ctx)}

    return render(request, template, user, await run_in_threadpool(values))


async def studies(request: Request, user: UserView) -> Response:
    def load(ctx: WebContext) -> dict[str, Any]:
        rows = data.list_studies(ctx.engine, ctx.peers_by_ae, limit=PAGE_ROWS)
        names = (data.patient_names(ctx.engine, [r.study_instance_uid for r in rows])
                 if ctx.config.dashboard.show_patient_names else {})  # patient names in lists only when configured
        return {"page": "studies", "studies": rows, "names": names}

    return await _page(request, user, "studies.html", load)


async def study(request: Request, user: UserView) -> Response:
    uid = request.path_params["study_instance_uid"]

    def load(ctx: WebContext) -> dict[str, Any]:
        detail = data.study_detail(ctx.engine, uid, ctx.peers_by_ae)
        if detail is None:
            raise HTTPException(404, "no such study on this node")
        return {"page": "studies", "detail": detail}

    return await _page(request, user, "study.html", load)


async def failures(request: Request, user: UserView) -> Response:
    return await _page(request, user, "failures.html", lambda ctx: {
        "page": "failures", "jobs": data.failed_jobs(ctx.engine, limit=PAGE_ROWS),
        "dead_exports": data.list_exports(ctx.engine, status=ExportStatus.DEAD.value, limit=PAGE_ROWS)})


async def exports(request: Request, user: UserView) -> Response:
    return await _page(request, user, "exports.html", lambda ctx: {
        "page": "exports", "per_peer": data.exports_per_peer(ctx.engine),
        "statuses": [s.value for s in ExportStatus], "exports": data.list_exports(ctx.engine, limit=PAGE_ROWS)})


async def key_image(request: Request, user: UserView) -> Response:
    ctx = context_of(request)
    job_id = int(request.path_params["job_id"])

    def load() -> bytes:
        path = data.result_object_path(ctx.engine, job_id, "key_image")
        if path is None:
            raise HTTPException(404, "this job has no key image")
        try:
            return key_image_png(path)
        except NoImageError as exc:
            raise HTTPException(404, str(exc)) from exc

    return Response(await run_in_threadpool(load), media_type="image/png")


ROUTES: list[tuple[str, Callable[[Request, UserView], Awaitable[Response]]]] = [
    ("/", studies),
    ("/studies/{study_instance_uid}", study),
    ("/failures", failures),
    ("/exports", exports),
    ("/jobs/{job_id:int}/key_image.png", key_image),
]
