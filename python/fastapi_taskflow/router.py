"""The ``/tasks`` JSON routes, served from JSON the core builds, and the action routes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

import orjson
from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.params import Depends
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from .actions import HISTORY_UNITS, TaskActions
from .errors import SnapshotError
from .models import TaskStatus

if TYPE_CHECKING:
    from .manager import TaskManager

T = TypeVar("T")

#: Records returned by ``GET /tasks`` when no ``limit`` is given.
DEFAULT_PAGE_LIMIT = 1_000
MAX_PAGE_LIMIT = 10_000
NEXT_CURSOR_HEADER = "X-Next-Cursor"
OPENMETRICS_MEDIA_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def _wants_openmetrics(format_: str | None, accept: str) -> bool:
    """Whether ``GET /metrics`` answers with the OpenMetrics text rather than JSON (the default)."""
    if format_ is not None:
        return format_ == "prometheus"
    accept = accept.lower()
    return "application/openmetrics-text" in accept or "text/plain" in accept


def _json(body: bytes, headers: dict[str, str] | None = None) -> Response:
    return Response(content=body, media_type="application/json", headers=headers)


def _actor(request: Request) -> str:
    """Who acts, for the audit log: the session's user with auth (set by its guard), else anonymous."""
    user = getattr(request.state, "taskflow_user", None)
    return "anonymous" if user is None else str(user)


class BulkRetryRequest(BaseModel):
    """Body of ``POST /bulk-retry``."""

    task_ids: list[str]


class BulkRetryResult(BaseModel):
    original_task_id: str
    new_task_id: str


class BulkRetryResponse(BaseModel):
    dispatched: int
    skipped: int
    results: list[BulkRetryResult]


class HistoryDeleted(BaseModel):
    deleted: int
    store: int
    backend: int


#: A queue limit in a PATCH body: a whole number >= 1 (not "3", 2.5 or true), or null for unlimited.
QueueLimit = Annotated[StrictInt, Field(ge=1)] | None


class QueueUpdate(BaseModel):
    """Body of ``PATCH /queues/{name}``: a field left out keeps its value; null means unlimited."""

    model_config = ConfigDict(extra="forbid")

    concurrency: QueueLimit = None
    max_size: QueueLimit = None


class QueueUpdated(BaseModel):
    name: str
    concurrency: int | None
    max_size: int | None
    pending: int


def create_task_router(manager: TaskManager, dependencies: Sequence[Depends] | None = None) -> APIRouter:
    """Routes over ``manager``'s tasks, to be mounted under the admin prefix.

    ``dependencies`` run before every route (the admin's authentication and cross-site guards).
    """
    router = APIRouter(tags=["tasks"], dependencies=dependencies)
    core = manager.core
    actions = TaskActions(manager)

    read = actions.off_loop

    @router.get("", summary="List tasks, newest first")
    async def list_tasks(
        status: TaskStatus | None = None,
        name: Annotated[str | None, Query(description="Only tasks of this function name")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE_LIMIT)] = DEFAULT_PAGE_LIMIT,
        cursor: Annotated[str | None, Query(description=f"The {NEXT_CURSOR_HEADER} of the previous page")] = None,
        tag: Annotated[str | None, Query(description="Only tasks carrying this tag, as key=value")] = None,
    ) -> Response:
        status_value = status.value if status is not None else None
        try:
            body, next_cursor = await read(
                lambda: core.page_json(status=status_value, func_name=name, limit=limit, cursor=cursor, tag=tag)
            )
        except ValueError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from exc
        if manager.shared is not None:  # the tasks of every instance
            body, next_cursor = await manager.shared.page_json(
                (body, next_cursor), status=status_value, func_name=name, limit=limit, cursor=cursor, tag=tag
            )
        return _json(body, {NEXT_CURSOR_HEADER: next_cursor} if next_cursor else None)

    @router.get("/metrics", summary="Counts, success rate and durations (JSON or OpenMetrics text)")
    async def metrics(
        request: Request,
        output: Annotated[
            Literal["json", "prometheus"] | None,
            Query(alias="format", description="prometheus: OpenMetrics text; default JSON, or by the Accept header"),
        ] = None,
    ) -> Response:
        if _wants_openmetrics(output, request.headers.get("accept", "")):
            return Response(content=core.metrics_prometheus(), media_type=OPENMETRICS_MEDIA_TYPE)
        body = core.metrics_json()
        if manager.shared is not None:  # the health of the shared backend, as a last key
            body = b'%s,"backend":%s}' % (body[:-1], orjson.dumps(manager.shared.health()))
        return _json(body)

    # The fixed paths come before "/{task_id}", which would otherwise take them as ids.

    @router.get("/audit", summary="Actions taken through these routes, newest first (at most 1000)")
    async def audit() -> Response:
        return _json(orjson.dumps(manager.audit.entries()))

    @router.get("/queues", summary="Named queues: limits, and how many tasks wait, run, finished, were rejected")
    async def queues() -> Response:
        return _json(orjson.dumps(manager.queue_stats()))

    @router.patch(
        "/queues/{queue_name}",
        response_model=QueueUpdated,
        summary="Change a queue's concurrency and max_size now (null = unlimited; a field left out is kept)",
    )
    async def update_queue(queue_name: str, body: QueueUpdate, request: Request) -> dict[str, Any]:
        if not manager.queue_mode:
            raise HTTPException(
                status_code=400,
                detail="Named queues are not enabled; pass queues= or max_size= to TaskManager to use them",
            )
        try:
            current = manager.get_queue_config(queue_name)
        except KeyError:
            raise HTTPException(status_code=404, detail=f"Queue {queue_name!r} not found") from None
        changes = body.model_dump(exclude_unset=True)
        updated = manager.update_queue_config(
            queue_name,
            changes.get("concurrency", current.concurrency),
            changes.get("max_size", current.max_size),
        )
        manager.audit.record("update_queue", queue_name, _actor(request), changes)
        return updated

    @router.get("/schedules", summary="Recurring schedules and the one-off runs due within 365 days, soonest first")
    async def schedules() -> Response:
        try:
            return _json(orjson.dumps(await manager.schedules_overview()))
        except SnapshotError as exc:
            raise HTTPException(status_code=503, detail=str(exc)) from exc

    # ":path": a run key may hold slashes ("report/2024-06").
    @router.delete("/schedules/{run_key:path}", summary="Cancel a one-off run before it fires")
    async def cancel_scheduled(run_key: str, request: Request) -> dict[str, Any]:
        try:
            # Without a snapshot file there are no one-off runs, so none by this key.
            cancelled = manager.writer is not None and await manager.cancel_scheduled(run_key)
        except SnapshotError as exc:
            raise HTTPException(status_code=503, detail=str(exc)) from exc
        if not cancelled:
            raise HTTPException(status_code=404, detail="Scheduled run not found")
        manager.audit.record("cancel_scheduled", run_key, _actor(request), {})
        return {"run_key": run_key, "cancelled": True}

    @router.post(
        "/bulk-retry",
        response_model=BulkRetryResponse,
        summary="Retry the failed, interrupted or rejected tasks among task_ids",
    )
    async def bulk_retry(body: BulkRetryRequest, request: Request) -> dict[str, Any]:
        return await actions.bulk_retry(body.task_ids, _actor(request))

    @router.post(
        "/retry-failed",
        response_model=BulkRetryResponse,
        summary="Retry the failed and interrupted tasks created within a window",
    )
    async def retry_failed(
        request: Request,
        since: Annotated[str, Query(description="<N>h, <N>d or all")] = "6h",
        func_name: Annotated[str | None, Query(description="Only tasks of this function name")] = None,
    ) -> dict[str, Any]:
        return await actions.retry_failed(since, func_name, _actor(request))

    @router.delete(
        "/history",
        response_model=HistoryDeleted,
        summary="Delete finished tasks that ended before a time, from memory and disk",
    )
    async def delete_history(
        value: Annotated[int, Query(gt=0, description="How many units ago")],
        unit: Annotated[str, Query(description=" | ".join(HISTORY_UNITS))],
    ) -> dict[str, int]:
        return await actions.delete_history(value, unit)

    @router.get("/{task_id}", summary="One task")
    async def get_task(task_id: str) -> Response:
        body = await read(lambda: core.get_json(task_id))
        if body is None and manager.shared is not None:  # a task of another instance
            body = await manager.shared.get_json(task_id)
        if body is None:
            raise HTTPException(status_code=404, detail="Task not found")
        return _json(body)

    @router.post("/{task_id}/cancel", summary="Cancel a pending or running task")
    async def cancel_task(task_id: str, request: Request) -> Response:
        return _json(await actions.cancel(task_id, _actor(request)))

    @router.post("/{task_id}/retry", summary="Run a failed, interrupted or rejected task again, as a new task")
    async def retry_task(task_id: str, request: Request) -> Response:
        return _json(await actions.retry(task_id, _actor(request)))

    return router
