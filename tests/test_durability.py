"""Durable acceptance, requeue after a restart, idempotency that survives it, shutdown classification.

The crash itself (SIGKILL of a real uvicorn process) is in tests/e2e/test_crash.py; here
the journal is checked directly in the SQLite file, and processes that died are made
with a real subprocess killed by SIGKILL.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.fernet import Fernet
from fastapi import FastAPI
from fastapi.testclient import TestClient
from polling import wait_for
from sqlite_peek import rows

from fastapi_taskflow import ManagedBackgroundTasks, TaskAdmin, TaskManager, get_task_context

# A process that journals tasks and dies before running any of them: argv = db, then
# JSON [func_name, status, args, kwargs] items (status "running" is reached by transition).
DIE_WITH_TASKS = """
import json, os, signal, sys
from fastapi_taskflow._selected import core
store = core.TaskStore(sys.argv[1])
for func_name, status, args, kwargs in json.loads(sys.argv[2]):
    task_id, _ = store.create(func_name, args_json=json.dumps(args).encode(),
                              kwargs_json=json.dumps(kwargs).encode(), journal=True)
    if status == "running":
        store.transition(task_id, "running")
store.flush()
os.kill(os.getpid(), signal.SIGKILL)
"""


def die_with_tasks(db: Path, *tasks: tuple[str, str, list[Any], dict[str, Any]]) -> dict[str, str]:
    """Journal ``tasks`` from a process killed with SIGKILL; returns ``{task_id: func_name}``."""
    died = subprocess.run([sys.executable, "-c", DIE_WITH_TASKS, str(db), orjson.dumps(tasks).decode()], check=False)
    assert died.returncode == -signal.SIGKILL
    return {task_id: row["func_name"] for task_id, row in rows(db).items()}


# -- durable acceptance -------------------------------------------------------------------


def test_journaled_task_is_on_disk_before_the_response(tmp_path: Path) -> None:
    db = tmp_path / "tasks.db"
    manager = TaskManager(snapshot_db=str(db), snapshot_interval=3600)
    seen_on_disk: list[dict[str, Any]] = []
    app = FastAPI()
    TaskAdmin(app, manager, auto_install=True)

    @manager.task(persist=True)
    def send(address: str, *, retries: int) -> None:
        context = get_task_context()
        assert context is not None
        seen_on_disk.append(rows(db)[context.task_id])

    @app.post("/send")
    def enqueue(background_tasks: ManagedBackgroundTasks) -> dict[str, str]:
        return {"task_id": background_tasks.add_task(send, "a@example.com", retries=2)}

    on_disk_at_response: list[dict[str, Any]] = []

    class SeeTheFileWhenTheResponseStarts:
        """Added after TaskAdmin, so it wraps the journal's middleware: it sees what the client sees."""

        def __init__(self, app: Any) -> None:
            self.app = app

        async def __call__(self, scope: Any, receive: Any, send_: Any) -> None:
            async def spy(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    on_disk_at_response.append(rows(db))
                await send_(message)

            await self.app(scope, receive, spy)

    app.add_middleware(SeeTheFileWhenTheResponseStarts)
    with TestClient(app) as client:
        ids = [client.post("/send").json()["task_id"]]
        wait_for(lambda: rows(db).get(ids[0], {}).get("status") == "success")

    (task_id,) = ids
    row = on_disk_at_response[0][task_id]
    assert row["status"] == "pending"
    assert row["owner"] == manager.core.instance_id
    assert orjson.loads(row["args_json"]) == ["a@example.com"]
    assert orjson.loads(row["kwargs_json"]) == {"retries": 2}
    # Marked running on disk before the function ran.
    assert seen_on_disk[0]["status"] == "running"
    final = rows(db)[task_id]
    assert final["status"] == "success" and final["owner"] is None


def test_unserialisable_argument_of_a_journaled_task_is_refused_by_name(tmp_path: Path) -> None:
    manager = TaskManager(snapshot_db=str(tmp_path / "tasks.db"), requeue_pending=True)

    @manager.task()
    def handle(payload: object) -> None: ...

    tasks = ManagedBackgroundTasks(manager)
    with pytest.raises(TypeError, match=r"argument 'payload' \(object\) of persistent task 'handle'"):
        tasks.add_task(handle, payload=object())
    assert tasks.tasks == []
    assert manager.core.memory_len() == 0  # nothing half-accepted


def test_non_journaled_tasks_store_no_arguments(tmp_path: Path) -> None:
    db = tmp_path / "tasks.db"
    manager = TaskManager(snapshot_db=str(db))

    @manager.task()
    def plain(value: object) -> None: ...

    app = FastAPI()
    TaskAdmin(app, manager, auto_install=True)

    @app.post("/plain")
    def enqueue(background_tasks: ManagedBackgroundTasks) -> str:
        return background_tasks.add_task(plain, object())  # fine: never written to disk

    with TestClient(app) as client:
        task_id = client.post("/plain").json()
        wait_for(lambda: rows(db).get(task_id, {}).get("status") == "success")
    row = rows(db)[task_id]
    assert row["args_json"] is None and row["owner"] is None


# -- requeue after a crash -------------------------------------------------------------------


def test_restart_runs_pending_tasks_and_reports_started_ones(tmp_path: Path) -> None:
    db = tmp_path / "tasks.db"
    orphans = die_with_tasks(
        db,
        ("greet", "pending", ["ada"], {"punctuation": "!"}),
        ("greet", "running", ["bob"], {"punctuation": "?"}),
        ("again", "running", [], {"n": 1}),
        ("vanished", "pending", [], {}),
    )
    by_name = {name: task_id for task_id, name in orphans.items() if name != "greet"}
    greeted: list[str] = []
    manager = TaskManager(snapshot_db=str(db))

    @manager.task()
    async def greet(name: str, punctuation: str) -> None:
        greeted.append(name + punctuation)

    ran_again: list[int] = []

    @manager.task(requeue_on_interrupt=True)
    def again(n: int) -> None:
        ran_again.append(n)

    async def start_and_settle() -> None:
        await manager.startup()
        for _ in range(500):
            statuses = {r["status"] for r in rows(db).values()}
            if "pending" not in statuses and "running" not in statuses:
                break
            await asyncio.sleep(0.01)
        await manager.shutdown()

    asyncio.run(start_and_settle())
    on_disk = rows(db)
    assert greeted == ["ada!"]  # the pending one ran with its arguments
    assert ran_again == [1]  # requeue_on_interrupt: run again
    statuses = {orphans[t] + ":" + r["status"] for t, r in on_disk.items()}
    assert statuses == {"greet:success", "greet:interrupted", "again:success", "vanished:interrupted"}
    interrupted = [r for r in on_disk.values() if r["status"] == "interrupted"]
    assert any("requeue_on_interrupt is off" in r["error"] for r in interrupted)
    assert "'vanished' is not registered" in on_disk[by_name["vanished"]]["error"]
    assert all(r["owner"] is None for r in on_disk.values())


def test_a_live_process_keeps_its_journal(tmp_path: Path) -> None:
    db = tmp_path / "tasks.db"
    first = TaskManager(snapshot_db=str(db), requeue_pending=True)
    second = TaskManager(snapshot_db=str(db), requeue_pending=True)
    for manager in (first, second):
        manager.task()(noop)
    tasks = ManagedBackgroundTasks(first)
    task_id = tasks.add_task(noop)  # accepted, journaled, not run (no response here)
    assert first.core.flush() == 1

    async def run_second(until: Callable[[], bool]) -> None:
        await second.startup()
        for _ in range(1_000):
            if until():
                break
            await asyncio.sleep(0.01)
        await second.shutdown()

    asyncio.run(run_second(lambda: True))
    row = rows(db)[task_id]
    assert row["status"] == "pending" and row["owner"] == first.core.instance_id
    first.core.close()  # now it is gone: the next start takes the task over
    asyncio.run(run_second(lambda: rows(db)[task_id]["status"] == "success"))
    assert rows(db)[task_id]["owner"] is None


def noop() -> None: ...


def test_encrypted_arguments_survive_a_restart_without_being_stored_in_clear(tmp_path: Path) -> None:
    db = tmp_path / "tasks.db"
    key = Fernet.generate_key()
    secret = "4111-1111-1111-1111"
    received: list[str] = []

    def charge(card: str) -> None:
        received.append(card)

    def make() -> TaskManager:
        manager = TaskManager(snapshot_db=str(db), encrypt_args_key=key, requeue_pending=True)
        manager.task()(charge)
        return manager

    first = make()
    ManagedBackgroundTasks(first).add_task(charge, card=secret)
    first.core.flush()
    first.core.close()
    written = b"".join(p.read_bytes() for p in tmp_path.glob("tasks.db*") if p.is_file())
    assert secret.encode() not in written

    second = make()

    async def run_second() -> None:
        await second.startup()
        for _ in range(500):
            if received:
                break
            await asyncio.sleep(0.01)
        await second.shutdown()

    asyncio.run(run_second())
    assert received == [secret]


# -- idempotency ------------------------------------------------------------------------------


def test_one_key_from_many_concurrent_requests_runs_once(tmp_path: Path) -> None:
    db = tmp_path / "tasks.db"
    manager = TaskManager(snapshot_db=str(db))
    runs: list[str] = []
    lock = threading.Lock()

    @manager.task(persist=True)
    def charge(order: str) -> None:
        with lock:
            runs.append(order)

    app = FastAPI()
    TaskAdmin(app, manager, auto_install=True)

    @app.post("/charge/{order}")
    def enqueue(order: str, background_tasks: ManagedBackgroundTasks) -> str:
        return background_tasks.add_task(charge, order, idempotency_key=f"charge-{order}")

    with TestClient(app) as client:
        answers: list[str] = []
        barrier = threading.Barrier(16)

        def call() -> None:
            barrier.wait()
            answers.append(client.post("/charge/42").json())

        threads = [threading.Thread(target=call) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(set(answers)) == 1
        wait_for(lambda: len(runs) == 1 and rows(db)[answers[0]]["status"] == "success")
    assert runs == ["42"]

    # After a restart the key is still held by the task that succeeded.
    manager.core.close()
    restarted = TaskManager(snapshot_db=str(db))
    restarted.task(persist=True)(charge)
    assert ManagedBackgroundTasks(restarted).add_task(charge, "42", idempotency_key="charge-42") == answers[0]
    assert restarted.core.memory_len() == 0


def test_idempotency_ttl_frees_a_key(tmp_path: Path) -> None:
    manager = TaskManager(snapshot_db=str(tmp_path / "tasks.db"), idempotency_ttl=0.05)
    manager.task()(noop)
    tasks = ManagedBackgroundTasks(manager)
    first = tasks.add_task(noop, idempotency_key="k")
    assert tasks.add_task(noop, idempotency_key="k") == first
    wait_for(lambda: tasks.add_task(noop, idempotency_key="k") != first, timeout=5)


# -- shutdown ------------------------------------------------------------------------------------


def test_shutdown_requeues_or_interrupts_what_it_stops(tmp_path: Path) -> None:
    db = tmp_path / "tasks.db"
    orphans = die_with_tasks(db, ("patient", "pending", [], {}), ("impatient", "pending", [], {}))
    started: list[str] = []

    def make() -> TaskManager:
        manager = TaskManager(snapshot_db=str(db))

        @manager.task(requeue_on_interrupt=True)
        async def patient() -> None:
            started.append("patient")
            await asyncio.Event().wait()

        @manager.task()
        async def impatient() -> None:
            started.append("impatient")
            await asyncio.Event().wait()

        return manager

    first = make()

    async def run_until_both_started() -> None:
        await first.startup()
        for _ in range(500):
            if len(started) == 2:
                break
            await asyncio.sleep(0.01)
        await first.shutdown()

    asyncio.run(run_until_both_started())
    status = {orphans[t]: r["status"] for t, r in rows(db).items()}
    assert status == {"patient": "pending", "impatient": "interrupted"}
    first.core.close()

    started.clear()
    second = make()
    asyncio.run(run_until_both_started_once(second, started))
    assert started == ["patient"]


async def run_until_both_started_once(manager: TaskManager, started: list[str]) -> None:
    await manager.startup()
    for _ in range(500):
        if started:
            break
        await asyncio.sleep(0.01)
    await manager.shutdown()
