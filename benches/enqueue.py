"""Scenarios 1 and 2: the cost of ``add_task`` and the end-to-end throughput of no-op tasks."""

from __future__ import annotations

import asyncio
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


async def end_to_end_tps(*make_targets: Callable[[], Target], tasks_per_run: int, repeats: int) -> list[list[float]]:
    """Tasks/s of each target's ``repeats`` runs, each of ``tasks_per_run`` no-ops the way requests bring them.

    Each batch of ``BATCH`` tasks is enqueued on a fresh tasks object and then awaited, and
    the event loop gets a turn between batches, as it does between requests: a running
    snapshot writer flushes then, concurrently, in its worker thread. The target is started
    before the clock starts; its ``finish`` (the final flush, when there is a file) is inside
    the timing, so every task is on disk when the clock stops. The targets take turns, one run
    each per repeat, in an order that reverses every repeat (A B, B A, ...): their figures, and
    the ratio of the runs of one repeat, compare runs made under the same load of the machine,
    in the same state of the process, and what a run leaves behind (the kernel writing back a
    file, garbage) falls on the next run of either target as often.
    """
    results: list[list[float]] = [[] for _ in make_targets]
    turns = list(zip(make_targets, results, strict=True))
    for repeat in range(repeats):
        for make_target, runs in turns if repeat % 2 == 0 else turns[::-1]:
            runs.append(await _end_to_end_run(make_target(), tasks_per_run))
    return results


async def _end_to_end_run(target: Target, tasks_per_run: int) -> float:
    await target.start()
    gc.collect()
    start = perf_counter_ns()
    for _ in range(tasks_per_run // BATCH):
        tasks = target.new_tasks()
        add = tasks.add_task
        for _ in range(BATCH):
            add(noop, 1, x=2)
        await tasks()
        await asyncio.sleep(0)
    await target.finish()
    elapsed = perf_counter_ns() - start
    await target.stop()
    target.close()
    return tasks_per_run // BATCH * BATCH / (elapsed / 1e9)
