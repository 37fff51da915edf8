"""The dashboard's actions: POSTs with a CSRF token, by admins only (403 for a viewer). They call the same
functions as ``bmd-node jobs retry`` and ``bmd-node exports retry``; the job event records the user
(``dashboard:NAME``)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from service.db.engine import write_session
from service.db.queries import SeriesStateError
from service.domain.status import JobStatus
from service.export.outbox import requeue_dead_exports
from service.queue.jobs import JobStateError, enqueue_in_session, get_job, retry
from service.web.auth import check_csrf, require_admin
from service.web.common import context_of, safe_next
from service.web.users import UserView

log = logging.getLogger(__name__)


def _actor(user: UserView) -> str:
    return f"dashboard:{user.username}"


async def _act(request: Request, user: UserView, action: Callable[[], str]) -> Response:
    """CSRF check, admin check, then ``action`` (returns the message shown on the next page)."""
    form = await check_csrf(request)
    require_admin(user)
    try:
        message = await run_in_threadpool(action)
    except (KeyError, JobStateError, SeriesStateError) as exc:
        raise HTTPException(409, str(exc).strip("'\"")) from exc
    log.info("dashboard: %s by %s", message, user.username)
    request.session["flash"] = message
    return RedirectResponse(safe_next(form.get("next")), status_code=303)


async def retry_job(request: Request, user: UserView) -> Response:
    job_id = int(request.path_params["job_id"])

    def action() -> str:
        retry(context_of(request).engine, job_id, actor=_actor(user))
        return f"job {job_id} queued again"

    return await _act(request, user, action)


async def rerun_job(request: Request, user: UserView) -> Response:
    """A new job for the series of a succeeded job; its results replace the earlier ones (as a re-send would)."""
    job_id = int(request.path_params["job_id"])
    ctx = context_of(request)

    def action() -> str:
        job = get_job(ctx.engine, job_id)
        if job is None:
            raise KeyError(f"job {job_id} does not exist")
        if job.status != JobStatus.SUCCEEDED:
            raise JobStateError(f"job {job_id} is {job.status}: re-run a succeeded job, retry a failed one")
        with write_session(ctx.engine) as session:
            new_id = enqueue_in_session(session, job.series_instance_uid, max_attempts=ctx.config.worker.max_attempts,
                                        actor=_actor(user))
        if new_id is None:
            raise JobStateError(f"the series of job {job_id} already has a queued or running job")
        return f"job {new_id} queued to re-run the series of job {job_id}"

    return await _act(request, user, action)


async def retry_export(request: Request, user: UserView) -> Response:
    export_id = int(request.path_params["export_id"])

    def action() -> str:
        if requeue_dead_exports(context_of(request).engine, export_ids=[export_id]) != 1:
            raise JobStateError(f"export {export_id} is not in the dead letter")
        return f"export {export_id} queued again"

    return await _act(request, user, action)


ROUTES: list[tuple[str, Callable[[Request, UserView], Awaitable[Response]]]] = [
    ("/jobs/{job_id:int}/retry", retry_job),
    ("/jobs/{job_id:int}/rerun", rerun_job),
    ("/exports/{export_id:int}/retry", retry_export),
]
