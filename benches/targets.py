"""What the enqueue workloads add tasks to: bare Starlette or a ``TaskManager`` of the selected core."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.background import BackgroundTasks

#: Name under which the managed no-op is registered and shows up in the store.
NOOP_NAME = "noop"

#: ``snapshot_interval`` of the end-to-end runs with a file: the periodic writer runs often.
SNAPSHOT_INTERVAL = 0.05


async def noop(*args: object, **kwargs: object) -> None:
    return None


async def _nothing() -> None:
    return None


@dataclass(frozen=True)
class Target:
    """One fresh set of objects under test; ``new_tasks`` makes a tasks object like a request gets."""

    new_tasks: Callable[[], BackgroundTasks]
    #: Finish every task of a batch without running it, so the store stays at its steady size (untimed).
    retire: Callable[[BackgroundTasks], None]
    #: Start what an application starts with (the periodic snapshot writer), before the clock.
    start: Callable[[], Awaitable[object]]
    #: Work that belongs to the measured run after the tasks ran (the final snapshot flush).
    finish: Callable[[], Awaitable[object]]
    #: Stop what ``start`` started, after the clock.
    stop: Callable[[], Awaitable[object]]
    close: Callable[[], None]


def bare() -> Target:
    return Target(
        new_tasks=BackgroundTasks,
        retire=lambda tasks: None,
        start=_nothing,
        finish=_nothing,
        stop=_nothing,
        close=lambda: None,
    )


def managed(snapshot_db: str | None = None, *, journal: bool = False) -> Target:
    """A new ``TaskManager`` with ``noop`` registered; the core is the one ``_selected`` picked.

    With a file, ``start`` runs the manager's lifespan startup, so the periodic snapshot writer
    flushes concurrently while tasks run, as in an application. ``journal`` turns on
    ``requeue_pending``: every task is journaled, and marked running on disk before it runs.
    """
    from fastapi_taskflow import ManagedBackgroundTasks, TaskManager

    manager = TaskManager(snapshot_db=snapshot_db, snapshot_interval=SNAPSHOT_INTERVAL, requeue_pending=journal)
    manager.task(name=NOOP_NAME)(noop)
    core = manager.core

    def retire(tasks: BackgroundTasks) -> None:
        for task in tasks.tasks:
            task_id: str = getattr(task, "task_id")  # noqa: B009 - TrackedTask, typed as BackgroundTask
            core.transition(task_id, "running")
            core.transition(task_id, "success")

    return Target(
        new_tasks=lambda: ManagedBackgroundTasks(manager),
        retire=retire,
        start=manager.startup,
        finish=manager.flush,
        stop=manager.shutdown,
        close=core.close,
    )
