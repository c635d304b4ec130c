"""The live dashboard: ``index.html``, ``app.js`` and ``app.css`` served from package data, and its stream.

Nothing is fetched from the network: no CDN, no web fonts. The page reads the task
routes (``GET {path}``, ``GET {path}/{id}``, ``GET {path}/metrics``, ``{path}/queues``,
``{path}/schedules``) and follows the live stream at ``GET {path}/dashboard/stream``.
"""

from __future__ import annotations

import hashlib
import html
import json
import time
from importlib.resources import files
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse

from ..auth import PAGE_HEADERS, AuthSettings
from .stream import EventHub

if TYPE_CHECKING:
    from ..manager import TaskManager

__all__ = ["EventHub", "create_dashboard_router"]

#: Files served under ``{path}/dashboard/assets/``.
ASSET_TYPES = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}

STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _read(name: str) -> bytes:
    return files(__name__).joinpath(name).read_bytes()


def _render_index(title: str, config: dict[str, Any], version: str) -> str:
    # "<" is escaped so that no value can close the script element.
    config_json = json.dumps(config).replace("<", "\\u003c")
    return (
        _read("index.html")
        .decode("utf-8")
        .replace("{{title}}", html.escape(title))
        .replace("{{config}}", config_json)
        .replace("{{version}}", version)
    )


def registered_tasks(manager: TaskManager) -> list[dict[str, Any]]:
    """The functions registered with ``@task_manager.task``, with their settings."""
    return [
        {
            "name": spec.name,
            "executor": spec.executor,
            "retries": spec.config.retries,
            "delay": spec.config.delay,
            "backoff": spec.config.backoff,
            "persist": spec.config.persist,
            "requeue_on_interrupt": spec.config.requeue_on_interrupt,
            "eager": spec.config.eager,
            "priority": spec.config.priority,
            "queue": spec.config.queue,
        }
        for spec in sorted(manager.registry.specs(), key=lambda spec: spec.name)
    ]


def create_dashboard_router(
    task_manager: TaskManager,
    *,
    title: str = "fastapi-taskflow",
    poll_interval: float = 30.0,
    display_func_args: bool = False,
    auth: AuthSettings | None = None,
) -> APIRouter:
    """The dashboard page, its assets, its stream and its small JSON helpers.

    With ``auth``, the page redirects to the login page and every other data route
    answers 401 without a valid session cookie; the assets hold no data and stay public.
    """
    router = APIRouter(include_in_schema=False)
    hub = EventHub(task_manager.core, queue_stats=task_manager.queue_stats)
    assets = {name: _read(name) for name in ASSET_TYPES}
    version = hashlib.sha256(b"".join(assets.values())).hexdigest()[:12]
    config = {
        "title": title,
        "auth": auth is not None,
        "displayArgs": display_func_args,
        "pollInterval": poll_interval,
        # Whether a retry deletes the record it retries (the page then drops that row itself).
        "retryReplaces": task_manager.retry_replaces_original,
    }
    page = _render_index(title, config, version)
    guard = [Depends(auth.require)] if auth is not None else []

    @router.get("/dashboard")
    async def dashboard(request: Request) -> Response:
        if auth is not None and auth.claims(request) is None:
            # Relative to {path}/dashboard, so it also works under a mount prefix.
            return RedirectResponse("auth/login", status_code=302)
        return HTMLResponse(page, headers=PAGE_HEADERS)

    @router.get("/dashboard/assets/{name}")
    async def asset(name: str) -> Response:
        body = assets.get(name)
        if body is None:
            raise HTTPException(status_code=404, detail="Not found")
        # The page asks for ?v=<hash of the assets>, so a cached copy is never stale.
        return Response(
            body,
            media_type=ASSET_TYPES[name],
            headers={"Cache-Control": "public, max-age=31536000, immutable", "X-Content-Type-Options": "nosniff"},
        )

    @router.get("/dashboard/stream", dependencies=guard)
    async def stream(request: Request, after: int | None = None) -> StreamingResponse:
        last_event_id = request.headers.get("last-event-id")
        if last_event_id is not None:
            try:
                after = int(last_event_id)
            except ValueError:
                after = None
        if after is not None and after < 0:
            raise HTTPException(status_code=422, detail="after must not be negative")
        expires_at = None
        if auth is not None:
            claims = auth.claims(request) or {}
            exp = claims.get("exp")
            # The stream ends with the session; the browser reconnects and meets the login.
            expires_at = float(exp) if isinstance(exp, (int, float)) else time.time()
        return StreamingResponse(
            hub.stream(after, expires_at=expires_at), media_type="text/event-stream", headers=STREAM_HEADERS
        )

    @router.get("/dashboard/registered", dependencies=guard)
    async def registered() -> Response:
        return Response(orjson.dumps(registered_tasks(task_manager)), media_type="application/json")

    if display_func_args:

        @router.get("/dashboard/arguments/{task_id}", dependencies=guard)
        async def arguments(task_id: str) -> Response:
            record = task_manager.core.get(task_id)
            if record is None:
                raise HTTPException(status_code=404, detail="Task not found")
            args_json, kwargs_json = record.get("args_json"), record.get("kwargs_json")
            if not isinstance(args_json, bytes) or not isinstance(kwargs_json, bytes):
                # Only persistent tasks keep their arguments (as JSON) in the store.
                return Response(b'{"stored":false}', media_type="application/json")
            body = b'{"stored":true,"args":%s,"kwargs":%s}' % (args_json, kwargs_json)
            return Response(body, media_type="application/json")

    return router
