"""``TaskAdmin``: mounts the task routes and the dashboard on an app and wires the manager's lifecycle."""

from __future__ import annotations

from fastapi import Depends, FastAPI

from .auth import AuthSettings, create_auth_router, refuse_cross_site
from .dashboard import create_dashboard_router
from .manager import TaskManager
from .router import create_task_router


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
        if self.auth is not None:
            app.include_router(create_auth_router(self.auth), prefix=path)
            guards.append(Depends(self.auth.require))
        app.include_router(
            create_dashboard_router(
                task_manager,
                title=title,
                poll_interval=poll_interval,
                display_func_args=display_func_args,
                auth=self.auth,
            ),
            prefix=path,
        )
        app.include_router(create_task_router(task_manager, dependencies=guards), prefix=path)
        task_manager.init_app(app)
