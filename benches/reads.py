"""Scenarios 3 and 4: ``GET /tasks/metrics`` and ``GET /tasks?limit=100`` over a filled store.

Each read is timed twice: the core call alone (``metrics_json``, ``page_json``) and the
FastAPI route, called directly as an ASGI app (no HTTP client, no socket), so the route
numbers are core + FastAPI routing + response, nothing else.
"""

from __future__ import annotations

import os
import tempfile
from time import perf_counter_ns
from typing import TYPE_CHECKING

from timing import latency_us, latency_us_async
from upstream.asgi import asgi_get

if TYPE_CHECKING:
    from fastapi_taskflow import TaskManager
    from fastapi_taskflow._core import TaskStore

#: A few task names: metrics cost O(names), so the store should hold more than one.
NAMES = ("send_email", "resize_image", "sync_crm", "noop")
PAGE_LIMIT = 100
#: ``max_history`` when the history is on disk: the default, so memory keeps the newest 10k.
DISK_MAX_HISTORY = 10_000


def fill(core: TaskStore, n: int) -> float:
    """Create ``n`` finished tasks through the core (1 in 10 failed); return µs per task."""
    start = perf_counter_ns()
    for i in range(n):
        task_id, _ = core.create(NAMES[i % len(NAMES)])
        core.transition(task_id, "running")
        if i % 10 == 9:
            core.transition(task_id, "failed", error="boom")
        else:
            core.transition(task_id, "success")
    return (perf_counter_ns() - start) / n / 1_000


async def _latencies(manager: TaskManager, prefix: str, *, budget_s: float) -> dict[str, float]:
    from fastapi import FastAPI

    from fastapi_taskflow import TaskAdmin

    app = FastAPI()
    TaskAdmin(app, manager)
    core = manager.core
    get_metrics = asgi_get(app, "/tasks/metrics", b"")
    get_page = asgi_get(app, "/tasks", f"limit={PAGE_LIMIT}".encode())
    for get in (get_metrics, get_page):
        if (status := await get()) != 200:
            raise RuntimeError(f"the route answered {status}, the benchmark would time an error page")
    return {
        f"{prefix}.metrics.core": latency_us(core.metrics_json, max_calls=2_000, budget_s=budget_s),
        f"{prefix}.metrics.route": await latency_us_async(get_metrics, max_calls=2_000, budget_s=budget_s),
        f"{prefix}.page.core": latency_us(lambda: core.page_json(limit=PAGE_LIMIT), max_calls=2_000, budget_s=budget_s),
        f"{prefix}.page.route": await latency_us_async(get_page, max_calls=2_000, budget_s=budget_s),
    }


async def empty_route_us(*, budget_s: float) -> float:
    """The floor under every route number: a FastAPI route that returns ``{}``."""
    from fastapi import FastAPI, Response

    app = FastAPI()

    @app.get("/tasks/metrics")
    async def metrics() -> Response:
        return Response(content=b"{}", media_type="application/json")

    return await latency_us_async(asgi_get(app, "/tasks/metrics", b""), max_calls=2_000, budget_s=budget_s)


async def read_scenarios(sizes: tuple[int, ...], *, budget_s: float) -> dict[str, float]:
    """Latencies at each store size, history in memory and then on disk after a flush."""
    from fastapi_taskflow import TaskManager

    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="taskflow-bench-") as tmp:
        for n in sizes:
            memory = TaskManager(max_history=n)
            results[f"fill.{n}"] = fill(memory.core, n)
            results.update(await _latencies(memory, f"mem.{n}", budget_s=budget_s))
            memory.core.close()
            del memory

            disk = TaskManager(snapshot_db=os.path.join(tmp, f"reads-{n}.db"), max_history=DISK_MAX_HISTORY)
            fill(disk.core, n)
            start = perf_counter_ns()
            await disk.flush()
            results[f"flush.{n}"] = (perf_counter_ns() - start) / 1e6
            results.update(await _latencies(disk, f"disk.{n}", budget_s=budget_s))
            disk.core.close()
    return results
