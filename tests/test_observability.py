"""From request to observer: context, encryption, tags, task logs, observers, prompt snapshots."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from polling import wait_for
from sqlite_peek import count

from fastapi_taskflow import ManagedBackgroundTasks, TaskAdmin, TaskManager
from fastapi_taskflow.crypto import ArgumentCipher
from fastapi_taskflow.loggers import FileLogger, InMemoryLogger, LifecycleEvent, LogEvent, StdoutLogger, TaskObserver
from fastapi_taskflow.task_logging import TaskContext, get_task_context, task_log

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def app_with(manager: TaskManager) -> tuple[FastAPI, list[str]]:
    """An app whose POST /go/{name} enqueues the registered task ``name`` with the query params."""
    app = FastAPI()
    TaskAdmin(app, manager)
    ids: list[str] = []

    @app.post("/go/{name}")
    async def go(
        name: str, secret: str = "", tasks: ManagedBackgroundTasks = Depends(manager.get_tasks)
    ) -> dict[str, str]:
        request_id.set(f"req-{len(ids)}")
        entry = manager.registry.get_by_name(name)
        assert entry is not None
        kwargs = {"secret": secret} if secret else {}
        task_id = tasks.add_task(entry[0], tags={"tenant": "acme"}, **kwargs)
        ids.append(task_id)
        return {"task_id": task_id}

    return app, ids


# -- context ------------------------------------------------------------------


def test_tasks_run_in_the_context_of_the_request_that_created_them() -> None:
    manager = TaskManager()
    seen: dict[str, Any] = {}

    @manager.task()
    async def in_async() -> None:
        seen["async"] = request_id.get()
        seen["async_ctx"] = get_task_context()

    @manager.task()
    def in_thread() -> None:
        seen["thread"] = request_id.get()
        seen["thread_ctx"] = get_task_context()

    app, ids = app_with(manager)
    with TestClient(app) as client:
        client.post("/go/in_async")
        client.post("/go/in_thread")
    assert seen["async"] == "req-0"
    assert seen["thread"] == "req-1"
    assert seen["async_ctx"] == TaskContext(ids[0], "in_async", 0, {"tenant": "acme"})
    assert seen["thread_ctx"] == TaskContext(ids[1], "in_thread", 0, {"tenant": "acme"})
    assert get_task_context() is None


def test_context_changes_inside_a_task_stay_inside_it() -> None:
    manager = TaskManager()
    after: list[str] = []

    @manager.task()
    async def mutate() -> None:
        request_id.set("changed-by-task")

    @manager.task()
    async def observe() -> None:
        after.append(request_id.get())

    app, _ = app_with(manager)
    with TestClient(app) as client:
        client.post("/go/mutate")
        client.post("/go/observe")
    assert after == ["req-1"]


def test_attempt_number_advances_with_retries() -> None:
    manager = TaskManager()
    attempts: list[int] = []

    @manager.task(retries=2)
    async def flaky() -> None:
        context = get_task_context()
        assert context is not None
        attempts.append(context.attempt)
        if context.attempt < 2:
            raise RuntimeError("again")

    app, _ = app_with(manager)
    with TestClient(app) as client:
        client.post("/go/flaky")
    assert attempts == [0, 1, 2]


@pytest.fixture(scope="module")
def span_exporter() -> Iterator[Any]:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    yield exporter


def test_task_span_is_a_child_of_the_request_span(span_exporter: Any) -> None:
    from opentelemetry import trace

    manager = TaskManager()
    tracer = trace.get_tracer("test")

    @manager.task()
    async def traced() -> None:
        with tracer.start_as_current_span("inside-task"):
            pass

    @manager.task()
    async def broken() -> None:
        raise ValueError("boom")

    app = FastAPI()
    TaskAdmin(app, manager)

    @app.post("/go/{which}")
    async def go(which: str, tasks: ManagedBackgroundTasks = Depends(manager.get_tasks)) -> dict[str, str]:
        with tracer.start_as_current_span("request"):
            return {"task_id": tasks.add_task(traced if which == "ok" else broken)}

    span_exporter.clear()
    with TestClient(app) as client:
        client.post("/go/ok")
        client.post("/go/bad")
    spans = {span.context.span_id: span for span in span_exporter.get_finished_spans()}
    by_name = {span.name: span for span in spans.values()}
    task_span, inner, failed = by_name["task traced"], by_name["inside-task"], by_name["task broken"]
    assert spans[task_span.parent.span_id].name == "request"
    assert spans[failed.parent.span_id].name == "request"
    assert inner.parent.span_id == task_span.context.span_id
    assert failed.status.status_code.name == "ERROR"


# -- encryption -----------------------------------------------------------------


def test_encrypted_arguments_never_appear_in_clear(tmp_path: Path) -> None:
    key = Fernet.generate_key()
    db, log = tmp_path / "tasks.db", tmp_path / "tasks.log"
    manager = TaskManager(snapshot_db=str(db), encrypt_args_key=key, log_file=str(log), log_lifecycle=True)
    received: list[str] = []
    secret = "hunter2-very-secret-token"

    @manager.task(persist=True)
    def with_secret(secret: str) -> None:
        received.append(secret)
        task_log("using the secret now")

    app, ids = app_with(manager)
    with TestClient(app) as client:
        client.post("/go/with_secret", params={"secret": secret})
        detail = client.get(f"/tasks/{ids[0]}").text
        listing = client.get("/tasks").text
    assert received == [secret]
    assert secret not in detail and secret not in listing
    assert "using the secret now" in log.read_text()
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), f"{path.name} holds the secret in clear"


def test_wrong_key_fails_the_task_with_a_clear_error() -> None:
    manager = TaskManager(encrypt_args_key=Fernet.generate_key())
    ran: list[str] = []

    @manager.task(retries=3)
    def needs_args(secret: str) -> None:
        ran.append(secret)

    app, ids = app_with(manager)

    @app.middleware("http")
    async def rotate_key_before_tasks_run(request: Any, call_next: Any) -> Any:
        response = await call_next(request)
        manager.runner.cipher = ArgumentCipher(Fernet.generate_key())  # key rotated, old one dropped
        return response

    with TestClient(app) as client:
        client.post("/go/needs_args", params={"secret": "s"})
        record = client.get(f"/tasks/{ids[0]}").json()
        assert client.get("/tasks/metrics").status_code == 200
    assert ran == []
    assert record["status"] == "failed"
    assert record["retries_used"] == 0
    assert "cannot be decrypted" in record["error"]


def test_key_rotation_keeps_old_tasks_readable() -> None:
    old, new = Fernet.generate_key(), Fernet.generate_key()
    token = ArgumentCipher(old).encrypt((1,), {"b": 2})
    assert ArgumentCipher([new, old]).decrypt(token) == ((1,), {"b": 2})


def test_missing_key_list_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one key"):
        ArgumentCipher([])


# -- task logs and observers ----------------------------------------------------


def test_task_log_lines_are_stored_and_observed() -> None:
    memory = InMemoryLogger()
    manager = TaskManager(loggers=[memory])

    @manager.task()
    async def async_logger() -> None:
        task_log("hello from async", level="debug", step=1)

    @manager.task()
    def thread_logger() -> None:
        task_log("hello from a thread", level="warning")

    app, ids = app_with(manager)
    with TestClient(app) as client:
        client.post("/go/async_logger")
        client.post("/go/thread_logger")
        logs = [client.get(f"/tasks/{task_id}").json()["logs"] for task_id in ids]
    assert logs[0][0].endswith("Z hello from async") and logs[0][0][19] == "Z"
    time.strptime(logs[0][0][:20], "%Y-%m-%dT%H:%M:%SZ")
    assert logs[1][0].endswith(" hello from a thread")
    events = {event.message: event for event in memory.log_events}
    assert events["hello from async"].extra == {"step": 1}
    assert events["hello from async"].tags == {"tenant": "acme"}
    assert events["hello from a thread"].level == "warning"
    assert {(e.task_id, e.status) for e in memory.lifecycle_events} == {
        (ids[0], "running"),
        (ids[0], "success"),
        (ids[1], "running"),
        (ids[1], "success"),
    }


def test_task_log_outside_a_task_goes_to_the_standard_logger(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="fastapi_taskflow.task"):
        task_log("no task here", level="warning", ignored=True)
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [("WARNING", "no task here")]


def test_lifecycle_events_of_a_failure_carry_error_and_attempts() -> None:
    memory = InMemoryLogger()
    manager = TaskManager(loggers=[memory])

    @manager.task(retries=1)
    async def always_fails() -> None:
        raise ValueError("nope")

    app, _ = app_with(manager)
    with TestClient(app) as client:
        client.post("/go/always_fails")
    running, failed = memory.lifecycle_events
    assert (running.status, running.attempt, running.retries_used, running.duration) == ("running", 0, 0, None)
    assert (failed.status, failed.attempt, failed.retries_used, failed.error) == ("failed", 1, 1, "nope")
    assert failed.duration is not None and "ValueError: nope" in (failed.stacktrace or "")
    assert failed.level == "error" and failed.tags == {"tenant": "acme"}


class Exploding(TaskObserver):
    async def on_log(self, event: LogEvent) -> None:
        raise RuntimeError("observer bug")

    async def on_lifecycle(self, event: LifecycleEvent) -> None:
        raise RuntimeError("observer bug")


class Blocking(TaskObserver):
    """Blocks its thread until released: proves observers never run on the app's loop."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.seen: list[str] = []

    async def on_lifecycle(self, event: LifecycleEvent) -> None:
        assert self.release.wait(30)
        self.seen.append(event.status)


def test_raising_and_blocking_observers_affect_neither_task_nor_app(caplog: pytest.LogCaptureFixture) -> None:
    blocking = Blocking()
    memory = InMemoryLogger()
    manager = TaskManager(loggers=[Exploding(), blocking, memory])

    @manager.task()
    async def fine() -> None: ...

    app, ids = app_with(manager)
    with caplog.at_level(logging.ERROR, logger="fastapi_taskflow"), TestClient(app) as client:
        client.post("/go/fine")
        # The observer is still blocked, yet the app answers and the task has finished.
        assert client.get(f"/tasks/{ids[0]}").json()["status"] == "success"
        assert blocking.seen == []
        blocking.release.set()
    assert blocking.seen == ["running", "success"]
    assert [e.status for e in memory.lifecycle_events] == ["running", "success"]
    assert any("observer" in record.getMessage() for record in caplog.records)


def test_min_level_filters_log_events() -> None:
    picky = InMemoryLogger(min_level="warning")
    manager = TaskManager(loggers=[picky])

    @manager.task()
    async def chatty() -> None:
        task_log("debug detail", level="debug")
        task_log("something odd", level="warning")
        task_log("it broke", level="error")

    app, _ = app_with(manager)
    with TestClient(app) as client:
        client.post("/go/chatty")
    assert [e.message for e in picky.log_events] == ["something odd", "it broke"]


def test_file_logger_lines_and_rotation(tmp_path: Path) -> None:
    path = tmp_path / "tasks.log"
    manager = TaskManager(log_file=str(path), log_file_max_bytes=400, log_file_backup_count=2, log_lifecycle=True)

    @manager.task()
    async def noisy() -> None:
        for n in range(60):
            task_log(f"line {n}")

    app, ids = app_with(manager)
    with TestClient(app) as client:
        client.post("/go/noisy")
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["tasks.log", "tasks.log.1", "tasks.log.2"]
    last = path.read_text().splitlines()
    assert last[-1].startswith(f"[{ids[0][:8]}] [noisy] ") and last[-1].endswith(" -- SUCCESS")
    assert f"[{ids[0][:8]}] [noisy] line 59" in last


def test_file_logger_refuses_unknown_mode(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mode"):
        FileLogger(str(tmp_path / "x.log"), mode="sometimes")


def test_stdout_logger_prints_logs_and_lifecycle(capsys: pytest.CaptureFixture[str]) -> None:
    manager = TaskManager(loggers=[StdoutLogger()])

    @manager.task()
    async def talk() -> None:
        task_log("said something")

    app, ids = app_with(manager)
    with TestClient(app) as client:
        client.post("/go/talk")
    out = capsys.readouterr().out.splitlines()
    assert any(line.startswith(f"[{ids[0][:8]}] [talk] ") and line.endswith(" said something") for line in out)
    assert any(line.endswith(" -- SUCCESS") for line in out)


# -- persistence on completion ---------------------------------------------------------


def test_finished_tasks_reach_the_file_promptly_in_batches(tmp_path: Path) -> None:
    db = tmp_path / "tasks.db"
    manager = TaskManager(snapshot_db=str(db), snapshot_interval=3600)
    assert manager.writer is not None
    writer = manager.writer

    @manager.task()
    async def quick() -> None: ...

    app = FastAPI()
    TaskAdmin(app, manager)

    @app.post("/many/{count}")
    async def many(count: int, tasks: ManagedBackgroundTasks = Depends(manager.get_tasks)) -> None:
        for _ in range(count):
            tasks.add_task(quick)

    def rows_on_disk() -> int:
        return count(db)

    with TestClient(app) as client:
        client.post("/many/500")
        # Not the hourly interval, not shutdown: the completions themselves trigger the write.
        wait_for(lambda: rows_on_disk() == 500 and writer.writes > 0)  # the count lands just after the commit
        assert 1 <= writer.writes <= 50  # batched: far fewer writes than tasks
        client.post("/many/1")
        wait_for(lambda: rows_on_disk() == 501)


def test_flush_failure_is_logged_and_retried(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "tasks.db"
    manager = TaskManager(snapshot_db=str(db))
    manager.core.close()  # the file is gone from under the writer

    async def scenario() -> int:
        return await manager.flush()

    with caplog.at_level(logging.ERROR, logger="fastapi_taskflow"):
        assert asyncio.run(scenario()) == 0
    assert any("snapshot write failed" in record.getMessage() for record in caplog.records)
