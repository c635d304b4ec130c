"""The ``/tasks`` JSON routes, served from JSON the core builds."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Annotated, Literal, TypeVar

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.params import Depends
from starlette.concurrency import run_in_threadpool

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


def create_task_router(manager: TaskManager, dependencies: Sequence[Depends] | None = None) -> APIRouter:
    """Routes over ``manager``'s tasks, to be mounted under the admin prefix.

    ``dependencies`` run before every route (the admin's authentication and cross-site guards).
    """
    router = APIRouter(tags=["tasks"], dependencies=dependencies)
    core = manager.core

    async def read(call: Callable[[], T]) -> T:
        # Reads that may reach the snapshot file run off the event loop thread.
        if core.db_path is None:
            return call()
        return await run_in_threadpool(call)

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
        return _json(core.metrics_json())

    @router.get("/{task_id}", summary="One task")
    async def get_task(task_id: str) -> Response:
        body = await read(lambda: core.get_json(task_id))
        if body is None:
            raise HTTPException(status_code=404, detail="Task not found")
        return _json(body)

    return router
