"""Scenarios 1 and 2: the cost of ``add_task`` and the end-to-end throughput of no-op tasks."""

from __future__ import annotations

import gc
from collections.abc import Callable
from time import perf_counter_ns

from targets import Target, noop
from timing import median

#: Calls made on one tasks object before a fresh one is taken, so its list stays small.
BATCH = 1_000


def add_task_us(make_target: Callable[[], Target], *, calls: int, repeats: int) -> float:
    """Median over ``repeats`` of the mean µs of ``tasks.add_task(noop, 1, x=2)``."""
    results: list[float] = []
    for _ in range(repeats):
        target = make_target()
        gc.collect()
        elapsed = 0
        for _ in range(calls // BATCH):
            tasks = target.new_tasks()
            add = tasks.add_task
            start = perf_counter_ns()
            for _ in range(BATCH):
                add(noop, 1, x=2)
            elapsed += perf_counter_ns() - start
            target.retire(tasks)
        target.close()
        results.append(elapsed / (calls // BATCH * BATCH) / 1_000)
    return median(results)


async def end_to_end_tps(make_target: Callable[[], Target], *, tasks_per_run: int, repeats: int) -> float:
    """Median tasks/s of enqueuing ``tasks_per_run`` no-ops on one tasks object, then ``await tasks()``.

    The target's ``finish`` (the snapshot flush, when there is a file) is inside the timing.
    """
    results: list[float] = []
    for _ in range(repeats):
        target = make_target()
        gc.collect()
        start = perf_counter_ns()
        tasks = target.new_tasks()
        for _ in range(tasks_per_run):
            tasks.add_task(noop, 1, x=2)
        await tasks()
        await target.finish()
        elapsed = perf_counter_ns() - start
        target.close()
        results.append(tasks_per_run / (elapsed / 1e9))
    return median(results)
