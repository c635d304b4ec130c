"""One instance of the multi-instance tests: ``uvicorn app:app``, configured by environment variables.

``cluster.py`` starts several of these on free ports, each with its own local journal,
all on one namespace of a shared server (``TASKFLOW_MULTI_KIND`` empty: no shared
backend, a plain single instance). Every task function appends ``task_id,label,instance``
to one results file shared by all instances, in one ``O_APPEND`` write, so that the tests
can count, across processes, how many times each task ran and where.

Variables: ``TASKFLOW_MULTI_KIND`` (redis, postgres, mysql or empty), ``TASKFLOW_MULTI_URL``,
``TASKFLOW_MULTI_NAMESPACE``, ``TASKFLOW_MULTI_DB`` (this instance's journal),
``TASKFLOW_MULTI_RESULTS``, ``TASKFLOW_MULTI_INSTANCE`` (a name for the results lines),
``TASKFLOW_MULTI_SLOW_CONCURRENCY`` (of queue "slow", default 2) and
``TASKFLOW_MULTI_TICKS=1`` (adds the every-second schedule ``tick``).
"""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import datetime, timedelta, timezone
from typing import Literal

from fastapi import BackgroundTasks, FastAPI
from services import Namespace

from fastapi_taskflow import QueueConfig, TaskAdmin, TaskManager, get_task_context

#: Seconds an instance that stopped heartbeating counts as alive (its lease).
REGISTRY_TTL = 3.0
#: Seconds between two heartbeats of an instance.
REGISTRY_HEARTBEAT = 1.0

# The library's own log lines (a claim lost, a backend down) go to the instance's log file.
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")

KIND = os.environ.get("TASKFLOW_MULTI_KIND", "")
RESULTS = os.environ["TASKFLOW_MULTI_RESULTS"]
INSTANCE = os.environ.get("TASKFLOW_MULTI_INSTANCE", str(os.getpid()))

backend = (
    Namespace(KIND, os.environ["TASKFLOW_MULTI_URL"], os.environ["TASKFLOW_MULTI_NAMESPACE"]).backend()
    if KIND
    else None
)
task_manager = TaskManager(
    snapshot_db=os.environ["TASKFLOW_MULTI_DB"],
    snapshot_backend=backend,
    snapshot_interval=0.2,
    registry_ttl=REGISTRY_TTL,
    registry_heartbeat=REGISTRY_HEARTBEAT,
    queues={"slow": QueueConfig(concurrency=int(os.environ.get("TASKFLOW_MULTI_SLOW_CONCURRENCY", "2")))},
)
app = FastAPI()
TaskAdmin(app, task_manager, auto_install=True)


def append_result(label: str) -> None:
    """One line ``task_id,label,instance`` for the running task, in one O_APPEND write (whole lines only)."""
    context = get_task_context()
    task_id = context.task_id if context is not None else "-"
    fd = os.open(RESULTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{task_id},{label},{INSTANCE}\n".encode())
    finally:
        os.close(fd)


@task_manager.task()
async def record(label: str, sleep: float = 0.0) -> None:
    """Note this run, then sleep ``sleep`` seconds."""
    append_result(label)
    if sleep > 0:
        await asyncio.sleep(sleep)


@task_manager.task(persist=True, queue="slow")
async def slow(label: str, sleep: float = 0.5) -> None:
    """Note this run as soon as it starts (a run cut short still shows), then sleep in the limited queue."""
    append_result(label)
    await asyncio.sleep(sleep)


if os.environ.get("TASKFLOW_MULTI_TICKS") == "1":

    @task_manager.schedule(every=1)
    async def tick() -> None:
        """Label the run with the whole second it was fired in: two firings of one tick share a label."""
        context = get_task_context()
        stored = task_manager.get_task(context.task_id) if context is not None else None
        fired_at = stored.created_at if stored is not None else datetime.now(timezone.utc)
        append_result(f"tick-{int(fired_at.timestamp())}")


FUNCTIONS = {"record": record, "slow": slow}


@app.get("/ready")
async def ready() -> dict[str, object]:
    return {"instance": INSTANCE, "pid": os.getpid()}


@app.post("/enqueue")
async def enqueue(
    label: str,
    background_tasks: BackgroundTasks,
    key: str | None = None,
    sleep: float = 0.0,
    func: Literal["record", "slow"] = "record",
) -> dict[str, str]:
    """Add one task of ``func`` (tagged with its label), with ``key`` as its idempotency key if given."""
    task_id: str = background_tasks.add_task(
        FUNCTIONS[func], label, sleep=sleep, idempotency_key=key or None, tags={"label": label}
    )
    return {"task_id": task_id}


@app.post("/schedule_once")
async def schedule_once(label: str, delay: float) -> dict[str, str]:
    """Run ``record(label)`` once, ``delay`` seconds from now (run key ``once-<label>``)."""
    run_key = f"once-{label}"
    await task_manager.schedule_once(
        record,
        label,
        run_at=datetime.now(timezone.utc) + timedelta(seconds=delay),
        run_key=run_key,
        tags={"label": label},
    )
    return {"run_key": run_key}
