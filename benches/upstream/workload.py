"""One workload, run unchanged in this package's venv and in a venv with ``fastapi-taskflow`` 0.12.1.

Usage: ``python workload.py SCENARIO [options]``; ``compare_upstream.py`` starts one process per
scenario and variant. Which package and core it measures is whatever ``import fastapi_taskflow``
finds (``FASTAPI_TASKFLOW_CORE`` picks our core); ``--bare`` measures Starlette's own
``BackgroundTasks`` instead. Each result is printed as one JSON line as soon as it is known, so
a run cut short by the driver's time limit still reports what it finished.

Written against the shared public API (``TaskManager``, ``ManagedBackgroundTasks``,
``TaskAdmin``, ``startup``/``shutdown``, the ``/tasks`` routes); the two exceptions are in
``adapters.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import adapters
from asgi import asgi_get

#: add_task calls made on one tasks object before a fresh one is taken (like one request's worth, times many).
BATCH = 1_000
#: Tasks run before memory is measured.
WARMUP_TASKS = 25_000


async def noop(*args: object, **kwargs: object) -> None:
    return None


def emit(key: str, **values: Any) -> None:
    print(json.dumps({"key": key, **values}), flush=True)


# -- clocks -------------------------------------------------------------------------------------


async def measure_us(
    call: Callable[[], Awaitable[object]], *, budget_s: float, max_calls: int = 2_000, hard_cap_s: float = 60.0
) -> tuple[float, int]:
    """Median µs of one awaited ``call()`` and the number of calls it is the median of.

    The first call is a warm-up and a probe: a call slower than a fifth of the budget is
    sampled at most 3 times (within ``hard_cap_s``) instead of for the whole budget.
    """
    start = time.perf_counter()
    await call()
    probe = time.perf_counter() - start
    if probe > budget_s / 5:
        samples = [probe]
        while len(samples) < 3 and sum(samples) + probe < hard_cap_s:
            start = time.perf_counter()
            await call()
            samples.append(time.perf_counter() - start)
        return statistics.median(samples) * 1e6, len(samples)
    for _ in range(min(20, int(budget_s / 10 / max(probe, 1e-6)))):
        await call()
    gc.collect()
    samples = []
    deadline = time.perf_counter() + budget_s
    while len(samples) < max_calls and (len(samples) < 5 or time.perf_counter() < deadline):
        start = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e6, len(samples)


# -- what a scenario adds tasks to ------------------------------------------------------------------


def new_manager(*, snapshot_db: str | None = None, keep_in_memory: int | None = None) -> Any:
    from fastapi_taskflow import TaskManager

    kwargs: dict[str, Any] = adapters.manager_kwargs(keep_in_memory)
    if snapshot_db is not None:
        kwargs.update(snapshot_db=snapshot_db, snapshot_interval=1.0)
    manager = TaskManager(**kwargs)
    manager.task(name="noop")(noop)
    return manager


def tasks_factory(bare: bool, manager: Any) -> Callable[[], Any]:
    if bare:
        from starlette.background import BackgroundTasks

        return BackgroundTasks
    from fastapi_taskflow import ManagedBackgroundTasks

    return lambda: ManagedBackgroundTasks(manager)


# -- scenarios -----------------------------------------------------------------------------------


async def add_task(args: argparse.Namespace) -> None:
    """µs per ``add_task(noop, 1, x=2)``: a fresh tasks object every BATCH calls, each batch run untimed."""
    runs = []
    for _ in range(args.repeats):
        manager = None if args.bare else new_manager()
        new_tasks = tasks_factory(args.bare, manager)
        gc.collect()
        elapsed = 0.0
        for _ in range(args.n // BATCH):
            tasks = new_tasks()
            add = tasks.add_task
            start = time.perf_counter()
            for _ in range(BATCH):
                add(noop, 1, x=2)
            elapsed += time.perf_counter() - start
            await tasks()
        runs.append(elapsed / (args.n // BATCH * BATCH) * 1e6)
    emit("add_task", runs=runs)


async def end_to_end(args: argparse.Namespace) -> None:
    """Tasks/s: enqueue N no-ops on one tasks object, ``await tasks()``, then ``shutdown()``.

    ``startup()`` runs before the clock starts (it starts 0.12.1's snapshot scheduler and our
    snapshot writer); ``shutdown()`` is inside the timing, since the final snapshot write is
    part of the work when there is a file. With ``--snapshot``, each repeat runs once in memory
    and once with ``snapshot_db``, back to back, in an order that reverses every repeat: the
    share kept with a file (``e2e.snapshot.kept``, one ratio per repeat) then compares runs made
    under the same load of the machine, in the same state of the process, and what a run leaves
    behind (the kernel writing back a file, garbage) falls on either kind as often.
    """
    with_file = (False, True) if args.snapshot else (False,)
    runs: dict[bool, list[float]] = {snapshot: [] for snapshot in with_file}
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="taskflow-compare-") as tmp:
        for run in range(args.repeats):
            for snapshot in with_file if run % 2 == 0 else with_file[::-1]:
                db = os.path.join(tmp, f"e2e-{run}.db") if snapshot else None
                runs[snapshot].append(await end_to_end_run(args, db))
            if time.perf_counter() - began > args.budget and run >= 2:
                break
    for snapshot, tps in runs.items():
        emit("e2e.snapshot" if snapshot else "e2e", runs=tps)
    if args.snapshot:
        emit("e2e.snapshot.kept", runs=[s / m for m, s in zip(runs[False], runs[True], strict=True)])


async def end_to_end_run(args: argparse.Namespace, snapshot_db: str | None) -> float:
    """Tasks/s of one run, on a new manager (none with ``--bare``) writing to ``snapshot_db`` if given."""
    manager = None
    if not args.bare:
        manager = new_manager(snapshot_db=snapshot_db)
        await manager.startup()
    new_tasks = tasks_factory(args.bare, manager)
    gc.collect()
    start = time.perf_counter()
    tasks = new_tasks()
    for _ in range(args.n):
        tasks.add_task(noop, 1, x=2)
    await tasks()
    if manager is not None:
        await manager.shutdown()
    return args.n / (time.perf_counter() - start)


async def reads(args: argparse.Namespace) -> None:
    """Latency of ``GET /tasks/metrics``, ``add_task`` with a new idempotency key and ``GET /tasks``.

    The store holds ``--n`` finished tasks (filled by the adapter); routes are called as an ASGI
    app directly, so the figures are the package plus FastAPI, with no socket and no client.
    """
    from fastapi import FastAPI

    from fastapi_taskflow import ManagedBackgroundTasks, TaskAdmin

    if args.bare:
        empty = FastAPI()

        @empty.get("/tasks/metrics")
        async def metrics() -> dict[str, int]:
            return {}

        value, calls = await measure_us(asgi_get(empty, "/tasks/metrics"), budget_s=args.budget)
        emit("route.empty", value=value, calls=calls)
        return
    n = args.n
    manager = new_manager(keep_in_memory=n + 10_000)
    start = time.perf_counter()
    adapters.fill_finished(manager, n)
    emit(f"fill.{n}", value=(time.perf_counter() - start) / n * 1e6, calls=n)

    app = FastAPI()
    TaskAdmin(app, manager)
    get_metrics = asgi_get(app, "/tasks/metrics")
    get_tasks = asgi_get(app, "/tasks")

    def checked(get: Callable[[], Awaitable[int]]) -> Callable[[], Awaitable[int]]:
        async def call() -> int:
            status = await get()
            if status != 200:
                raise SystemExit(f"the route answered {status}; the benchmark would time an error page")
            return status

        return call

    value, calls = await measure_us(checked(get_metrics), budget_s=args.budget, hard_cap_s=args.hard_cap)
    emit(f"metrics.{n}", value=value, calls=calls)

    tasks = ManagedBackgroundTasks(manager)
    keys = iter(range(10**9))

    async def add_with_new_key() -> None:
        tasks.add_task(noop, 1, x=2, idempotency_key=f"new-{next(keys)}")

    value, calls = await measure_us(add_with_new_key, budget_s=args.budget, max_calls=1_000, hard_cap_s=args.hard_cap)
    emit(f"idem.{n}", value=value, calls=calls)

    value, calls = await measure_us(checked(get_tasks), budget_s=args.budget, hard_cap_s=args.hard_cap)
    emit(f"tasks.{n}", value=value, calls=calls)


def rss_bytes() -> int:
    """Resident set size of this process (Linux ``/proc``; elsewhere the peak, which only grows here)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


async def memory(args: argparse.Namespace) -> None:
    """Bytes of RSS per finished task, over ``--chunks`` chunks of ``--n`` tasks run through ``add_task``.

    ``--keep``: every finished task stays in memory (ours: ``max_history`` above the total).
    Without it each package runs with its defaults (ours keeps the newest 10,000 finished
    tasks in memory; 0.12.1 keeps all). A warm-up of WARMUP_TASKS runs first, enough to fill our
    event ring (65,536 events, 3 per task) and so leave its fixed size out of the per-task figure.
    """
    total = WARMUP_TASKS + args.n * args.chunks
    manager = new_manager(keep_in_memory=total if args.keep else None)
    from fastapi_taskflow import ManagedBackgroundTasks

    async def run(count: int) -> None:
        for _ in range(count // 500):
            tasks = ManagedBackgroundTasks(manager)
            for _ in range(500):
                tasks.add_task(noop, 1, x=2)
            await tasks()

    await run(WARMUP_TASKS)
    per_task = []
    for _ in range(args.chunks):
        gc.collect()
        before = rss_bytes()
        await run(args.n)
        gc.collect()
        per_task.append((rss_bytes() - before) / args.n)
    emit("memory.kept" if args.keep else "memory.default", runs=per_task)


SCENARIOS = {"add_task": add_task, "e2e": end_to_end, "reads": reads, "memory": memory}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("scenario", choices=[*SCENARIOS, "meta"])
    parser.add_argument("--n", type=int, default=10_000, help="calls, tasks or store size")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chunks", type=int, default=3)
    parser.add_argument("--budget", type=float, default=1.0, help="seconds of sampling per figure")
    parser.add_argument("--hard-cap", type=float, default=60.0, help="seconds, for the slowest single figures")
    parser.add_argument("--bare", action="store_true", help="Starlette's BackgroundTasks, no fastapi_taskflow")
    parser.add_argument("--snapshot", action="store_true", help="e2e: each repeat in memory, then with snapshot_db")
    parser.add_argument("--keep", action="store_true", help="memory: keep every finished task in memory")
    parser.add_argument("--expect", help="fail unless fastapi_taskflow is this variant (upstream, rust, python)")
    args = parser.parse_args()
    if not args.bare:
        facts = adapters.describe()
        if args.expect and facts["variant"] != args.expect:
            raise SystemExit(f"expected the {args.expect} variant, fastapi_taskflow is {facts}")
        if args.scenario == "meta":
            emit("meta", **facts)
            return
    asyncio.run(SCENARIOS[args.scenario](args))


if __name__ == "__main__":
    main()
