"""Where ``TaskAdmin``'s routes sit among the app's own.

Every route under the admin path is served, the app's routes declared before and after
``TaskAdmin(...)`` keep their order relative to it (a route declared before still wins,
a catch-all declared after still loses), paths that only share the prefix text are not
taken, and the OpenAPI schema lists the task routes as before. The same holds with
``auth``, under another path, and for an app mounted inside another one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import fastapi.dependencies.utils as fastapi_dependency_utils
import pytest
from fastapi import BackgroundTasks, FastAPI
from fastapi.testclient import TestClient

from fastapi_taskflow import TaskAdmin, TaskManager

#: The JSON routes of the admin, as the OpenAPI schema lists them (relative to the admin path).
TASK_ROUTES = {
    "": {"get"},
    "/metrics": {"get"},
    "/audit": {"get"},
    "/queues": {"get"},
    "/queues/{queue_name}": {"patch"},
    "/schedules": {"get"},
    "/schedules/{run_key}": {"delete"},
    "/bulk-retry": {"post"},
    "/retry-failed": {"post"},
    "/history": {"delete"},
    "/{task_id}": {"get"},
    "/{task_id}/cancel": {"post"},
    "/{task_id}/retry": {"post"},
}


@pytest.fixture(autouse=True)
def _restore_fastapi_background_tasks() -> Iterator[None]:
    # auto_install patches FastAPI process-wide; each test starts from the original.
    original = fastapi_dependency_utils.BackgroundTasks
    yield
    fastapi_dependency_utils.BackgroundTasks = original  # type: ignore[misc]


async def noop() -> None:
    return None


def build(path: str = "/tasks", *, catch_all: bool = True, **admin: Any) -> FastAPI:
    """An app with routes of its own before and after ``TaskAdmin``."""
    manager = TaskManager()
    app = FastAPI()

    @app.get("/before")
    def before() -> dict[str, str]:
        return {"route": "before"}

    @app.get(f"{path}/audit")
    def shadowing() -> dict[str, str]:  # declared before TaskAdmin: it wins, as it always did
        return {"route": "user audit"}

    TaskAdmin(app, manager, path=path, auto_install=True, **admin)

    @app.post("/enqueue")
    def enqueue(background_tasks: BackgroundTasks) -> dict[str, Any]:
        # Made a ManagedBackgroundTasks by auto_install: add_task returns the task id.
        return {"task_id": background_tasks.add_task(noop)}

    @app.get(f"{path}x")
    def same_prefix_text() -> dict[str, str]:
        return {"route": "prefix text"}

    if catch_all:

        @app.get("/{rest:path}")
        def anything(rest: str) -> dict[str, str]:
            return {"route": "catch-all", "rest": rest}

    return app


@pytest.mark.parametrize("path", ["/tasks", "/admin/jobs"])
def test_every_admin_route_is_served_and_the_app_routes_keep_their_order(path: str) -> None:
    app = build(path)
    with TestClient(app) as client:
        task_id = client.post("/enqueue").json()["task_id"]
        assert client.get("/before").json() == {"route": "before"}
        assert client.get(f"{path}x").json() == {"route": "prefix text"}
        assert client.get(f"{path}/audit").json() == {"route": "user audit"}

        listed = client.get(path)
        assert listed.status_code == 200
        assert task_id in [task["task_id"] for task in listed.json()]
        assert client.get(f"{path}/{task_id}").json()["task_id"] == task_id
        assert client.get(f"{path}/metrics").status_code == 200
        assert client.get(f"{path}/queues").json() == []
        assert client.get(f"{path}/schedules").json() == {"recurring": [], "one_off": []}
        # The task has finished: the action route answers that it cannot cancel it.
        refused = client.post(f"{path}/{task_id}/cancel")
        assert refused.status_code == 400 and "detail" in refused.json()
        page = client.get(f"{path}/dashboard")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert client.get(f"{path}/dashboard/registered").status_code == 200

        # The admin's routes come before a catch-all declared after them...
        missing = client.get(f"{path}/not-a-task")
        assert missing.status_code == 404 and missing.json() == {"detail": "Task not found"}
        # ...which still takes what none of them matches, under the path or elsewhere.
        assert client.get(f"{path}/a/b").json() == {"route": "catch-all", "rest": path[1:] + "/a/b"}
        assert client.get("/elsewhere").json() == {"route": "catch-all", "rest": "elsewhere"}


def test_wrong_method_and_trailing_slash_answer_as_before() -> None:
    app = build(catch_all=False)
    with TestClient(app) as client:
        assert client.put("/tasks/metrics").status_code == 405
        redirect = client.get("/tasks/", follow_redirects=False)
        assert redirect.status_code == 307 and redirect.headers["location"].endswith("/tasks")
        assert client.get("/nowhere").status_code == 404


def test_openapi_lists_the_task_routes_and_not_the_dashboard() -> None:
    app = build("/admin/jobs", auth=("alice", "secret"), secret_key="k" * 32)
    paths = app.openapi()["paths"]
    admin = {p: set(ops) for p, ops in paths.items() if p.startswith("/admin/jobs/") or p == "/admin/jobs"}
    expected = {f"/admin/jobs{p}": methods for p, methods in TASK_ROUTES.items()}
    # The user's own GET /admin/jobs/audit shares its path with the admin's.
    assert admin == expected
    assert {"/before", "/enqueue", "/admin/jobsx", "/{rest}"} <= set(paths)
    assert app.url_path_for("list_tasks") == "/admin/jobs"
    assert app.url_path_for("get_task", task_id="abc") == "/admin/jobs/abc"


def test_auth_routes_are_served_under_the_path() -> None:
    app = build(auth=("alice", "secret"), secret_key="k" * 32)
    with TestClient(app) as client:
        assert client.get("/tasks/auth/login").status_code == 200
        assert client.get("/tasks/metrics").status_code == 401
        assert client.get("/before").json() == {"route": "before"}


def test_an_app_mounted_in_another_serves_its_admin_routes() -> None:
    outer = FastAPI()
    outer.mount("/api", build())
    with TestClient(outer) as client:
        task_id = client.post("/api/enqueue").json()["task_id"]
        assert client.get(f"/api/tasks/{task_id}").json()["task_id"] == task_id
        assert client.get("/api/tasks/metrics").status_code == 200
        assert client.get("/api/elsewhere").json() == {"route": "catch-all", "rest": "elsewhere"}
