"""Scenario 7: what observability costs: an enqueue with tags or encryption, and ``task_log``."""

from __future__ import annotations

import gc
from collections.abc import Awaitable, Callable
from time import perf_counter_ns
from typing import Any

from targets import NOOP_NAME, noop
from timing import median

#: Enqueues per tasks object (then run untimed, so the store stays at a steady size).
BATCH = 1_000
#: ``task_log`` calls made inside one task.
LOG_CALLS = 10_000


def _manager(**options: Any) -> Any:
    from fastapi_taskflow import TaskManager

    manager = TaskManager(**options)
    manager.task(name=NOOP_NAME)(noop)
    return manager


async def _enqueue_us(manager: Any, enqueue: Callable[[Any], object], calls: int) -> float:
    from fastapi_taskflow import ManagedBackgroundTasks

    elapsed = 0
    for _ in range(calls // BATCH):
        tasks = ManagedBackgroundTasks(manager)
        start = perf_counter_ns()
        for _ in range(BATCH):
            enqueue(tasks)
        elapsed += perf_counter_ns() - start
        await tasks()
    return elapsed / (calls // BATCH * BATCH) / 1_000


async def _task_log_us(manager: Any) -> float:
    from fastapi_taskflow import ManagedBackgroundTasks, task_log

    timings: list[int] = []

    @manager.task(name="chatty")
    async def chatty() -> None:
        start = perf_counter_ns()
        for n in range(LOG_CALLS):
            task_log("processed row", level="info", row=n)
        timings.append(perf_counter_ns() - start)

    tasks = ManagedBackgroundTasks(manager)
    tasks.add_task(chatty)
    await tasks()
    return timings[0] / LOG_CALLS / 1_000


async def observability_costs(*, calls: int, repeats: int) -> dict[str, float]:
    """Median µs per call of each variant, each on a fresh manager per repeat."""
    from cryptography.fernet import Fernet

    variants: dict[str, Callable[[], Awaitable[float]]] = {
        "obs.plain": lambda: _enqueue_us(_manager(), lambda t: t.add_task(noop, 1, x=2), calls),
        "obs.tags": lambda: _enqueue_us(
            _manager(), lambda t: t.add_task(noop, 1, x=2, tags={"tenant": "acme", "plan": "pro"}), calls
        ),
        "obs.encrypted": lambda: _enqueue_us(
            _manager(encrypt_args_key=Fernet.generate_key()), lambda t: t.add_task(noop, 1, x=2), calls
        ),
        "obs.task_log": lambda: _task_log_us(_manager()),
    }
    results: dict[str, float] = {}
    for key, measure in variants.items():
        runs = []
        for _ in range(repeats):
            gc.collect()
            runs.append(await measure())
        results[key] = median(runs)
    return results
