"""The snapshot writer keeps up with a run of tasks that gives the event loop no turn."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

from fastapi_taskflow import ManagedBackgroundTasks, TaskManager
from fastapi_taskflow.persistence import HIGH_WATER


def unwritten(manager: TaskManager) -> int:
    count: int = json.loads(manager.core.metrics_json())["snapshot"]["unwritten"]
    return count


def test_a_run_of_tasks_is_written_while_it_runs(tmp_path: Path) -> None:
    manager = TaskManager(snapshot_db=str(tmp_path / "tasks.db"), snapshot_interval=3600)
    seen: list[int] = []

    @manager.task()
    async def quick() -> None: ...

    @manager.task()
    async def wait_for_the_write() -> None:
        # Blocks the loop on purpose: only a write started without a loop turn can lower the count.
        deadline = time.monotonic() + 30
        while unwritten(manager) >= HIGH_WATER and time.monotonic() < deadline:
            time.sleep(0.01)
        seen.append(unwritten(manager))

    async def scenario() -> None:
        await manager.startup()
        tasks = ManagedBackgroundTasks(manager)
        for _ in range(HIGH_WATER):
            tasks.add_task(quick)
        tasks.add_task(wait_for_the_write)
        await tasks()
        await manager.shutdown()

    asyncio.run(scenario())
    assert seen[0] < HIGH_WATER
    assert unwritten(manager) == 0


def test_asks_from_another_thread_write_too(tmp_path: Path) -> None:
    # A sync endpoint's add_task runs in a worker thread: its asks start the same write.
    manager = TaskManager(snapshot_db=str(tmp_path / "tasks.db"), snapshot_interval=3600)
    writer = manager.writer
    assert writer is not None
    errors: list[BaseException] = []

    def finish_and_ask() -> None:
        try:
            for _ in range(HIGH_WATER):
                task_id = manager.core.create_plain("f", "default", "async")
                manager.core.transition(task_id, "running")
                manager.core.transition(task_id, "success")
                writer.soon()
        except BaseException as exc:  # what the sync endpoint would have raised
            errors.append(exc)

    async def scenario() -> int:
        await manager.startup()
        thread = threading.Thread(target=finish_and_ask)
        thread.start()
        thread.join()  # holding the loop: the writer's own loop cannot write meanwhile
        deadline = time.monotonic() + 30
        while unwritten(manager) and time.monotonic() < deadline:
            time.sleep(0.01)
        left = unwritten(manager)
        await manager.shutdown()
        return left

    assert asyncio.run(scenario()) == 0
    assert errors == []


def test_no_early_write_while_writes_fail(tmp_path: Path) -> None:
    manager = TaskManager(snapshot_db=str(tmp_path / "tasks.db"), snapshot_interval=3600)
    writer = manager.writer
    assert writer is not None
    started: list[bool] = []
    writer._core = _Counting(manager.core, started)
    writer._failures = 1  # as after a failed write: its retry pause holds
    writer._wake = asyncio.Event()
    for _ in range(HIGH_WATER * 2):
        writer.soon()
    assert started == []
    writer._failures = 0
    for _ in range(HIGH_WATER):
        writer.soon()
    assert started == [True]


class _Counting:
    """The core, with its background flushes recorded."""

    def __init__(self, core: object, started: list[bool]) -> None:
        self._core = core
        self._started = started

    def flush_in_background(self) -> bool:
        self._started.append(True)
        return True
