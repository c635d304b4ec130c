"""Two managers in this process, each with its own local journal, sharing one real backend.

What an instance behind a load balancer relies on: every instance lists and serves
the tasks of all; one idempotency key runs once across instances; one-off runs live
in the backend and fire once; a backend that is away stops nothing and loses nothing.
(Real processes killed with SIGKILL are in ``tests/multi``.)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from fastapi_taskflow import TaskAdmin, TaskManager
from fastapi_taskflow.backends import RedisBackend

from .conftest import isolated
from .services import Namespace

pytestmark = pytest.mark.anyio


async def until(condition: Callable[[], Any], what: str, timeout: float = 20.0) -> None:
    """Poll ``condition`` (a coroutine function or a plain one) on the loop until it is true."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        assert asyncio.get_running_loop().time() < deadline, f"{what} not reached within {timeout} s"
        await asyncio.sleep(0.05)


@asynccontextmanager
async def instance(manager: TaskManager) -> AsyncIterator[httpx.AsyncClient]:
    """The manager started as an app's lifespan would, and an HTTP client for its routes."""
    app = FastAPI()
    TaskAdmin(app, manager)
    await manager.startup()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as client:
            yield client
    finally:
        await manager.shutdown()


def make_manager(namespace: Namespace, tmp_path: Path, name: str, **options: Any) -> TaskManager:
    return TaskManager(
        snapshot_db=str(tmp_path / f"{name}.db"),
        snapshot_backend=namespace.backend(),
        snapshot_interval=0.1,
        registry_ttl=3,
        registry_heartbeat=1,
        **options,
    )


async def listed_ids(client: httpx.AsyncClient, **params: str) -> set[str]:
    response = await client.get("/tasks", params=params)
    assert response.status_code == 200
    return {record["task_id"] for record in response.json()}


async def test_each_instance_lists_and_serves_the_tasks_of_both(namespace: Namespace, tmp_path: Path) -> None:
    a, b = make_manager(namespace, tmp_path, "a"), make_manager(namespace, tmp_path, "b")
    for manager in (a, b):

        @manager.task(name="work")
        async def work(n: int) -> None:
            return None

    async with instance(a) as client_a, instance(b) as client_b:
        from_a = {a.submit(a.spec_named("work"), (n,), {}) for n in range(3)}  # type: ignore[arg-type]
        from_b = {b.submit(b.spec_named("work"), (n,), {}) for n in range(2)}  # type: ignore[arg-type]
        everything = from_a | from_b
        await until(lambda: _all_in(client_a, everything), "A listing all five")
        await until(lambda: _all_in(client_b, everything), "B listing all five")
        # Pages hold together across the merge: two pages of 3 and 2, newest first, no repeat.
        first = await client_b.get("/tasks", params={"name": "work", "limit": 3})
        cursor = first.headers["x-next-cursor"]
        second = await client_b.get("/tasks", params={"name": "work", "limit": 3, "cursor": cursor})
        paged = [r["task_id"] for r in first.json()] + [r["task_id"] for r in second.json()]
        assert sorted(paged) == sorted(everything)
        created = [r["created_at"] for r in first.json() + second.json()]
        assert created == sorted(created, reverse=True)
        # A task of A, served by B from the backend, finished.
        one = next(iter(from_a))
        await until(lambda: _has_status(client_b, one, "success"), "B serving A's finished task")
        metrics = (await client_b.get("/tasks/metrics")).json()
        assert metrics["backend"]["ok"] is True and metrics["backend"]["kind"] == namespace.kind


async def _all_in(client: httpx.AsyncClient, wanted: set[str]) -> bool:
    return wanted <= await listed_ids(client, name="work")


async def _has_status(client: httpx.AsyncClient, task_id: str, status: str) -> bool:
    response = await client.get(f"/tasks/{task_id}")
    return response.status_code == 200 and response.json()["status"] == status


async def test_one_idempotency_key_runs_once_across_instances(namespace: Namespace, tmp_path: Path) -> None:
    ran: list[str] = []
    managers = [make_manager(namespace, tmp_path, name) for name in ("a", "b", "c")]
    for index, manager in enumerate(managers):

        @manager.task(name="charge")
        async def charge(order: str, where: int = index) -> None:
            await asyncio.sleep(0.05)
            ran.append(f"{order}@{where}")

    async with instance(managers[0]) as client, instance(managers[1]), instance(managers[2]):
        from fastapi_taskflow import ManagedBackgroundTasks

        ids = []
        for _ in range(4):
            for manager in managers:
                tasks = ManagedBackgroundTasks(manager)
                ids.append(tasks.add_task(manager.spec_named("charge").func, "order-1", idempotency_key="order-1"))  # type: ignore[union-attr]
                asyncio.get_running_loop().create_task(tasks())
        await until(lambda: _all_finished(client, set(ids)), "every accepted task finished")
        assert len(ran) == 1, ran
        # The duplicates say why they did not run.
        details = [(await client.get(f"/tasks/{task_id}")).json() for task_id in set(ids)]
        skipped = [d for d in details if any("idempotency key" in line for line in d["logs"])]
        assert len(skipped) == len(set(ids)) - 1


async def _all_finished(client: httpx.AsyncClient, ids: set[str]) -> bool:
    return all([await _has_status(client, task_id, "success") for task_id in ids])


async def test_a_one_off_saved_on_one_instance_fires_once_on_another(namespace: Namespace, tmp_path: Path) -> None:
    ran: list[str] = []
    a, b = make_manager(namespace, tmp_path, "a"), make_manager(namespace, tmp_path, "b")

    @a.task(name="report")
    async def report_a(customer: str) -> None:
        ran.append(f"a:{customer}")

    @b.task(name="report")
    async def report_b(customer: str) -> None:
        ran.append(f"b:{customer}")

    async with instance(a):
        await a.schedule_once(report_a, "acme", run_at=datetime.now(timezone.utc) + timedelta(days=1), run_key="r1")
    assert ran == []  # A stopped before it was due
    async with instance(b) as client_b:
        listed = await b.list_scheduled()
        assert [once.run_key for once in listed] == ["r1"]
        await b.schedule_once(report_b, "acme", run_at=datetime.now(timezone.utc), run_key="r1")  # due now
        await until(lambda: ran == ["b:acme"], "the one-off fired on B")
        assert await b.list_scheduled() == []
        body = (await client_b.get("/tasks", params={"name": "report"})).json()
        assert [record["source"] for record in body] == ["scheduled"]


async def test_an_unreachable_backend_stops_nothing_and_loses_nothing(tmp_path: Path) -> None:
    # One backend kind is enough here: the outbox and its replicator are the same for all.
    async with isolated("redis") as namespace:
        await _outage(namespace, tmp_path)


async def _outage(namespace: Namespace, tmp_path: Path) -> None:
    ran: list[int] = []
    # A port nobody listens on: the backend is away from the start.
    away = TaskManager(
        snapshot_db=str(tmp_path / "a.db"),
        snapshot_backend=RedisBackend("redis://127.0.0.1:1/0", prefix=f"taskflow-test:{namespace.name}"),
        snapshot_interval=0.1,
        registry_ttl=3,
        registry_heartbeat=1,
    )

    @away.task(name="work")
    async def work(n: int) -> None:
        ran.append(n)

    async with instance(away) as client:
        for n in range(5):
            away.submit(away.spec_named("work"), (n,), {})  # type: ignore[arg-type]
        await until(lambda: sorted(ran) == list(range(5)), "tasks running without the backend")
        await until(lambda: _backend_failing(client), "the failure shown in /tasks/metrics")
        assert len(await listed_ids(client, name="work")) == 5  # served from this instance
    # The same local journal, now with the backend there: the rows wait in the file and are pushed.
    back = make_manager(namespace, tmp_path, "a")
    async with instance(back):
        backend = namespace.backend()
        await backend.open()
        try:
            await until(lambda: _backend_count(backend, "work", 5), "the outbox pushed after the backend returned")
        finally:
            await backend.close()


async def _backend_failing(client: httpx.AsyncClient) -> bool:
    health = (await client.get("/tasks/metrics")).json()["backend"]
    return health["ok"] is False and bool(health["last_error"])


async def _backend_count(backend: Any, func_name: str, count: int) -> bool:
    rows = await backend.page(func_name=func_name, limit=100)
    return len(rows) == count and all(row["status"] == "success" for row in rows)
