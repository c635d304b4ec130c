"""The app that the HTTP scenario serves with uvicorn: one ``POST /enqueue`` adding a no-op task.

The route is the README's quick-start pattern: a plain ``BackgroundTasks`` parameter. With
``COMPARE_HTTP_APP=bare`` it is FastAPI's own (the floor); otherwise ``TaskAdmin(...,
auto_install=True)`` of whichever ``fastapi_taskflow`` is installed makes it a
``ManagedBackgroundTasks`` (no snapshot file), and the route returns the task id.
"""

from __future__ import annotations

import os

from fastapi import BackgroundTasks, FastAPI


async def noop(*args: object, **kwargs: object) -> None:
    return None


app = FastAPI()

if os.environ.get("COMPARE_HTTP_APP") != "bare":
    from fastapi_taskflow import TaskAdmin, TaskManager

    task_manager = TaskManager()
    task_manager.task(name="noop")(noop)
    TaskAdmin(app, task_manager, auto_install=True)


@app.post("/enqueue")
async def enqueue(background_tasks: BackgroundTasks) -> dict[str, str | None]:
    # FastAPI's add_task returns None; a managed one returns the task id.
    task_id: str | None = background_tasks.add_task(noop, 1, x=2)  # type: ignore[func-returns-value]
    return {"task_id": task_id}
