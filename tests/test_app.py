"""FastAPI behaviour: injection, execution, retries, routes and lifecycle, in-process."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import fastapi.dependencies.utils as fastapi_dependency_utils
import pytest
from fastapi import BackgroundTasks, Depends, FastAPI
from fastapi.testclient import TestClient

from fastapi_taskflow import ManagedBackgroundTasks, TaskAdmin, TaskManager
from fastapi_taskflow.errors import SnapshotError
from fastapi_taskflow.execution import retry_delay


@pytest.fixture(autouse=True)
def _restore_fastapi_background_tasks() -> Iterator[None]:
    # install() patches FastAPI process-wide; each test starts from the original.
    original = fastapi_dependency_utils.BackgroundTasks
    yield
    fastapi_dependency_utils.BackgroundTasks = original  # type: ignore[misc]


def make_app(manager: TaskManager, **admin: Any) -> FastAPI:
    app = FastAPI()
    TaskAdmin(app, manager, **admin)
    return app


def task_json(client: TestClient, task_id: str) -> dict[str, Any]:
    response = client.get(f"/tasks/{task_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_injection_patterns_all_track_tasks() -> None:
    manager = TaskManager()
    ran: list[str] = []

    @manager.task()
    def note(word: str) -> None:
        ran.append(word)

    app = make_app(manager, auto_install=True)

    @app.post("/native")
    def native(background_tasks: BackgroundTasks) -> dict[str, str]:
        return {"task_id": background_tasks.add_task(note, "native")}

    @app.post("/managed")
    def managed(background_tasks: ManagedBackgroundTasks) -> dict[str, str]:
        return {"task_id": background_tasks.add_task(note, "managed")}

    @app.post("/depends")
    def depends(tasks: ManagedBackgroundTasks = Depends(manager.get_tasks)) -> dict[str, str]:
        return {"task_id": tasks.add_task(note, word="depends")}

    with TestClient(app) as client:
        for route in ("native", "managed", "depends"):
            task_id = client.post(f"/{route}").json()["task_id"]
            assert uuid.UUID(task_id).version == 4
            record = task_json(client, task_id)
            assert record["status"] == "success"
            assert record["func_name"] == "note"
            assert record["executor"] == "thread"
    assert ran == ["native", "managed", "depends"]


def test_depends_pattern_needs_no_install() -> None:
    manager = TaskManager()
    app = make_app(manager)
    done = threading.Event()

    @manager.task()
    async def mark() -> None:
        done.set()

    @app.post("/go")
    async def go(tasks: ManagedBackgroundTasks = Depends(manager.background_tasks)) -> dict[str, str]:
        return {"task_id": tasks.add_task(mark)}

    with TestClient(app) as client:
        task_id = client.post("/go").json()["task_id"]
        assert task_json(client, task_id)["executor"] == "async"
    assert done.is_set()


def test_reserved_keywords_are_not_forwarded() -> None:
    manager = TaskManager()
    seen: list[dict[str, Any]] = []

    @manager.task()
    def capture(**kwargs: Any) -> None:
        seen.append(kwargs)

    app = make_app(manager)

    @app.post("/go")
    def go(tasks: ManagedBackgroundTasks = Depends(manager.get_tasks)) -> dict[str, str]:
        return {"task_id": tasks.add_task(capture, tags={"tenant": "a"}, idempotency_key="k1", value=1)}

    with TestClient(app) as client:
        task_id = client.post("/go").json()["task_id"]
        assert task_json(client, task_id)["tags"] == {"tenant": "a"}
    assert seen == [{"value": 1}]


def test_idempotency_key_returns_the_existing_task() -> None:
    manager = TaskManager()
    calls: list[int] = []

    @manager.task()
    def once() -> None:
        calls.append(1)

    app = make_app(manager)

    @app.post("/go")
    def go(tasks: ManagedBackgroundTasks = Depends(manager.get_tasks)) -> dict[str, str]:
        return {"task_id": tasks.add_task(once, idempotency_key="order-42")}

    with TestClient(app) as client:
        first = client.post("/go").json()["task_id"]
        second = client.post("/go").json()["task_id"]
    assert first == second
    assert calls == [1]


def test_unregistered_function_runs_under_its_own_name() -> None:
    manager = TaskManager()
    ran = threading.Event()

    def plain_helper() -> None:
        ran.set()

    app = make_app(manager)

    @app.post("/go")
    def go(tasks: ManagedBackgroundTasks = Depends(manager.get_tasks)) -> dict[str, str]:
        return {"task_id": tasks.add_task(plain_helper)}

    with TestClient(app) as client:
        record = task_json(client, client.post("/go").json()["task_id"])
    assert ran.is_set()
    assert record["func_name"] == "plain_helper"
    assert record["status"] == "success"


def test_retries_follow_the_backoff_formula_and_then_succeed(monkeypatch: pytest.MonkeyPatch) -> None:
    manager = TaskManager()
    attempts: list[int] = []
    sleeps: list[float] = []
    real_sleep = asyncio.sleep

    async def recording_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr("fastapi_taskflow.execution.asyncio.sleep", recording_sleep)

    @manager.task(retries=3, delay=1.0, backoff=2.0)
    async def flaky() -> None:
        attempts.append(len(attempts))
        if len(attempts) <= 2:
            raise RuntimeError(f"attempt {len(attempts)} failed")

    app = make_app(manager)

    @app.post("/go")
    def go(tasks: ManagedBackgroundTasks = Depends(manager.get_tasks)) -> dict[str, str]:
        return {"task_id": tasks.add_task(flaky)}

    with TestClient(app) as client:
        record = task_json(client, client.post("/go").json()["task_id"])
    assert record["status"] == "success"
    assert record["retries_used"] == 2
    assert record["error"] is None
    assert sleeps == [1.0, 2.0]
    assert [line for line in record["logs"] if line.startswith("---")] == ["--- Retry 1 ---", "--- Retry 2 ---"]


def test_retry_delay_formula() -> None:
    assert [retry_delay(0.5, 3.0, k) for k in (1, 2, 3)] == [0.5, 1.5, 4.5]


def test_failed_task_keeps_error_and_traceback_and_app_keeps_serving() -> None:
    manager = TaskManager()

    @manager.task(retries=1, delay=0.0)
    def broken() -> None:
        raise KeyError("missing-thing")

    @manager.task()
    async def broken_async() -> None:
        raise SystemError  # no message: the type name stands in

    app = make_app(manager)

    @app.post("/go/{which}")
    def go(which: str, tasks: ManagedBackgroundTasks = Depends(manager.get_tasks)) -> dict[str, str]:
        return {"task_id": tasks.add_task(broken if which == "sync" else broken_async)}

    with TestClient(app) as client:
        record = task_json(client, client.post("/go/sync").json()["task_id"])
        assert record["status"] == "failed"
        assert record["retries_used"] == 1
        assert record["error"] == "'missing-thing'"
        assert "KeyError" in record["stacktrace"] and "broken" in record["stacktrace"]
        assert "fastapi_taskflow" not in record["stacktrace"], "the runner's own frames are left out"
        record = task_json(client, client.post("/go/async").json()["task_id"])
        assert record["status"] == "failed"
        assert record["error"] == "SystemError"
        assert client.get("/tasks/metrics").json()["failed"] == 2


def test_sync_tasks_run_in_the_thread_pool_and_async_ones_on_the_loop() -> None:
    manager = TaskManager(max_sync_threads=2)
    threads: dict[str, str] = {}

    @manager.task()
    def in_thread() -> None:
        threads["sync"] = threading.current_thread().name

    @manager.task()
    async def on_loop() -> None:
        threads["async"] = threading.current_thread().name

    app = make_app(manager)

    @app.post("/go")
    async def go(tasks: ManagedBackgroundTasks = Depends(manager.get_tasks)) -> dict[str, str]:
        tasks.add_task(in_thread)
        return {"task_id": tasks.add_task(on_loop)}

    with TestClient(app) as client:
        client.post("/go")
    assert threads["sync"].startswith("taskflow-sync")
    assert not threads["async"].startswith("taskflow")


def test_lifespan_apps_start_and_stop_the_manager(tmp_path: Path) -> None:
    manager = TaskManager(snapshot_db=str(tmp_path / "tasks.db"))
    events: list[str] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        events.append("user-start")
        yield
        events.append("user-stop")

    app = FastAPI(lifespan=lifespan)
    TaskAdmin(app, manager)

    @manager.task()
    def job() -> None: ...

    @app.post("/go")
    def go(tasks: ManagedBackgroundTasks = Depends(manager.get_tasks)) -> dict[str, str]:
        return {"task_id": tasks.add_task(job)}

    with TestClient(app) as client:
        task_id = client.post("/go").json()["task_id"]
        assert events == ["user-start"]
    assert events == ["user-start", "user-stop"]
    # Shutdown flushed the finished task: a new manager on the same file sees it.
    reopened = TaskManager(snapshot_db=str(tmp_path / "tasks.db"))
    record = reopened.get_task(task_id)
    assert record is not None and record.status == "success"


def test_on_startup_style_apps_are_wired_too(tmp_path: Path) -> None:
    manager = TaskManager(snapshot_db=str(tmp_path / "tasks.db"))
    app = make_app(manager)
    assert manager.writer is not None
    with TestClient(app):
        assert manager.writer.running
    assert not manager.writer.running


def test_unknown_task_is_404() -> None:
    with TestClient(make_app(TaskManager())) as client:
        response = client.get(f"/tasks/{uuid.uuid4()}")
    assert response.status_code == 404
    assert response.json() == {"detail": "Task not found"}


@pytest.mark.parametrize(
    "query",
    ["status=bogus", "limit=0", "limit=abc", "limit=100000", "cursor=not-a-cursor"],
)
def test_bad_list_queries_are_422(query: str) -> None:
    with TestClient(make_app(TaskManager())) as client:
        response = client.get(f"/tasks?{query}")
    assert response.status_code == 422, response.text
    assert "detail" in response.json()


def test_list_is_newest_first_and_pages_with_the_cursor_header() -> None:
    manager = TaskManager()

    @manager.task()
    async def a() -> None: ...

    @manager.task()
    async def b() -> None: ...

    app = make_app(manager)

    @app.post("/go")
    async def go(tasks: ManagedBackgroundTasks = Depends(manager.get_tasks)) -> list[str]:
        return [tasks.add_task(a if n % 2 else b) for n in range(25)]

    with TestClient(app) as client:
        created = client.post("/go").json()
        full = client.get("/tasks")
        assert "X-Next-Cursor" not in full.headers
        assert [t["task_id"] for t in full.json()][::-1] == created

        seen: list[str] = []
        cursor: str | None = None
        while True:
            response = client.get("/tasks", params={"limit": 10, **({"cursor": cursor} if cursor else {})})
            seen += [t["task_id"] for t in response.json()]
            cursor = response.headers.get("X-Next-Cursor")
            if cursor is None:
                break
        assert seen == [t["task_id"] for t in full.json()]

        only_a = client.get("/tasks", params={"name": "a"}).json()
        assert len(only_a) == 12 and {t["func_name"] for t in only_a} == {"a"}
        assert len(client.get("/tasks", params={"status": "success"}).json()) == 25
        assert client.get("/tasks", params={"status": "pending"}).json() == []


def test_metrics_route_has_the_spec_fields_and_more() -> None:
    manager = TaskManager()

    @manager.task()
    async def ok() -> None: ...

    app = make_app(manager)

    @app.post("/go")
    async def go(tasks: ManagedBackgroundTasks = Depends(manager.get_tasks)) -> None:
        for _ in range(4):
            tasks.add_task(ok)

    with TestClient(app) as client:
        client.post("/go")
        metrics = client.get("/tasks/metrics").json()
    for key in ("total", "success", "failed", "running", "pending", "interrupted", "success_rate"):
        assert key in metrics
    assert metrics["total"] == metrics["success"] == 4
    assert metrics["success_rate"] == 1.0
    assert metrics["p50_seconds"] <= metrics["p95_seconds"] <= metrics["p99_seconds"]
    assert metrics["by_name"]["ok"]["success"] == 4


def test_snapshot_path_that_cannot_be_opened_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "tasks.db"
    with pytest.raises(SnapshotError, match="no-such-dir"):
        TaskManager(snapshot_db=str(missing))
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database, it is a shopping list" * 100)
    with pytest.raises(SnapshotError, match=r"garbage\.db"):
        TaskManager(snapshot_db=str(garbage))


def test_persistent_task_with_unstorable_argument_is_refused() -> None:
    manager = TaskManager()

    @manager.task(persist=True)
    def keep(thing: object) -> None: ...

    tasks = ManagedBackgroundTasks(manager)
    with pytest.raises(TypeError, match="argument 'thing'"):
        tasks.add_task(keep, thing=object())
    assert tasks.tasks == []
    assert manager.core.memory_len() == 0


def test_unavailable_options_are_refused_loudly() -> None:
    with pytest.raises(NotImplementedError, match="instance_url"):
        TaskManager(instance_url="http://peer")


def test_executor_mismatch_is_a_value_error() -> None:
    manager = TaskManager()
    with pytest.raises(ValueError, match="coroutine function"):

        @manager.task(executor="async")
        def plain() -> None: ...

    with pytest.raises(ValueError, match="plain function"):

        @manager.task(executor="thread")
        async def coro() -> None: ...
