"""The app the dashboard's end-to-end tests serve under uvicorn (copied into a temporary directory)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from fastapi_taskflow import ManagedBackgroundTasks, QueueConfig, QueueFullError, TaskAdmin, TaskManager, actions
from fastapi_taskflow.dashboard import stream
from fastapi_taskflow.task_logging import task_log

if "TASKFLOW_TEST_STREAM_SECONDS" in os.environ:
    # Streams end this often, so that the browser's own reconnect can be observed.
    stream.MAX_STREAM_SECONDS = float(os.environ["TASKFLOW_TEST_STREAM_SECONDS"])

# TASKFLOW_TEST_QUEUES: queue mode, with a queue small enough to fill from a test.
_queues = (
    {"email": QueueConfig(concurrency=1, max_size=1), "reports": QueueConfig(concurrency=4)}
    if os.environ.get("TASKFLOW_TEST_QUEUES")
    else None
)
task_manager = TaskManager(snapshot_db="tasks.db", queues=_queues)
app = FastAPI()
_auth = os.environ.get("TASKFLOW_TEST_AUTH")
TaskAdmin(
    app,
    task_manager,
    auto_install=True,
    title="Acme tasks",
    auth=tuple(_auth.split(":", 1)) if _auth else None,
    secret_key="test-secret-key" if _auth else None,
)
_gates: dict[str, asyncio.Event] = {}
_stream_requests: list[dict[str, str | None]] = []


@app.middleware("http")
async def record_stream_requests(request: Request, call_next: Any) -> Any:
    if request.url.path.endswith("/dashboard/stream"):
        _stream_requests.append(
            {"last_event_id": request.headers.get("last-event-id"), "after": request.query_params.get("after")}
        )
    return await call_next(request)


@app.get("/debug/stream-requests")
async def stream_requests() -> list[dict[str, str | None]]:
    return _stream_requests


@task_manager.task(retries=1, delay=0.01)
async def send_report(customer: str) -> None:
    task_log(f"report for {customer} sent")


@task_manager.task(retries=2, delay=0.01, backoff=2.0)
async def charge_card(amount: int) -> None:
    raise ValueError(f"card declined for {amount}")


@task_manager.task()
async def wait_for_gate(gate: str) -> None:
    # Stays running until the test opens the gate, so it can watch the change live.
    event = _gates.setdefault(gate, asyncio.Event())
    task_log(f"waiting for gate {gate}")
    await event.wait()
    task_log(f"gate {gate} opened")


@task_manager.task(persist=True)
async def journaled_gate(gate: str) -> None:
    # Like wait_for_gate, but journaled: a killed server leaves it to the next one, which marks it interrupted.
    await _gates.setdefault(gate, asyncio.Event()).wait()


@task_manager.task()
async def flaky(gate: str) -> None:
    # Fails until the test opens the gate, so a retry of it succeeds.
    if not _gates.setdefault(gate, asyncio.Event()).is_set():
        raise RuntimeError(f"gate {gate} is closed")
    task_log(f"gate {gate} was open")


@app.post("/enqueue/{kind}")
async def enqueue(kind: str, tasks: ManagedBackgroundTasks, value: str = "x") -> dict[str, str]:
    if kind == "report":
        task_id = tasks.add_task(send_report, value, tags={"customer": value})
    elif kind == "charge":
        task_id = tasks.add_task(charge_card, 42)
    elif kind == "journaled-gate":
        _gates.setdefault(value, asyncio.Event())
        task_id = tasks.add_task(journaled_gate, value)
    elif kind == "flaky":
        task_id = tasks.add_task(flaky, value, tags={"gate": value})
    else:
        _gates.setdefault(value, asyncio.Event())
        task_id = tasks.add_task(wait_for_gate, value)
    return {"task_id": task_id}


@app.post("/open/{gate}")
async def open_gate(gate: str) -> dict[str, bool]:
    _gates.setdefault(gate, asyncio.Event()).set()
    return {"ok": True}


@app.post("/enqueue-held/{gate}")
async def enqueue_held(gate: str, tasks: ManagedBackgroundTasks) -> StreamingResponse:
    """Adds a task, then holds the response until the gate opens: the task stays pending till then.

    Background tasks start once the response is sent, so a held response is the honest way to
    keep a task pending.
    """
    event = _gates.setdefault(gate, asyncio.Event())
    task_id = tasks.add_task(send_report, gate, tags={"held": gate})

    async def body() -> AsyncIterator[bytes]:
        yield json.dumps({"task_id": task_id}).encode() + b"\n"
        await event.wait()

    return StreamingResponse(body(), media_type="application/x-ndjson")


_real_now_us = actions.now_us


@app.post("/debug/clock-ahead/{seconds}")
async def clock_ahead(seconds: int) -> dict[str, int]:
    """Moves the clock of DELETE /tasks/history forward, so that just-finished tasks count as old."""
    actions.now_us = lambda: _real_now_us() + seconds * 1_000_000
    return {"ahead": seconds}


@app.post("/enqueue-to/{queue}/{gate}")
async def enqueue_to(queue: str, gate: str, tasks: ManagedBackgroundTasks) -> dict[str, str | None]:
    """A wait_for_gate task in ``queue``; ``task_id`` null when the queue is full."""
    _gates.setdefault(gate, asyncio.Event())
    try:
        return {"task_id": tasks.add_task(wait_for_gate, gate, queue=queue)}
    except QueueFullError:
        return {"task_id": None}


if os.environ.get("TASKFLOW_TEST_SCHEDULES"):

    @task_manager.schedule(every=3600, run_on_startup=True)
    async def hourly_digest() -> None:
        task_log("digest sent")

    @task_manager.schedule(cron="0 3 * * *", timezone="Europe/Paris")
    async def nightly_cleanup() -> None:
        task_log("cleaned up")


@app.post("/schedule-once/{run_key}")
async def schedule_once(run_key: str, seconds: float, customer: str = "acme") -> dict[str, str]:
    """Plans ``send_report(customer)`` once, ``seconds`` from now."""
    run_at = datetime.now(timezone.utc) + timedelta(seconds=seconds)
    await task_manager.schedule_once(
        send_report, customer, run_at=run_at, run_key=run_key, tags={"customer": customer}, priority=3
    )
    return {"run_key": run_key, "fire_at": run_at.isoformat()}
