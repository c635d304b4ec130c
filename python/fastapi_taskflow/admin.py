"""``TaskAdmin``: mounts the task routes on an app and wires the manager's lifecycle."""

from __future__ import annotations

from fastapi import FastAPI

from .manager import TaskManager
from .router import create_task_router


class TaskAdmin:
    """Adds the ``/tasks`` routes to ``app`` and runs the manager with the app's lifespan."""

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
        if auth is not None:
            # Refused rather than ignored: silently serving the routes unprotected
            # would be worse than failing at start-up.
            raise NotImplementedError("TaskAdmin(auth=...) is not available yet in fastapi-taskflow-rs")
        if retention_days is not None:
            raise NotImplementedError("TaskAdmin(retention_days=...) is not available yet in fastapi-taskflow-rs")
        if not path.startswith("/") or path.endswith("/"):
            raise ValueError(f"path must start with '/' and not end with it, got {path!r}")
        self.app = app
        self.task_manager = task_manager
        self.path = path
        self.display_func_args = display_func_args
        self.title = title
        self.poll_interval = poll_interval
        if auto_install:
            task_manager.install(app)
        app.include_router(create_task_router(task_manager), prefix=path)
        task_manager.init_app(app)
