"""``TaskAdmin``: mounts the task routes and the dashboard on an app and wires the manager's lifecycle."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from fastapi import APIRouter, Depends, FastAPI
from starlette.routing import Match

from .auth import AuthSettings, create_auth_router, refuse_cross_site
from .dashboard import create_dashboard_router
from .manager import TaskManager
from .router import create_task_router

try:
    from starlette._utils import get_route_path
except ImportError:  # pragma: no cover - Starlette before 0.33 matched routes on scope["path"]

    def get_route_path(scope: MutableMapping[str, Any]) -> str:
        return str(scope["path"])


class _AdminRouter(APIRouter):
    """Every route of a ``TaskAdmin``, included into its app as one router under ``path``.

    FastAPI versions that keep an included router as one route (rather than copying its
    routes into the app) try each of its routes in turn, with some bookkeeping each, for
    every request that reaches it: with FastAPI 0.165 the admin's 18 routes cost a route
    of the app declared after ``TaskAdmin(...)`` about 40 µs per request. So a request
    whose path is not under ``path`` is turned away here at once; requests under
    ``path`` are matched exactly as before, in the same order.
    """

    def __init__(self, app: FastAPI, path: str) -> None:
        super().__init__()
        self._gated_app = app
        self._path = path
        self._path_slash = path + "/"

    def matches(self, scope: MutableMapping[str, Any]) -> tuple[Match, MutableMapping[str, Any]]:
        # Only where this app routes the request: the admin's paths are relative to it
        # (get_route_path drops the root path of a mount). Were the app's router included
        # in another router, the path there could carry another prefix: no shortcut then.
        if scope.get("app") is self._gated_app:
            route_path = get_route_path(scope)
            if route_path != self._path and not route_path.startswith(self._path_slash):
                return Match.NONE, {}
        return super().matches(scope)


class TaskAdmin:
    """Adds the ``/tasks`` routes and the dashboard to ``app`` and runs the manager with the app's lifespan.

    With ``auth`` (a ``(username, password)`` tuple, a list of them or a
    ``TaskAuthBackend``), the dashboard, its stream and every JSON route need the
    session cookie set by ``{path}/auth/login``. State-changing routes refuse
    requests sent by another site, with or without ``auth``.
    """

    def __init__(
        self,
        app: FastAPI,
        task_manager: TaskManager,
        path: str = "/tasks",
        display_func_args: bool = False,
        auto_install: bool = False,
        auth: object | None = None,
        token_expiry: int = 86_400,
        secret_key: str | None = None,
        poll_interval: float = 30.0,
        title: str = "fastapi-taskflow",
        retention_days: float | None = None,
    ) -> None:
        if retention_days is not None:
            task_manager.set_retention_days(retention_days)
        if not path.startswith("/") or path.endswith("/"):
            raise ValueError(f"path must start with '/' and not end with it, got {path!r}")
        self.app = app
        self.task_manager = task_manager
        self.path = path
        self.display_func_args = display_func_args
        self.title = title
        self.poll_interval = poll_interval
        self.auth = (
            AuthSettings.create(auth, secret_key=secret_key, token_expiry=token_expiry, title=title)
            if auth is not None
            else None
        )
        if auto_install:
            task_manager.install(app)
        guards = [Depends(refuse_cross_site)]
        routes = _AdminRouter(app, path)
        if self.auth is not None:
            routes.include_router(create_auth_router(self.auth), prefix=path)
            guards.append(Depends(self.auth.require))
        routes.include_router(
            create_dashboard_router(
                task_manager,
                title=title,
                poll_interval=poll_interval,
                display_func_args=display_func_args,
                auth=self.auth,
            ),
            prefix=path,
        )
        routes.include_router(create_task_router(task_manager, dependencies=guards), prefix=path)
        app.include_router(routes)
        task_manager.init_app(app)
