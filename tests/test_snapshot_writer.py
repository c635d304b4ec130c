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


def test_asks_from_another_thread_start_no_write(tmp_path: Path) -> None:
    manager = TaskManager(snapshot_db=str(tmp_path / "tasks.db"), snapshot_interval=3600)
    writer = manager.writer
    assert writer is not None
    errors: list[BaseException] = []

    def ask_many() -> None:
        try:
            for _ in range(HIGH_WATER * 2):
                writer.soon()
        except BaseException as exc:  # what the sync endpoint would have raised
            errors.append(exc)

    async def scenario() -> int:
        await manager.startup()
        thread = threading.Thread(target=ask_many)
        thread.start()
        await asyncio.to_thread(thread.join)
        started = writer.writes
        await manager.shutdown()
        return started

    assert asyncio.run(scenario()) == 0
    assert errors == []
