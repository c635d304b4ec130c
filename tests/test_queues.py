"""Priorities, eager dispatch and named queues, observed by the task functions themselves.

Every limit is checked by what the tasks see while they run (a counter of tasks running
at once, the peak, the order they started in), never by timing: tasks hold their slot
until the test hands them a ticket, and the test waits for states with a deadline.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import fastapi.dependencies.utils as fastapi_dependency_utils
import pytest
from fastapi import Depends, FastAPI, HTTPException
from fastapi.testclient import TestClient
from polling import wait_for
from sqlite_peek import rows

from fastapi_taskflow import ManagedBackgroundTasks, QueueConfig, QueueFullError, TaskAdmin, TaskManager


@pytest.fixture(autouse=True)
def _restore_fastapi_background_tasks() -> Iterator[None]:
    original = fastapi_dependency_utils.BackgroundTasks
    yield
    fastapi_dependency_utils.BackgroundTasks = original  # type: ignore[misc]


class Probe:
    """What the task functions see: how many run at once, the peak, the order they started in.

    A task holding the probe waits for a ticket before it returns (``release``/``open``),
    so the test decides when slots free up.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.peak = 0
        self.started: list[str] = []
        #: ``(label, tasks running when it started, itself included)``
        self.entries: list[tuple[str, int]] = []
        self.tickets = 0
        self.opened = False

    def enter(self, label: str) -> None:
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
            self.started.append(label)
            self.entries.append((label, self.running))

    def leave(self) -> None:
        with self.lock:
            self.running -= 1

    def take_ticket(self) -> bool:
        with self.lock:
            if self.opened:
                return True
            if self.tickets:
                self.tickets -= 1
                return True
            return False

    def release(self, count: int = 1) -> None:
        with self.lock:
            self.tickets += count

    def open(self) -> None:
        with self.lock:
            self.opened = True

    async def hold_async(self, label: str) -> None:
        self.enter(label)
        try:
            while not self.take_ticket():
                await asyncio.sleep(0.002)
        finally:
            self.leave()

    def hold_thread(self, label: str) -> None:
        self.enter(label)
        try:
            while not self.take_ticket():
                time.sleep(0.002)
        finally:
            self.leave()


def make_app(manager: TaskManager, funcs: dict[str, Callable[..., Any]]) -> FastAPI:
    """An app with the task routes and ``POST /enqueue``: a JSON list of ``{"func", "label", ...}``.

    Each item is added with its ``priority``, ``eager``, ``queue`` and ``key`` (idempotency
    key); a full queue answers 429, as a user's route would.
    """
    app = FastAPI()
    TaskAdmin(app, manager)

    @app.post("/enqueue")
    def enqueue(items: list[dict[str, Any]], tasks: ManagedBackgroundTasks = Depends(manager.get_tasks)) -> list[str]:
        ids: list[str] = []
        for item in items:
            try:
                task_id = tasks.add_task(
                    funcs[item["func"]],
                    item.get("label", ""),
                    priority=item.get("priority"),
                    eager=item.get("eager"),
                    queue=item.get("queue"),
                    idempotency_key=item.get("key"),
                )
            except QueueFullError as exc:
                raise HTTPException(status_code=429, detail=str(exc)) from exc
            ids.append(task_id)
        return ids

    return app


def enqueue(client: TestClient, *items: dict[str, Any]) -> list[str]:
    response = client.post("/enqueue", json=list(items))
    assert response.status_code == 200, response.text
    ids: list[str] = response.json()
    return ids


def status_of(manager: TaskManager, task_id: str) -> str:
    record = manager.core.get(task_id)
    assert record is not None
    return str(record["status"])


def stats(manager: TaskManager, name: str) -> dict[str, Any]:
    (found,) = [queue for queue in manager.queue_stats() if queue["name"] == name]
    return found


# -- priorities ---------------------------------------------------------------------------------


def test_a_busy_queue_runs_waiting_tasks_by_priority_then_in_order_of_arrival() -> None:
    manager = TaskManager(queues={"work": QueueConfig(concurrency=1)})
    probe = Probe()
    ran: list[str] = []
    ran_lock = threading.Lock()

    @manager.task(queue="work")
    async def blocker(label: str) -> None:
        await probe.hold_async(label)

    @manager.task(queue="work")
    async def async_job(label: str) -> None:
        with ran_lock:
            ran.append(label)

    @manager.task(queue="work")
    def thread_job(label: str) -> None:
        with ran_lock:
            ran.append(label)

    app = make_app(manager, {"blocker": blocker, "async": async_job, "thread": thread_job})
    rng = random.Random(7)
    # label -> (priority, batch, position in batch); None priority counts as 0.
    sent: dict[str, tuple[int, int, int]] = {}
    batches: list[list[dict[str, Any]]] = []
    for batch in range(8):
        items = []
        for position in range(25):
            priority = rng.choice([None, -2, 0, 1, 3, 3, 7])
            label = f"b{batch}-{position}"
            sent[label] = (priority or 0, batch, position)
            items.append({"func": rng.choice(["async", "thread"]), "label": label, "priority": priority})
        batches.append(items)

    with TestClient(app) as client:
        enqueue(client, {"func": "blocker", "label": "blocker"})
        wait_for(lambda: probe.running == 1, what="the blocker holding the only slot")
        # Under load: eight requests at once, each from its own worker thread.
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda items: enqueue(client, *items), batches))
        assert stats(manager, "work")["pending"] == len(sent)
        probe.open()
        wait_for(lambda: len(ran) == len(sent), what="every task run")

    assert sorted(ran) == sorted(sent)
    priorities = [sent[label][0] for label in ran]
    assert priorities == sorted(priorities, reverse=True), "a lower priority ran before a higher one"
    for batch in range(len(batches)):
        for priority in set(priorities):
            same = [sent[label][2] for label in ran if sent[label][1] == batch and sent[label][0] == priority]
            assert same == sorted(same), f"batch {batch}, priority {priority}: not first in, first out"


def test_eager_task_goes_first_but_waits_for_a_free_slot() -> None:
    manager = TaskManager(queues={"work": QueueConfig(concurrency=1)})
    probe = Probe()

    @manager.task(queue="work")
    async def job(label: str) -> None:
        await probe.hold_async(label)

    @manager.task(queue="work", eager=True)
    def urgent(label: str) -> None:
        probe.hold_thread(label)

    app = make_app(manager, {"job": job, "urgent": urgent})
    with TestClient(app) as client:
        enqueue(client, {"func": "job", "label": "blocker"})
        wait_for(lambda: probe.started == ["blocker"])
        enqueue(
            client,
            {"func": "job", "label": "p9", "priority": 9},
            {"func": "urgent", "label": "eager-by-decorator"},
            {"func": "job", "label": "eager-by-call", "eager": True, "priority": -1},
            {"func": "job", "label": "p1", "priority": 1},
        )
        assert stats(manager, "work")["pending"] == 4
        assert stats(manager, "work")["running"] == 1
        probe.open()
        wait_for(lambda: len(probe.started) == 5 and probe.running == 0)

    # Eager beats priority, and still waited for the only slot: never two at once.
    assert probe.started == ["blocker", "eager-by-decorator", "eager-by-call", "p9", "p1"]
    assert probe.peak == 1


def test_priority_without_queues_dispatches_in_priority_order() -> None:
    manager = TaskManager()
    ran: list[str] = []

    @manager.task()
    async def note(label: str) -> None:
        ran.append(label)

    app = FastAPI()
    TaskAdmin(app, manager)

    @app.post("/go")
    async def go(tasks: ManagedBackgroundTasks = Depends(manager.get_tasks)) -> None:
        for label, priority in [("p1", 1), ("p5-first", 5), ("p3", 3), ("p5-second", 5), ("p-2", -2)]:
            tasks.add_task(note, label, priority=priority)

    with TestClient(app) as client:
        client.post("/go")
        wait_for(lambda: len(ran) == 5)
        records = client.get("/tasks").json()
    assert ran == ["p5-first", "p5-second", "p3", "p1", "p-2"]
    assert sorted(r["priority"] for r in records) == [-2, 1, 3, 5, 5]


def test_priority_must_be_a_whole_number() -> None:
    manager = TaskManager()
    with pytest.raises(TypeError, match="priority"):
        manager.task(priority="high")  # type: ignore[arg-type]

    @manager.task()
    def noop() -> None: ...

    with pytest.raises(TypeError, match="priority"):
        ManagedBackgroundTasks(manager).add_task(noop, priority=1.5)  # type: ignore[arg-type]
    assert manager.core.memory_len() == 0


# -- limits -------------------------------------------------------------------------------------


def test_limits_are_never_exceeded_by_async_and_thread_tasks() -> None:
    manager = TaskManager(queues={"io": QueueConfig(concurrency=3), "cpu": QueueConfig(concurrency=2)})
    io_probe, cpu_probe = Probe(), Probe()

    @manager.task(queue="io")
    async def fetch(label: str) -> None:
        await io_probe.hold_async(label)

    @manager.task(queue="io")
    def parse(label: str) -> None:
        io_probe.hold_thread(label)

    @manager.task(queue="cpu")
    def crunch(label: str) -> None:
        cpu_probe.hold_thread(label)

    app = make_app(manager, {"fetch": fetch, "parse": parse, "crunch": crunch})
    with TestClient(app) as client:
        enqueue(client, *({"func": "fetch" if i % 2 else "parse", "label": f"io{i}"} for i in range(24)))
        enqueue(client, *({"func": "crunch", "label": f"cpu{i}"} for i in range(10)))
        # Both queues full at once: they are independent.
        wait_for(lambda: io_probe.running == 3 and cpu_probe.running == 2, what="both queues at their limit")
        assert stats(manager, "io") | {"finished": None} == {
            "name": "io",
            "concurrency": 3,
            "max_size": None,
            "pending": 21,
            "running": 3,
            "finished": None,
            "rejected": 0,
        }
        for _ in range(12):  # free slots a few at a time
            io_probe.release(2)
            cpu_probe.release(1)
        io_probe.open()
        cpu_probe.open()
        wait_for(lambda: len(io_probe.started) == 24 and len(cpu_probe.started) == 10)
        wait_for(lambda: stats(manager, "io")["finished"] == 24 and stats(manager, "cpu")["finished"] == 10)
        assert stats(manager, "io")["running"] == 0 and stats(manager, "io")["pending"] == 0
    assert io_probe.peak == 3
    assert cpu_probe.peak == 2


def test_max_concurrent_tasks_is_the_default_queue_limit_for_thread_tasks_too() -> None:
    manager = TaskManager(max_size=100, max_concurrent_tasks=2)
    probe = Probe()

    @manager.task()
    def work(label: str) -> None:
        probe.hold_thread(label)

    app = make_app(manager, {"work": work})
    with TestClient(app) as client:
        enqueue(client, *({"func": "work", "label": str(i)} for i in range(8)))
        wait_for(lambda: probe.running == 2)
        probe.open()
        wait_for(lambda: len(probe.started) == 8 and probe.running == 0)
        assert manager.queue_stats() == [
            {
                "name": "default",
                "concurrency": 2,
                "max_size": 100,
                "pending": 0,
                "running": 0,
                "finished": 8,
                "rejected": 0,
            }
        ]
    assert probe.peak == 2


def test_eager_tasks_count_against_the_queue_limits() -> None:
    manager = TaskManager(queues={"work": QueueConfig(concurrency=2, max_size=1)})
    probe = Probe()

    @manager.task(queue="work", eager=True)
    async def urgent(label: str) -> None:
        await probe.hold_async(label)

    app = make_app(manager, {"urgent": urgent})
    with TestClient(app) as client:
        enqueue(client, {"func": "urgent", "label": "a"})
        wait_for(lambda: probe.running == 1)
        enqueue(client, {"func": "urgent", "label": "b"})
        wait_for(lambda: probe.running == 2)
        enqueue(client, {"func": "urgent", "label": "c"})  # waits: both slots are taken
        full = client.post("/enqueue", json=[{"func": "urgent", "label": "d"}])
        assert full.status_code == 429  # and max_size counts eager tasks too
        assert stats(manager, "work")["pending"] == 1
        probe.open()
        wait_for(lambda: len(probe.started) == 3 and probe.running == 0)
    assert probe.peak == 2


def test_eager_without_queues_starts_before_the_response_within_max_concurrent_tasks() -> None:
    manager = TaskManager(max_concurrent_tasks=1)
    probe = Probe()
    started_async = asyncio.Event()
    started_thread = threading.Event()

    @manager.task(eager=True)
    async def signal_async() -> None:
        started_async.set()

    @manager.task(eager=True)
    def signal_thread() -> None:
        started_thread.set()

    @manager.task()
    async def held(label: str) -> None:
        await probe.hold_async(label)

    app = FastAPI()
    TaskAdmin(app, manager)

    @app.post("/async")
    async def from_async(tasks: ManagedBackgroundTasks = Depends(manager.get_tasks)) -> bool:
        tasks.add_task(signal_async)
        try:
            await asyncio.wait_for(started_async.wait(), 20)
        except asyncio.TimeoutError:
            return False
        return True

    @app.post("/sync")
    def from_sync(tasks: ManagedBackgroundTasks = Depends(manager.get_tasks)) -> bool:
        tasks.add_task(signal_thread)  # from a worker thread: started on the loop
        return started_thread.wait(20)

    @app.post("/held")
    def add_held(tasks: ManagedBackgroundTasks = Depends(manager.get_tasks)) -> None:
        for label in ("x", "y", "z"):
            tasks.add_task(held, label, eager=True)

    with TestClient(app) as client:
        assert client.post("/async").json() is True
        assert client.post("/sync").json() is True
        client.post("/held")
        wait_for(lambda: probe.running == 1)
        probe.open()
        wait_for(lambda: len(probe.started) == 3 and probe.running == 0)
    assert probe.peak == 1  # eager async tasks still share max_concurrent_tasks


# -- full queues and unknown names ---------------------------------------------------------


def test_a_full_queue_rejects_the_task_and_a_route_answers_429() -> None:
    manager = TaskManager(queues={"mail": QueueConfig(concurrency=1, max_size=2)})
    probe = Probe()

    @manager.task(queue="mail")
    async def send(label: str) -> None:
        await probe.hold_async(label)

    app = make_app(manager, {"send": send})
    with TestClient(app) as client:
        enqueue(client, {"func": "send", "label": "running"})
        wait_for(lambda: probe.running == 1)
        enqueue(client, {"func": "send", "label": "w1"}, {"func": "send", "label": "w2"})
        full = client.post("/enqueue", json=[{"func": "send", "label": "w3", "key": "order-3"}])
        assert full.status_code == 429
        message = "Queue 'mail' is full (2 tasks pending). Raise max_size or reduce enqueue rate."
        assert full.json() == {"detail": message}
        (rejected,) = client.get("/tasks", params={"status": "rejected"}).json()
        assert (rejected["queue"], rejected["error"]) == ("mail", message)
        assert client.get("/tasks/metrics").json()["rejected"] == 1
        assert stats(manager, "mail")["rejected"] == 1
        assert stats(manager, "mail")["pending"] == 2
        probe.open()
        wait_for(lambda: stats(manager, "mail")["finished"] == 3)
        # Nothing was half-accepted: the rejected task's idempotency key is free again.
        (again,) = enqueue(client, {"func": "send", "label": "w3", "key": "order-3"})
        assert again != rejected["task_id"]
        wait_for(lambda: status_of(manager, again) == "success")
    assert "w3" in probe.started and probe.peak == 1


def test_queue_full_error_names_the_rejected_task() -> None:
    manager = TaskManager(max_size=1)

    @manager.task()
    def noop() -> None: ...

    tasks = ManagedBackgroundTasks(manager)  # before start-up, tasks wait in their queue
    first = tasks.add_task(noop)
    with pytest.raises(QueueFullError) as caught:
        tasks.add_task(noop)
    assert isinstance(caught.value, RuntimeError)
    assert caught.value.queue == "default" and caught.value.max_size == 1
    assert caught.value.task_id is not None and caught.value.task_id != first
    assert status_of(manager, caught.value.task_id) == "rejected"
    assert status_of(manager, first) == "pending"
    assert tasks.tasks == []


def test_unknown_queue_falls_back_to_default_with_one_warning_per_name(caplog: pytest.LogCaptureFixture) -> None:
    manager = TaskManager(queues={"mail": QueueConfig(concurrency=2)})
    ran: list[str] = []

    @manager.task(queue="gone")
    def legacy(label: str) -> None:
        ran.append(label)

    app = make_app(manager, {"legacy": legacy})
    with caplog.at_level(logging.WARNING, logger="fastapi_taskflow"), TestClient(app) as client:
        ids = enqueue(
            client,
            {"func": "legacy", "label": "1"},
            {"func": "legacy", "label": "2"},
            {"func": "legacy", "label": "3", "queue": "typo"},
            {"func": "legacy", "label": "4", "queue": "typo"},
            {"func": "legacy", "label": "5", "queue": "mail"},
        )
        wait_for(lambda: len(ran) == 5)
        queues = [client.get(f"/tasks/{task_id}").json()["queue"] for task_id in ids]
    assert queues == ["default", "default", "default", "default", "mail"]
    warnings = [r.getMessage() for r in caplog.records if "unknown queue" in r.getMessage()]
    assert len(warnings) == 2
    assert "'gone'" in warnings[0] and "'typo'" in warnings[1]
    assert "default" in warnings[0]


# -- changing limits at run time ---------------------------------------------------------------


def test_update_queue_config_lowers_and_raises_the_limit_while_tasks_run() -> None:
    manager = TaskManager(queues={"work": QueueConfig(concurrency=3, max_size=10)})
    probe = Probe()
    phase = ["three"]
    phases: dict[str, str] = {}

    @manager.task(queue="work")
    async def job(label: str) -> None:
        phases[label] = phase[0]
        await probe.hold_async(label)

    @manager.task(queue="work")
    def thread_job(label: str) -> None:
        phases[label] = phase[0]
        probe.hold_thread(label)

    app = make_app(manager, {"job": job, "thread": thread_job})
    with TestClient(app) as client:
        enqueue(client, *({"func": "job", "label": f"old{i}"} for i in range(3)))
        wait_for(lambda: probe.running == 3)
        enqueue(client, *({"func": "thread" if i % 2 else "job", "label": f"new{i}"} for i in range(6)))

        lowered = client.patch("/tasks/queues/work", json={"concurrency": 1})
        assert lowered.json() == {"name": "work", "concurrency": 1, "max_size": 10, "pending": 6}
        phase[0] = "one"
        probe.release(3)  # the three old tasks end; only then may one new task start
        wait_for(lambda: probe.running == 1 and len(probe.started) == 4, what="one new task under the new limit")
        started_under_one = list(probe.entries[3:])
        assert started_under_one == [("new0", 1)]

        phase[0] = "four"
        raised = client.patch("/tasks/queues/work", json={"concurrency": 4})
        assert raised.json()["concurrency"] == 4
        wait_for(lambda: probe.running == 4, what="the raised limit filled")
        probe.open()
        wait_for(lambda: len(probe.started) == 9 and probe.running == 0)
        assert stats(manager, "work")["finished"] == 9

    assert [label for label, value in phases.items() if value == "one"] == ["new0"]
    assert max(count for _, count in probe.entries) <= 4
    assert probe.peak == 4


def test_lowering_max_size_keeps_what_waits_and_rejects_new_tasks() -> None:
    manager = TaskManager(queues={"work": QueueConfig(concurrency=1, max_size=10)})
    probe = Probe()

    @manager.task(queue="work")
    async def job(label: str) -> None:
        await probe.hold_async(label)

    app = make_app(manager, {"job": job})
    with TestClient(app) as client:
        enqueue(client, *({"func": "job", "label": str(i)} for i in range(4)))
        wait_for(lambda: probe.running == 1)
        assert manager.update_queue_config("work", 1, 2) == {
            "name": "work",
            "concurrency": 1,
            "max_size": 2,
            "pending": 3,
        }
        assert client.post("/enqueue", json=[{"func": "job", "label": "x"}]).status_code == 429
        assert client.patch("/tasks/queues/work", json={"max_size": None}).json()["max_size"] is None
        enqueue(client, {"func": "job", "label": "y"})
        probe.open()
        wait_for(lambda: len(probe.started) == 5 and probe.running == 0)
    assert probe.peak == 1
    with pytest.raises(KeyError):
        manager.update_queue_config("nope", 1, 1)
    with pytest.raises(ValueError, match="concurrency"):
        manager.update_queue_config("work", 0, None)


# -- routes ----------------------------------------------------------------------------------


def test_queue_routes_validate_and_audit() -> None:
    manager = TaskManager(queues={"mail": QueueConfig(concurrency=2, max_size=50), "bulk": QueueConfig()})
    app = make_app(manager, {})
    with TestClient(app) as client:
        assert client.get("/tasks/queues").json() == [
            {
                "name": "bulk",
                "concurrency": None,
                "max_size": None,
                "pending": 0,
                "running": 0,
                "finished": 0,
                "rejected": 0,
            },
            {
                "name": "default",
                "concurrency": None,
                "max_size": None,
                "pending": 0,
                "running": 0,
                "finished": 0,
                "rejected": 0,
            },
            {
                "name": "mail",
                "concurrency": 2,
                "max_size": 50,
                "pending": 0,
                "running": 0,
                "finished": 0,
                "rejected": 0,
            },
        ]
        for bad in (
            {"concurrency": 0},
            {"concurrency": -3},
            {"concurrency": "3"},
            {"concurrency": 2.5},
            {"concurrency": True},
            {"max_size": "lots"},
            {"concurency": 3},  # a typo is not silently ignored
            [1, 2],
        ):
            assert client.patch("/tasks/queues/mail", json=bad).status_code == 422, bad
        assert client.patch("/tasks/queues/mail").status_code == 422  # no body
        missing = client.patch("/tasks/queues/nope", json={"concurrency": 1})
        assert missing.status_code == 404 and "nope" in missing.json()["detail"]

        # A field left out keeps its value; null means unlimited.
        only_size = client.patch("/tasks/queues/mail", json={"max_size": 5})
        assert only_size.json() == {"name": "mail", "concurrency": 2, "max_size": 5, "pending": 0}
        unlimited = client.patch("/tasks/queues/mail", json={"concurrency": None})
        assert unlimited.json() == {"name": "mail", "concurrency": None, "max_size": 5, "pending": 0}
        assert stats(manager, "mail")["concurrency"] is None

        audit = client.get("/tasks/audit").json()
        assert [(e["action"], e["task_id"], e["actor"], e["detail"]) for e in audit] == [
            ("update_queue", "mail", "anonymous", {"concurrency": None}),
            ("update_queue", "mail", "anonymous", {"max_size": 5}),
        ]
        assert "/tasks/queues" in client.get("/openapi.json").json()["paths"]


def test_queue_routes_outside_queue_mode() -> None:
    manager = TaskManager(max_concurrent_tasks=4)
    app = make_app(manager, {})
    with TestClient(app) as client:
        assert client.get("/tasks/queues").json() == []
        refused = client.patch("/tasks/queues/default", json={"concurrency": 2})
        assert refused.status_code == 400
        assert "queues=" in refused.json()["detail"]
        assert client.get("/tasks/audit").json() == []
    assert manager.queue_stats() == []


def test_cancelling_a_waiting_task_takes_it_out_of_its_queue() -> None:
    manager = TaskManager(queues={"work": QueueConfig(concurrency=1)})
    probe = Probe()

    @manager.task(queue="work")
    async def job(label: str) -> None:
        await probe.hold_async(label)

    app = make_app(manager, {"job": job})
    with TestClient(app) as client:
        enqueue(client, {"func": "job", "label": "running"})
        wait_for(lambda: probe.running == 1)
        waiting, kept = enqueue(client, {"func": "job", "label": "cancelled"}, {"func": "job", "label": "kept"})
        assert client.post(f"/tasks/{waiting}/cancel").status_code == 200
        assert stats(manager, "work") | {"running": 1} == {
            "name": "work",
            "concurrency": 1,
            "max_size": None,
            "pending": 1,
            "running": 1,
            "finished": 1,
            "rejected": 0,
        }
        probe.open()
        wait_for(lambda: status_of(manager, kept) == "success")
        assert status_of(manager, waiting) == "cancelled"
    assert probe.started == ["running", "kept"]


# -- retries, shutdown and restart ---------------------------------------------------------------


def test_an_api_retry_goes_through_its_queue() -> None:
    manager = TaskManager(queues={"work": QueueConfig(concurrency=1, max_size=1)})
    probe = Probe()
    attempts: list[str] = []

    @manager.task(queue="work")
    async def flaky(label: str) -> None:
        attempts.append(label)
        if len(attempts) == 1:
            raise RuntimeError("first time fails")
        await probe.hold_async(label)

    @manager.task(queue="work")
    async def job(label: str) -> None:
        await probe.hold_async(label)

    app = make_app(manager, {"flaky": flaky, "job": job})
    with TestClient(app) as client:
        (failed,) = enqueue(client, {"func": "flaky", "label": "retried", "priority": 4})
        wait_for(lambda: status_of(manager, failed) == "failed")
        enqueue(client, {"func": "job", "label": "blocker"})
        wait_for(lambda: probe.running == 1)
        retried = client.post(f"/tasks/{failed}/retry").json()
        # Waits behind the blocker (a retry is not refused by a full queue: it was accepted once).
        assert retried["task"]["queue"] == "work" and retried["task"]["priority"] == 4
        assert stats(manager, "work")["pending"] == 1
        probe.open()
        wait_for(lambda: status_of(manager, retried["task_id"]) == "success")
    assert probe.started == ["blocker", "retried"]
    assert probe.peak == 1


def test_shutdown_interrupts_waiting_tasks_and_keeps_journaled_ones_for_the_next_start(tmp_path: Path) -> None:
    db = tmp_path / "tasks.db"
    probe = Probe()

    def make() -> tuple[TaskManager, FastAPI]:
        manager = TaskManager(snapshot_db=str(db), queues={"work": QueueConfig(concurrency=1)})

        @manager.task(queue="work")
        async def blocker(label: str) -> None:
            await probe.hold_async(label)

        @manager.task(queue="work", persist=True)
        async def durable(label: str) -> None:
            await probe.hold_async(label)

        @manager.task(queue="work")
        def transient(label: str) -> None:
            probe.hold_thread(label)

        return manager, make_app(manager, {"blocker": blocker, "durable": durable, "transient": transient})

    first, app = make()
    with TestClient(app) as client:
        enqueue(client, {"func": "blocker", "label": "blocker"})
        wait_for(lambda: probe.running == 1)
        low, transient_id, high = enqueue(
            client,
            {"func": "durable", "label": "low", "priority": 1},
            {"func": "transient", "label": "transient"},
            {"func": "durable", "label": "high", "priority": 8},
        )
    # Shut down with the blocker running and three tasks waiting.
    assert status_of(first, transient_id) == "interrupted"
    record = first.core.get(transient_id)
    assert record is not None
    assert "shut down before it started" in str(record["error"]) and "'work'" in str(record["error"])
    on_disk = rows(db)
    assert on_disk[low]["status"] == on_disk[high]["status"] == "pending"
    assert on_disk[transient_id]["status"] == "interrupted"
    first.core.close()

    probe.started.clear()
    probe.open()
    second, app = make()
    with TestClient(app):
        wait_for(lambda: status_of(second, low) == "success" and status_of(second, high) == "success")
        assert stats(second, "work")["finished"] == 2
    # Requeued into their queue: one at a time, the higher priority first.
    assert probe.started == ["high", "low"]
    assert probe.peak == 1


def test_queued_tasks_wait_for_start_up() -> None:
    manager = TaskManager(max_size=10)
    ran: list[int] = []

    @manager.task()
    def note(n: int) -> None:
        ran.append(n)

    tasks = ManagedBackgroundTasks(manager)
    ids = [tasks.add_task(note, n, priority=n) for n in range(3)]
    assert [status_of(manager, task_id) for task_id in ids] == ["pending"] * 3

    async def run() -> None:
        await manager.startup()
        for _ in range(2_000):
            if len(ran) == 3:
                break
            await asyncio.sleep(0.005)
        await manager.shutdown()

    asyncio.run(run())
    assert ran == [2, 1, 0]
