"""add_task's short path for the common task, and everything that must still take the full one."""

from __future__ import annotations

import asyncio
import contextvars
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from fastapi_taskflow import ManagedBackgroundTasks, TaskConfig, TaskManager
from fastapi_taskflow.registry import TaskSpec
from fastapi_taskflow.wrapper import TrackedTask

pytestmark = pytest.mark.anyio

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("plain_request_id", default="-")


async def job(*args: Any, **kwargs: Any) -> None:
    return None


def only_task(tasks: ManagedBackgroundTasks) -> TrackedTask:
    assert len(tasks.tasks) == 1
    task = tasks.tasks[0]
    assert isinstance(task, TrackedTask)
    return task


@pytest.mark.parametrize(
    ("config", "plain"),
    [
        (TaskConfig(), True),
        (TaskConfig(queue="emails", retries=3, name="renamed"), True),
        (TaskConfig(executor="process"), False),
        (TaskConfig(priority=0), False),
        (TaskConfig(eager=True), False),
        (TaskConfig(persist=True), False),
    ],
)
def test_a_spec_is_plain_unless_its_config_asks_for_more(config: TaskConfig, plain: bool) -> None:
    spec = TaskSpec.resolve(job, config)
    assert spec.plain is plain
    assert spec.queue == (config.queue or "default")


async def test_a_plain_task_gets_its_record_and_its_arguments() -> None:
    manager = TaskManager()
    manager.task(queue="emails")(job)
    tasks = ManagedBackgroundTasks(manager)
    task_id = tasks.add_task(job, 1, x=2)
    record = manager.core.get(task_id)
    assert record is not None
    assert (record["func_name"], record["status"], record["queue"], record["executor"]) == (
        "job",
        "pending",
        "emails",
        "async",
    )
    assert (record["source"], record["priority"], record["tags"], record["args_json"]) == ("manual", None, {}, None)
    task = only_task(tasks)
    assert (task.task_id, task.func, task.args, task.kwargs, task.tags) == (task_id, job, (1,), {"x": 2}, {})
    assert (task.payload, task.journaled, task.idempotency_key) == (None, False, None)
    await tasks()
    record = manager.core.get(task_id)
    assert record is not None and record["status"] == "success"


async def test_a_plain_task_runs_in_the_context_it_was_added_in() -> None:
    manager = TaskManager()
    seen: list[str] = []

    @manager.task()
    async def observe() -> None:
        seen.append(request_id.get())
        request_id.set("changed-by-the-task")

    tasks = ManagedBackgroundTasks(manager)
    request_id.set("first")
    tasks.add_task(observe)
    request_id.set("second")
    tasks.add_task(observe)
    await tasks()
    assert seen == ["first", "second"]
    assert request_id.get() == "second"


@pytest.mark.parametrize(
    ("options", "field", "value"),
    [
        ({"tags": {"tenant": "a"}}, "tags", {"tenant": "a"}),
        ({"priority": 0}, "priority", 0),
        ({"queue": "reports"}, "queue", "reports"),
        ({"idempotency_key": "k"}, "idempotency_key", "k"),
    ],
)
async def test_options_of_the_call_are_kept(options: dict[str, Any], field: str, value: object) -> None:
    manager = TaskManager()
    manager.task()(job)
    tasks = ManagedBackgroundTasks(manager)
    record = manager.core.get(tasks.add_task(job, **options))
    assert record is not None and record[field] == value
    await tasks()


async def test_a_journal_of_every_task_turned_on_later_still_journals_them(tmp_path: Path) -> None:
    manager = TaskManager(snapshot_db=str(tmp_path / "tasks.db"))
    manager.task()(job)
    tasks = ManagedBackgroundTasks(manager)
    tasks.add_task(job, object())  # not journaled: arguments need not be JSON
    manager.requeue_pending = True
    with pytest.raises(TypeError, match="cannot be stored as JSON"):
        tasks.add_task(job, object())
    stored_id = tasks.add_task(job, 1)
    record = manager.core.get(stored_id)
    assert record is not None and record["args_json"] == b"[1]"
    assert [task.journaled for task in tasks.tasks if isinstance(task, TrackedTask)] == [False, True]
    manager.requeue_pending = False
    tasks.add_task(job, object())
    await tasks()
    manager.core.close()


async def test_with_encryption_a_task_keeps_only_ciphertext() -> None:
    manager = TaskManager(encrypt_args_key=Fernet.generate_key())
    seen: list[tuple[Any, ...]] = []

    @manager.task()
    async def secret(*args: Any) -> None:
        seen.append(args)

    tasks = ManagedBackgroundTasks(manager)
    tasks.add_task(secret, "card-number")
    task = only_task(tasks)
    assert task.args == () and task.payload is not None and b"card-number" not in task.payload
    await tasks()
    assert seen == [("card-number",)]


async def test_in_queue_mode_a_task_waits_in_its_queue() -> None:
    manager = TaskManager(max_size=10)
    manager.task()(job)
    tasks = ManagedBackgroundTasks(manager)
    task_id = tasks.add_task(job)
    assert tasks.tasks == []
    assert [queue["pending"] for queue in manager.queue_stats()] == [1]
    await manager.startup()
    for _ in range(100):
        record = manager.core.get(task_id)
        if record is not None and record["status"] == "success":
            break
        await asyncio.sleep(0.01)
    await manager.shutdown()
    record = manager.core.get(task_id)
    assert record is not None and record["status"] == "success"
