"""The snapshot writer writes finished tasks within moments, unasked, and keeps up with a run of
tasks that gives the event loop no turn."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

from polling import wait_for

from fastapi_taskflow import ManagedBackgroundTasks, TaskManager
from fastapi_taskflow.persistence import WRITE_BEHIND


def unwritten(manager: TaskManager) -> int:
    count: int = json.loads(manager.core.metrics_json())["snapshot"]["unwritten"]
    return count


async def until_written(manager: TaskManager) -> None:
    """Wait, giving the loop its turns, until nothing is unwritten (30 s at most)."""
    deadline = time.monotonic() + 30
    while unwritten(manager):
        assert time.monotonic() < deadline, "never written"
        await asyncio.sleep(0.01)


def test_a_finished_task_is_written_within_moments(tmp_path: Path) -> None:
    # An hour between the periodic writes: only the core's wake can bring this write.
    manager = TaskManager(snapshot_db=str(tmp_path / "tasks.db"), snapshot_interval=3600)

    @manager.task()
    async def quick() -> None: ...

    async def scenario() -> int:
        await manager.startup()
        writer = manager.writer
        assert writer is not None
        writes = writer.writes
        tasks = ManagedBackgroundTasks(manager)
        tasks.add_task(quick)
        await tasks()
        await until_written(manager)
        await manager.shutdown()
        return writer.writes - writes

    assert asyncio.run(scenario()) == 1


def test_a_task_finished_on_another_thread_wakes_the_writer(tmp_path: Path) -> None:
    # A sync endpoint's work runs in a worker thread: the wake must reach the loop from there.
    manager = TaskManager(snapshot_db=str(tmp_path / "tasks.db"), snapshot_interval=3600)

    def finish() -> None:
        task_id = manager.core.create_plain("f", "default", "async")
        manager.core.transition(task_id, "running")
        manager.core.transition(task_id, "success")

    async def scenario() -> None:
        await manager.startup()
        await asyncio.to_thread(finish)
        await until_written(manager)
        await manager.shutdown()

    asyncio.run(scenario())
    assert unwritten(manager) == 0


def test_a_run_of_tasks_is_written_while_it_runs(tmp_path: Path) -> None:
    manager = TaskManager(snapshot_db=str(tmp_path / "tasks.db"), snapshot_interval=3600)
    seen: list[int] = []

    @manager.task()
    async def quick() -> None: ...

    @manager.task()
    async def wait_for_the_write() -> None:
        # Blocks the loop on purpose: only a write started without a loop turn can lower the count.
        deadline = time.monotonic() + 30
        while unwritten(manager) >= WRITE_BEHIND and time.monotonic() < deadline:
            time.sleep(0.01)
        seen.append(unwritten(manager))

    async def scenario() -> None:
        await manager.startup()
        tasks = ManagedBackgroundTasks(manager)
        for _ in range(WRITE_BEHIND):
            tasks.add_task(quick)
        tasks.add_task(wait_for_the_write)
        await tasks()
        await manager.shutdown()

    asyncio.run(scenario())
    assert seen[0] < WRITE_BEHIND
    assert unwritten(manager) == 0


def test_tasks_finished_on_another_thread_are_written_behind(tmp_path: Path) -> None:
    manager = TaskManager(snapshot_db=str(tmp_path / "tasks.db"), snapshot_interval=3600)
    errors: list[BaseException] = []

    def finish_many() -> None:
        try:
            for _ in range(WRITE_BEHIND):
                task_id = manager.core.create_plain("f", "default", "async")
                manager.core.transition(task_id, "running")
                manager.core.transition(task_id, "success")
        except BaseException as exc:  # what the sync endpoint would have raised
            errors.append(exc)

    async def scenario() -> int:
        await manager.startup()
        thread = threading.Thread(target=finish_many)
        thread.start()
        thread.join()  # holding the loop: the writer's own loop cannot write meanwhile
        wait_for(lambda: unwritten(manager) == 0, what="the write behind")
        left = unwritten(manager)
        await manager.shutdown()
        return left

    assert asyncio.run(scenario()) == 0
    assert errors == []


class _Recording:
    """The core, with the writer's calls of ``write_behind`` recorded."""

    def __init__(self, core: Any, calls: list[int | None]) -> None:
        self._core = core
        self._calls = calls

    def write_behind(self, threshold: int | None) -> None:
        self._calls.append(threshold)
        self._core.write_behind(threshold)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._core, name)


def test_no_write_behind_when_each_write_has_a_follower(tmp_path: Path) -> None:
    # With a shared backend, each write is followed by the replication push (``after_write``),
    # which only the writer's own writes call.
    calls: list[int | None] = []
    for follower in (None, lambda: None):
        manager = TaskManager(snapshot_db=str(tmp_path / f"{len(calls)}.db"), snapshot_interval=3600)
        writer = manager.writer
        assert writer is not None
        writer._core = _Recording(manager.core, calls)  # type: ignore[assignment]
        writer.after_write = follower

        async def scenario(manager: TaskManager = manager) -> None:
            await manager.startup()
            await manager.shutdown()

        asyncio.run(scenario())
    assert calls == [WRITE_BEHIND, None, None, None]
