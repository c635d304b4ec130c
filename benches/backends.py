"""Section 8 of ``make bench``: enqueue and completion throughput on each shared backend.

Usage: ``python benches/backends.py [--quick] [--json]`` (or ``python benches/run.py --only
backends``). For the local SQLite file alone and for Redis, PostgreSQL and MySQL/MariaDB (the
servers the backend tests use: ``TASKFLOW_REDIS_URL``, ``TASKFLOW_POSTGRES_URL``,
``TASKFLOW_MYSQL_URL``, or their local defaults), a ``TaskManager`` is started as an app's
lifespan starts it and runs no-op async tasks the way requests bring them:

- **enqueue**: each "request" adds 100 tasks through ``ManagedBackgroundTasks.add_task`` and then
  awaits ``manager.writer.durable()``, the group commit its response waits for. The clock runs
  over those two steps only, summed over the requests. The tasks of earlier requests run
  meanwhile (the loop runs them while a request waits for its commit), so this is the rate at
  which a busy instance accepts tasks, not ``add_task`` alone.
- **completion**: after its commit, each request's tasks start (``await tasks()`` in a task of
  its own: a server runs them after the response while it serves the next request), and the loop
  gets a turn before the next request. The clock runs from the first ``add_task`` until every
  task is finished *and* its finished row is where other readers see it: in the backend
  (``count_by_status()``, polled every 10 ms on a connection of its own), or, with SQLite alone,
  in the file: the group commit that starts after the last task finished has written it.
- **read**: after the last run, 10,000 finished tasks of other instances are written straight
  into the backend, and ``GET /tasks?limit=100`` is sent to the app (ASGI, no socket): this
  instance's page merged with the backend's. With SQLite alone, the 10,000 tasks are created
  through the core and written to the file.

Every run gets a fresh namespace on the server (a key prefix, a schema, a database) and a fresh
file, dropped afterwards. A server that does not answer is reported as not reachable.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import json
import os
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter_ns
from types import ModuleType
from typing import TYPE_CHECKING, Any

from targets import NOOP_NAME, SNAPSHOT_INTERVAL, noop
from timing import latency_us_async, median
from upstream.asgi import asgi_get, get_scope

if TYPE_CHECKING:
    from fastapi_taskflow import TaskManager
    from fastapi_taskflow.backends import SharedBackend

HERE = Path(__file__).resolve().parent
#: Where ``services.py`` (the servers and their namespaces) and ``rows.py`` of the backend tests live.
TEST_BACKENDS = HERE.parent / "tests" / "backends"

#: Kinds in table order: the local file alone, then the shared backends of ``services.KINDS``.
KINDS = ("sqlite", "redis", "postgres", "mysql")
LABELS = {"sqlite": "SQLite file alone", "redis": "Redis", "postgres": "PostgreSQL", "mysql": "MySQL / MariaDB"}
#: Tasks per "request".
BATCH = 100
PAGE_LIMIT = 100
#: Seconds between two looks at the backend while waiting for the finished rows.
POLL_INTERVAL = 0.01
#: Seconds a run may wait for its finished rows before it counts as failed.
POLL_TIMEOUT = 30.0
#: Lease and heartbeat of the manager (``registry_ttl``, ``registry_heartbeat``).
REGISTRY_TTL = 30
REGISTRY_HEARTBEAT = 5


@dataclass(frozen=True)
class Scale:
    tasks_per_run: int
    runs: int
    read_rows: int
    read_budget_s: float


FULL = Scale(tasks_per_run=10_000, runs=5, read_rows=10_000, read_budget_s=1.0)
QUICK = Scale(tasks_per_run=1_000, runs=1, read_rows=1_000, read_budget_s=0.1)


def _test_module(name: str) -> ModuleType:
    """``services`` or ``rows`` of the backend tests (they import nothing from the test package)."""
    if str(TEST_BACKENDS) not in sys.path:
        sys.path.insert(0, str(TEST_BACKENDS))
    return importlib.import_module(name)


@dataclass
class Run:
    """One manager on a fresh file and namespace (none for SQLite alone), and a reader of the backend."""

    kind: str
    manager: TaskManager
    space: Any  # services.Namespace, or None for SQLite alone
    reader: SharedBackend | None

    async def stored_successes(self) -> int:
        """The finished (success) rows in the backend, as another instance sees them."""
        assert self.reader is not None
        return (await self.reader.count_by_status())["success"]


async def _open_run(kind: str, tmp: str) -> Run:
    from fastapi_taskflow import TaskManager

    space = None
    options: dict[str, Any] = {}
    if kind != "sqlite":
        space = _test_module("services").Namespace.fresh(kind)
        await space.create()
        options["snapshot_backend"] = space.backend()
    db_path = os.path.join(tmp, f"{kind}-{uuid.uuid4().hex[:8]}.db")
    try:
        manager = TaskManager(
            snapshot_db=db_path,
            snapshot_interval=SNAPSHOT_INTERVAL,
            registry_ttl=REGISTRY_TTL,
            registry_heartbeat=REGISTRY_HEARTBEAT,
            **options,
        )
        # With a shared backend every task is journaled; alone, persist=True journals it the same way.
        manager.task(name=NOOP_NAME, persist=space is None)(noop)
        reader = None
        if space is not None:
            reader = space.backend()
            await reader.open()
    except BaseException:
        if space is not None:
            await space.drop()
        raise
    return Run(kind, manager, space, reader)


async def _close_run(run: Run) -> None:
    try:
        await run.manager.shutdown()
        run.manager.core.close()
        if run.reader is not None:
            await run.reader.close()
    finally:
        if run.space is not None:
            await run.space.drop()


async def _throughput(run: Run, tasks_per_run: int) -> tuple[float, float]:
    """(enqueue tasks/s, completion tasks/s) of one run; see the module's docstring."""
    from fastapi_taskflow import ManagedBackgroundTasks

    manager = run.manager
    writer = manager.writer
    assert writer is not None  # a snapshot file is always given
    requests = tasks_per_run // BATCH
    running: list[asyncio.Task[None]] = []
    gc.collect()
    enqueue_ns = 0
    start = perf_counter_ns()
    for _ in range(requests):
        accepted = perf_counter_ns()
        tasks = ManagedBackgroundTasks(manager)
        add = tasks.add_task
        for _ in range(BATCH):
            add(noop, 1, x=2)
        await writer.durable()
        enqueue_ns += perf_counter_ns() - accepted
        # After the response, the server runs the request's tasks while it serves the next request.
        running.append(asyncio.create_task(tasks()))
        await asyncio.sleep(0)
    await asyncio.gather(*running)
    expected = requests * BATCH
    if run.reader is None:
        # The write that starts after the last task finished holds every finished row. (The file is
        # not polled: Python's sqlite3 in this process would not see the core's SQLite locks.)
        if not await writer.durable():
            raise RuntimeError("the snapshot write failed")
    else:
        deadline = time.monotonic() + POLL_TIMEOUT
        while (stored := await run.stored_successes()) < expected:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{stored} of {expected} finished rows stored after {POLL_TIMEOUT:.0f} s")
            await asyncio.sleep(POLL_INTERVAL)
    elapsed = perf_counter_ns() - start
    return expected / (enqueue_ns / 1e9), expected / (elapsed / 1e9)


async def _add_other_rows(run: Run, n: int) -> None:
    """``n`` finished tasks besides this instance's own, created over the last ``n`` ms."""
    now_us = time.time_ns() // 1_000
    if run.reader is None:
        from reads import fill

        fill(run.manager.core, n)
        await run.manager.flush()
        return
    finished = _test_module("rows").finished
    other = uuid.uuid4().hex
    rows = [
        finished(uuid.uuid4().hex, created_us=now_us - 1_000 * i, end_us=now_us - 1_000 * i + 100, owner=other)
        for i in range(n)
    ]
    for i in range(0, n, 1_000):
        await run.reader.upsert(rows[i : i + 1_000])


async def _page_size(app: Any) -> int:
    """The number of tasks one ``GET /tasks?limit=100`` lists (its status must be 200)."""
    scope = get_scope("/tasks", f"limit={PAGE_LIMIT}".encode())
    status, body = 0, b""

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, body
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            body += message.get("body", b"")

    await app(scope, receive, send)
    if status != 200:
        raise RuntimeError(f"GET /tasks answered {status}, the benchmark would time an error page")
    return len(json.loads(body))


async def _read_us(run: Run, *, rows: int, budget_s: float) -> float:
    """Median µs of ``GET /tasks?limit=100`` with ``rows`` more finished tasks stored.

    The page is checked to be full before, and the backend to still hold every row after: a
    server restarted meanwhile (and empty) would answer faster than it can with the rows.
    """
    from fastapi import FastAPI

    from fastapi_taskflow import TaskAdmin

    await _add_other_rows(run, rows)
    stored = (await run.reader.count_by_status())["success"] if run.reader is not None else 0
    app = FastAPI()
    TaskAdmin(app, run.manager)
    if (listed := await _page_size(app)) != PAGE_LIMIT:
        raise RuntimeError(f"GET /tasks listed {listed} tasks, not a full page of {PAGE_LIMIT}")
    median_us = await latency_us_async(
        asgi_get(app, "/tasks", f"limit={PAGE_LIMIT}".encode()), max_calls=1_000, budget_s=budget_s
    )
    if run.reader is not None and (still := (await run.reader.count_by_status())["success"]) != stored:
        raise RuntimeError(f"the backend held {stored} finished rows before the reads and {still} after")
    return median_us


async def measure(kind: str, scale: Scale, tmp: str) -> dict[str, float]:
    """Median enqueue and completion tasks/s over ``scale.runs`` runs, and the read latency after the last."""
    enqueued: list[float] = []
    completed: list[float] = []
    results: dict[str, float] = {}
    for number in range(scale.runs):
        run = await _open_run(kind, tmp)
        try:
            await run.manager.startup()
            enqueue, completion = await _throughput(run, scale.tasks_per_run)
            enqueued.append(enqueue)
            completed.append(completion)
            if number == scale.runs - 1:
                results["read_us"] = await _read_us(run, rows=scale.read_rows, budget_s=scale.read_budget_s)
        finally:
            await _close_run(run)
    results["enqueue"] = median(enqueued)
    results["completion"] = median(completed)
    return results


async def measure_all(scale: Scale) -> dict[str, dict[str, Any]]:
    """Per kind: the numbers, or ``{"unreachable": why}``, or ``{"failed": what}``."""
    services = _test_module("services")
    report: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="taskflow-bench-backends-") as tmp:
        for kind in KINDS:
            started = time.monotonic()
            if kind != "sqlite" and (why := await services.unreachable(kind)) is not None:
                report[kind] = {"unreachable": why}
            else:
                try:
                    report[kind] = await measure(kind, scale, tmp)
                except Exception as exc:
                    traceback.print_exc()
                    if kind != "sqlite" and (why := await services.unreachable(kind)) is not None:
                        report[kind] = {"unreachable": f"stopped answering during the run: {why}"}
                    else:
                        report[kind] = {"failed": f"{type(exc).__name__}: {exc}"}
            print(f"backends: {kind}: {time.monotonic() - started:.0f} s", file=sys.stderr)
    return report


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def render(report: Mapping[str, Mapping[str, Any]] | None, scale: Scale = FULL, core: str = "rust") -> str:
    """Section 8 as Markdown: one row per backend, then what was timed and what was not measured."""
    title = (
        f"### 8. Shared backends, {core.capitalize()} core: {scale.tasks_per_run:,} no-op async tasks in "
        f"requests of {BATCH}, each response after the group commit"
    )
    head = [
        "Backend",
        "enqueue, tasks/s",
        "completion (run, finished rows stored), tasks/s",
        f"`GET /tasks?limit={PAGE_LIMIT}` with {scale.read_rows:,} more finished tasks stored, median µs",
    ]
    lines = [title, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes: list[str] = []
    for kind in KINDS:
        entry = (report or {}).get(kind)
        if entry is None:
            cells = ["n/a", "n/a", "n/a"]
        elif "unreachable" in entry:
            cells = ["not reachable", "", ""]
            notes.append(f"{LABELS[kind]} ({entry['unreachable']})")
        elif "failed" in entry:
            cells = ["failed", "", ""]
            notes.append(f"{LABELS[kind]} (failed: {entry['failed']})")
        else:
            cells = [_rate(entry.get(key)) for key in ("enqueue", "completion", "read_us")]
        lines.append("| " + " | ".join([LABELS[kind], *cells]) + " |")
    method = (
        f"Median of {scale.runs} runs, each with a fresh local file and a fresh namespace on the server (Redis key "
        "prefix, PostgreSQL schema, MySQL database; the servers of the backend tests, `TASKFLOW_*_URL`, by "
        "default on this machine and sharing its CPUs); the manager started as a lifespan starts it, "
        f"`snapshot_interval` = {SNAPSHOT_INTERVAL} s, `registry_ttl` = {REGISTRY_TTL}, "
        f"`registry_heartbeat` = {REGISTRY_HEARTBEAT}. With SQLite alone the task is registered with "
        "`persist=True`, so it is journaled as every task is with a shared backend. "
        f"Enqueue: each request is {BATCH} `add_task(noop, 1, x=2)` calls then `await manager.writer.durable()` "
        "(the local group commit its response waits for); only those two steps are timed, summed over the "
        "requests, while the tasks of earlier requests run. Completion: after its commit each request's "
        "tasks start (`await tasks()` in an asyncio task, as a server runs them after the response while "
        "it serves the next request); timed from the first `add_task` until every task has run and its "
        "finished row is in the backend (`count_by_status()` polled every 10 ms on a connection of its "
        "own) or, SQLite alone, in the file (until the `durable()` commit that starts after the last task "
        "finished). Read: after the last run, finished tasks of other instances "
        "written straight into the backend (SQLite alone: created through the core and flushed), then "
        "`GET /tasks` sent to the app as ASGI: this instance's page merged with the backend's."
    )
    blocks = ["\n".join(lines), method]
    if notes:
        blocks.append("Not measured: " + "; ".join(notes) + ".")
    return "\n\n".join(blocks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    parser.add_argument("--json", action="store_true", help="print the results as JSON (for run.py) instead")
    args = parser.parse_args()
    from fastapi_taskflow import _selected

    scale = QUICK if args.quick else FULL
    report = asyncio.run(measure_all(scale))
    if args.json:
        print(json.dumps({"meta": {"core": _selected.CORE_NAME}, "results": report}))
    else:
        print(render(report, scale, _selected.CORE_NAME))


if __name__ == "__main__":
    main()
