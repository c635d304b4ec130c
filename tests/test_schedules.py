"""Recurring schedules and one-off runs: fired through the task path, once per tick across processes.

Real parts throughout: real SQLite files, real processes for the multi-process cases.
Where a test needs time to pass (a cron slot an hour away, a one-off due tomorrow), the
scheduler's clock is replaced and moved by the test instead of waiting. The tests that
run in this process run on both cores.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from polling import wait_for
from sqlite_peek import query

import fastapi_taskflow.manager as manager_module
import fastapi_taskflow.scheduling_once as scheduling_once
from fastapi_taskflow import (
    ManagedBackgroundTasks,
    QueueConfig,
    ScheduledOnce,
    TaskAdmin,
    TaskManager,
    get_task_context,
    task_log,
)
from fastapi_taskflow.errors import SnapshotError
from fastapi_taskflow.schedule_store import FileSchedules
from fastapi_taskflow.scheduling_triggers import make_trigger

UTC = timezone.utc


@pytest.fixture(params=["rust", "python"])
def core_name(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Managers made in the test use this core (the Rust extension or the pure-Python twin)."""
    module = "fastapi_taskflow._core" if request.param == "rust" else "fastapi_taskflow._pycore"
    monkeypatch.setattr(manager_module, "_core_module", importlib.import_module(module))
    return str(request.param)


@pytest.fixture
def db(tmp_path: Path, core_name: str) -> str:
    return str(tmp_path / "tasks.db")


class Clock:
    """The scheduler's clock, moved by the test; starts at ``start`` (epoch seconds)."""

    def __init__(self, start: datetime) -> None:
        self.now = start.timestamp()

    def __call__(self) -> float:
        return self.now

    def set(self, moment: datetime) -> None:
        self.now = moment.timestamp()


def app_for(manager: TaskManager) -> FastAPI:
    app = FastAPI()
    TaskAdmin(app, manager)
    return app


def records(manager: TaskManager, func_name: str) -> list[dict[str, Any]]:
    """Every record of ``func_name``, oldest first."""
    body, _ = manager.core.page_json(func_name=func_name, limit=10_000)
    found: list[dict[str, Any]] = orjson.loads(body)
    return found[::-1]


def call(client: TestClient, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``func`` (a coroutine function or a plain one) on the app's event loop."""
    return client.portal.call(functools.partial(func, *args, **kwargs))  # type: ignore[union-attr]


def move_clock(client: TestClient, manager: TaskManager, clock: Clock, moment: datetime) -> None:
    clock.set(moment)
    call(client, manager.scheduler.wake)


# -- recurring: the execution path ------------------------------------------------------------


def test_every_schedule_fires_repeatedly_as_scheduled_tasks_with_retries_and_logs(db: str) -> None:
    manager = TaskManager(snapshot_db=db)
    attempts: list[int] = []

    @manager.schedule(every=0.2, retries=1)
    async def beat() -> None:
        context = get_task_context()
        assert context is not None
        attempts.append(context.attempt)
        task_log(f"attempt {context.attempt}")
        if context.attempt == 0:
            raise RuntimeError("first attempt fails")

    with TestClient(app_for(manager)) as client:
        wait_for(lambda: sum(r["status"] == "success" for r in records(manager, "beat")) >= 3, what="3 firings")
        listed = client.get("/tasks", params={"name": "beat"}).json()
        manual_id = ManagedBackgroundTasks(manager).add_task(beat)  # registered like a task
    assert len(listed) >= 3
    done = [r for r in records(manager, "beat") if r["status"] == "success" and r["task_id"] != manual_id]
    for record in done:
        assert record["source"] == "scheduled"
        assert record["retries_used"] == 1
        assert record["queue"] == "default"
        first, separator, second = record["logs"]
        assert (first.split(" ", 1)[1], separator, second.split(" ", 1)[1]) == (
            "attempt 0",
            "--- Retry 1 ---",
            "attempt 1",
        )
    assert attempts.count(0) >= 3 and attempts.count(1) >= 3
    assert manager.core.get(manual_id)["source"] == "manual"  # type: ignore[index]


def test_interval_ticks_sit_on_a_grid_from_the_epoch() -> None:
    trigger = make_trigger(60, None, "UTC")
    at = datetime(2024, 1, 1, 12, 0, 42, tzinfo=UTC)
    us = int(at.timestamp()) * 1_000_000
    assert trigger.after(us) == int(datetime(2024, 1, 1, 12, 1, tzinfo=UTC).timestamp()) * 1_000_000
    assert trigger.latest(us) == int(datetime(2024, 1, 1, 12, 0, tzinfo=UTC).timestamp()) * 1_000_000
    # Wherever a process starts within a period, it computes the same next tick: no drift.
    assert trigger.after(us + 17_000_000) == trigger.after(us)


def test_cron_slots_are_read_in_the_schedule_timezone_across_a_dst_change() -> None:
    def us(moment: datetime) -> int:
        return int(moment.timestamp()) * 1_000_000

    trigger = make_trigger(None, "30 9 * * *", "America/New_York")
    # 9:30 in New York is 14:30 UTC in winter and 13:30 UTC once summer time began (10 March 2024).
    saturday = trigger.after(us(datetime(2024, 3, 9, 12, 0, tzinfo=UTC)))
    assert saturday == us(datetime(2024, 3, 9, 14, 30, tzinfo=UTC))
    assert trigger.after(saturday) == us(datetime(2024, 3, 10, 13, 30, tzinfo=UTC))
    assert trigger.latest(saturday) == saturday  # a slot is its own latest tick
    assert make_trigger(None, "0 * * * *", "Asia/Kolkata").after(us(datetime(2024, 1, 1, 10, 10, tzinfo=UTC))) == us(
        datetime(2024, 1, 1, 10, 30, tzinfo=UTC)
    )


def test_cron_schedule_fires_at_its_slots_and_a_late_process_fires_only_the_latest(db: str) -> None:
    manager = TaskManager(snapshot_db=db)
    clock = Clock(datetime(2024, 1, 1, 10, 10, tzinfo=UTC))
    manager.scheduler.clock = clock

    @manager.schedule(cron="0 * * * *", timezone="Asia/Kolkata", queue="reports")
    def hourly() -> None: ...

    def schedule_view(client: TestClient) -> dict[str, Any]:
        response = client.get("/tasks/schedules")
        assert response.status_code == 200
        (view,) = response.json()["recurring"]
        return dict(view)

    with TestClient(app_for(manager)) as client:
        assert schedule_view(client) == {
            "name": "hourly",
            "every": None,
            "cron": "0 * * * *",
            "timezone": "Asia/Kolkata",
            "next_run": "2024-01-01T10:30:00+00:00",  # 16:00 in Kolkata (UTC+5:30)
            "last_run": None,
            "queue": "reports",
        }
        move_clock(client, manager, clock, datetime(2024, 1, 1, 10, 30, 0, 500_000, tzinfo=UTC))
        wait_for(lambda: schedule_view(client)["last_run"] == "2024-01-01T10:30:00+00:00")
        assert schedule_view(client)["next_run"] == "2024-01-01T11:30:00+00:00"
        # Three slots pass unseen (a suspended machine): one firing, for the latest slot.
        move_clock(client, manager, clock, datetime(2024, 1, 1, 13, 45, tzinfo=UTC))
        wait_for(lambda: schedule_view(client)["last_run"] == "2024-01-01T13:30:00+00:00")
        assert schedule_view(client)["next_run"] == "2024-01-01T14:30:00+00:00"
        wait_for(lambda: {r["status"] for r in records(manager, "hourly")} == {"success"})
    fired = records(manager, "hourly")
    assert len(fired) == 2
    assert {(r["source"], r["queue"]) for r in fired} == {("scheduled", "reports")}


def test_shutdown_stops_the_scheduler_and_leaves_no_task_behind(db: str) -> None:
    manager = TaskManager(snapshot_db=db)
    fired = asyncio.Event()

    @manager.schedule(every=0.05, run_on_startup=True)
    async def beat() -> None:
        fired.set()

    async def main() -> list[asyncio.Task[Any]]:
        await manager.startup()
        await asyncio.wait_for(fired.wait(), 30)
        await manager.shutdown()
        return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]

    assert asyncio.run(main()) == []


def test_without_a_file_schedules_fire_in_process_and_one_offs_are_refused() -> None:
    manager = TaskManager()
    fired = threading.Event()

    @manager.schedule(every=0.1)
    def beat() -> None:
        fired.set()

    async def ping() -> None: ...

    manager.task()(ping)
    with TestClient(app_for(manager)) as client:
        wait_for(fired.is_set, what="a firing without a snapshot file")
        with pytest.raises(RuntimeError, match="snapshot_db"):
            call(client, manager.schedule_once, ping, run_at=datetime.now(UTC), run_key="k")
        with pytest.raises(RuntimeError, match="snapshot_db"):
            call(client, manager.cancel_scheduled, "k")
        with pytest.raises(RuntimeError, match="snapshot_db"):
            call(client, manager.list_scheduled)
        schedules = client.get("/tasks/schedules").json()
        assert schedules["one_off"] == [] and [s["name"] for s in schedules["recurring"]] == ["beat"]
        assert client.delete("/tasks/schedules/k").status_code == 404


# -- a firing that fails does not stop the scheduler ------------------------------------------------


def test_a_full_queue_rejects_a_tick_and_later_ticks_fire(db: str, caplog: pytest.LogCaptureFixture) -> None:
    manager = TaskManager(snapshot_db=db, queues={"default": QueueConfig(concurrency=1, max_size=1)})
    started, release = threading.Event(), threading.Event()

    @manager.task()
    def hold() -> None:
        started.set()
        release.wait(30)

    @manager.schedule(every=0.1)
    def beat() -> None: ...

    def count(status: str) -> int:
        return sum(r["status"] == status for r in records(manager, "beat"))

    caplog.set_level(logging.ERROR, logger="fastapi_taskflow")
    with TestClient(app_for(manager)):
        ManagedBackgroundTasks(manager).add_task(hold)
        # It holds the only slot: the next tick waits, and fills the queue; the ones after are refused.
        wait_for(started.is_set)
        wait_for(lambda: count("rejected") >= 2, what="ticks refused by the full queue")
        succeeded = count("success")
        release.set()
        wait_for(lambda: count("success") > succeeded, what="a tick after the queue emptied")
    refused = [r for r in records(manager, "beat") if r["status"] == "rejected"]
    assert "Queue 'default' is full" in refused[0]["error"]
    assert any("schedule 'beat' could not fire" in r.getMessage() for r in caplog.records)


class FailingStore:
    """The manager's core, except that ``method`` raises ``SnapshotError`` for its first ``failures`` calls.

    Handed to the schedules as their file (``FileSchedules``), as the manager does with its core.
    """

    def __init__(self, core: Any, method: str, failures: int) -> None:
        self._core = core
        self._method = method
        self.failures = failures

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._core, name)
        if name != self._method:
            return real

        def failing(*args: Any, **kwargs: Any) -> Any:
            if self.failures:
                self.failures -= 1
                raise SnapshotError("disk I/O error (from the test)")
            return real(*args, **kwargs)

        return failing


def test_a_failing_lock_skips_ticks_and_later_ticks_fire(db: str, caplog: pytest.LogCaptureFixture) -> None:
    manager = TaskManager(snapshot_db=db)
    store = FailingStore(manager.core, "acquire_lock", failures=3)
    manager.schedules = FileSchedules(store)  # type: ignore[arg-type]

    @manager.schedule(every=0.1)
    def beat() -> None: ...

    with TestClient(app_for(manager)):
        wait_for(lambda: any(r["status"] == "success" for r in records(manager, "beat")))
    assert store.failures == 0
    logged = [r.getMessage() for r in caplog.records if "schedule 'beat' could not fire" in r.getMessage()]
    assert len(logged) == 3


def test_a_failing_read_of_one_off_runs_is_retried(
    db: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scheduling_once, "RETRY_PAUSE", 0.05)
    manager = TaskManager(snapshot_db=db)
    store = FailingStore(manager.core, "load_due", failures=2)
    manager.schedules = FileSchedules(store)  # type: ignore[arg-type]
    ran = threading.Event()

    @manager.task()
    def once() -> None:
        ran.set()

    with TestClient(app_for(manager)) as client:
        call(client, manager.schedule_once, once, run_at=datetime.now(UTC), run_key="soon")
        wait_for(ran.is_set, what="the one-off after two failed reads")
    assert store.failures == 0
    assert any("cannot read the one-off runs" in r.getMessage() for r in caplog.records)


# -- one-off runs ------------------------------------------------------------------------------------


def test_one_off_fires_at_its_time_with_its_arguments_tags_priority_and_queue(db: str) -> None:
    manager = TaskManager(snapshot_db=db, queues={"mail": QueueConfig(concurrency=2)})
    clock = Clock(datetime.now(UTC))
    manager.scheduler.clock = clock
    received: list[tuple[str, int]] = []

    @manager.task(queue="mail")
    async def remind(user: str, *, days: int) -> None:
        received.append((user, days))

    run_at = datetime.now(UTC) + timedelta(minutes=1)
    assert manager.scheduler.recurring == {}  # no @schedule at all
    with TestClient(app_for(manager)) as client:
        call(
            client,
            manager.schedule_once,
            remind,
            "ada",
            days=13,
            run_at=run_at,
            run_key="trial:ada",
            tags={"plan": "trial"},
            priority=4,
        )
        (listed,) = call(client, manager.list_scheduled)
        assert listed == ScheduledOnce(
            run_key="trial:ada",
            func_name="remind",
            fire_at=run_at,
            args=("ada",),
            kwargs={"days": 13},
            queue="mail",
            priority=4,
            tags={"plan": "trial"},
            created_at=listed.created_at,
        )
        move_clock(client, manager, clock, run_at + timedelta(seconds=1))
        wait_for(lambda: received == [("ada", 13)], what="the one-off run")
        assert call(client, manager.list_scheduled) == []
        wait_for(lambda: records(manager, "remind")[0]["status"] == "success")
    (record,) = records(manager, "remind")
    assert (record["source"], record["queue"], record["priority"], record["tags"]) == (
        "scheduled",
        "mail",
        4,
        {"plan": "trial"},
    )


def test_one_off_survives_a_restart_and_fires_without_any_schedule(db: str) -> None:
    run_at = datetime.now(UTC) + timedelta(hours=1)
    first = TaskManager(snapshot_db=db)
    received: list[str] = []

    async def report(name: str) -> None:
        received.append(name)

    first.task()(report)
    with TestClient(app_for(first)) as client:
        call(client, first.schedule_once, report, "q2", run_at=run_at, run_key="report")
    first.core.close()
    assert received == []

    second = TaskManager(snapshot_db=db)  # a new process on the same file, an hour later
    second.task()(report)
    second.scheduler.clock = Clock(run_at + timedelta(seconds=5))
    assert second.scheduler.recurring == {}
    with TestClient(app_for(second)):
        wait_for(lambda: received == ["q2"], what="the one-off after the restart")
    assert query(db, "SELECT count(*) AS n FROM task_scheduled_once") == [{"n": 0}]


def test_past_run_at_fires_promptly_and_naive_run_at_is_utc(db: str) -> None:
    manager = TaskManager(snapshot_db=db)
    received: list[int] = []

    @manager.task()
    def work(n: int) -> None:
        received.append(n)

    naive = datetime(2030, 1, 1, 12, 0)
    with TestClient(app_for(manager)) as client:
        call(client, manager.schedule_once, work, 1, run_at=naive, run_key="later")
        (listed,) = call(client, manager.list_scheduled, before=datetime(2031, 1, 1, tzinfo=UTC))
        assert listed.fire_at == datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
        call(client, manager.schedule_once, work, 2, run_at=datetime.now(UTC) - timedelta(days=1), run_key="past")
        # Well within the 150 s between two reads of the file: armed when it was saved.
        wait_for(lambda: received == [2], timeout=30, what="a past run_at")
        assert [s.run_key for s in call(client, manager.list_scheduled, before=datetime(2031, 1, 1, tzinfo=UTC))] == [
            "later"
        ]


def test_saving_a_run_key_again_reschedules_it_and_list_is_soonest_first(db: str) -> None:
    manager = TaskManager(snapshot_db=db)
    received: list[str] = []

    @manager.task()
    def work(label: str) -> None:
        received.append(label)

    now = datetime.now(UTC)
    with TestClient(app_for(manager)) as client:
        call(client, manager.schedule_once, work, "old", run_at=now + timedelta(days=2), run_key="a")
        call(client, manager.schedule_once, work, "b", run_at=now + timedelta(days=1), run_key="b")
        call(client, manager.schedule_once, work, "c", run_at=now + timedelta(days=3), run_key="c")
        assert [s.run_key for s in call(client, manager.list_scheduled)] == ["b", "a", "c"]
        assert [s.run_key for s in call(client, manager.list_scheduled, before=now + timedelta(days=2))] == ["b", "a"]
        call(client, manager.schedule_once, work, "new", run_at=now - timedelta(seconds=1), run_key="a")
        wait_for(lambda: received == ["new"], what="the rescheduled run")
        assert [s.run_key for s in call(client, manager.list_scheduled)] == ["b", "c"]


def test_a_cancelled_run_never_fires(db: str) -> None:
    manager = TaskManager(snapshot_db=db)
    clock = Clock(datetime.now(UTC))
    manager.scheduler.clock = clock
    received: list[str] = []

    @manager.task()
    def work(label: str) -> None:
        received.append(label)

    at = datetime.now(UTC) + timedelta(hours=1)
    with TestClient(app_for(manager)) as client:
        call(client, manager.schedule_once, work, "cancelled", run_at=at, run_key="x")
        call(client, manager.schedule_once, work, "kept", run_at=at, run_key="y")
        assert call(client, manager.cancel_scheduled, "x") is True
        assert call(client, manager.cancel_scheduled, "x") is False
        move_clock(client, manager, clock, at + timedelta(seconds=1))
        wait_for(lambda: received == ["kept"], what="the run that was not cancelled")
        assert call(client, manager.cancel_scheduled, "y") is False  # it fired
    assert received == ["kept"]


def test_an_idempotency_key_held_when_the_run_fires_skips_it(db: str) -> None:
    manager = TaskManager(snapshot_db=db)
    received: list[str] = []

    @manager.task()
    def charge(label: str) -> None:
        received.append(label)

    holder = ManagedBackgroundTasks(manager)
    with TestClient(app_for(manager)) as client:
        holder_id = holder.add_task(charge, "by hand", idempotency_key="invoice-7")
        call(client, holder.tasks[0])
        now = datetime.now(UTC)
        call(client, manager.schedule_once, charge, "dup", run_at=now, run_key="r1", idempotency_key="invoice-7")
        call(client, manager.schedule_once, charge, "own", run_at=now, run_key="r2", idempotency_key="invoice-8")
        wait_for(lambda: "own" in received, what="the run with a free key")
        wait_for(lambda: call(client, manager.list_scheduled) == [], what="both runs consumed")
    assert received == ["by hand", "own"]
    assert [r["task_id"] for r in records(manager, "charge") if r["source"] == "manual"] == [holder_id]
    assert len(records(manager, "charge")) == 2


class _SaveDuringRead:
    """The manager's core, but a run is saved (as ``schedule_once`` does) while ``load_due`` reads."""

    def __init__(self, core: Any, save: Callable[[], None]) -> None:
        self._core = core
        self._save = save

    def __getattr__(self, name: str) -> Any:
        return getattr(self._core, name)

    def load_due(self, before_us: int, limit: int) -> list[dict[str, object]]:
        rows: list[dict[str, object]] = self._core.load_due(before_us, limit)
        self._save()
        return rows


def test_a_run_saved_while_the_file_is_read_stays_armed(db: str) -> None:
    manager = TaskManager(snapshot_db=db)
    one_offs = scheduling_once.OneOffs(manager)
    now_us = round(datetime.now(UTC).timestamp() * 1_000_000)

    def save() -> None:
        manager.core.save_scheduled("late", "charge", now_us)
        one_offs.saved("late", now_us, now_us)

    manager.schedules = FileSchedules(_SaveDuringRead(manager.core, save))  # type: ignore[arg-type]
    asyncio.run(one_offs.run_due(now_us))
    # The read returned before the run existed: it must stay armed, due now, so the loop
    # reads again at once instead of at the next refill minutes later.
    assert one_offs.armed == 1
    assert one_offs.deadline() <= now_us


def test_encrypted_one_off_stores_only_ciphertext_and_runs_with_its_arguments(db: str) -> None:
    from cryptography.fernet import Fernet

    manager = TaskManager(snapshot_db=db, encrypt_args_key=Fernet.generate_key())
    received: list[str] = []

    @manager.task()
    def send(secret: str) -> None:
        received.append(secret)

    with TestClient(app_for(manager)) as client:
        at = datetime.now(UTC) + timedelta(days=1)
        call(client, manager.schedule_once, send, "s3cret", run_at=at, run_key="enc")
        (listed,) = call(client, manager.list_scheduled)
        assert listed.args == () and listed.kwargs == {} and listed.encrypted_payload
        assert b"s3cret" not in listed.encrypted_payload
        call(client, manager.schedule_once, send, "s3cret", run_at=datetime.now(UTC), run_key="enc")
        wait_for(lambda: received == ["s3cret"])


# -- bad arguments -----------------------------------------------------------------------------------


def test_schedule_arguments_are_checked_at_decoration() -> None:
    manager = TaskManager()

    def beat() -> None: ...

    def needs(value: int) -> None: ...

    for kwargs, message in [
        ({}, "exactly one of every"),
        ({"every": 1, "cron": "* * * * *"}, "exactly one of every"),
        ({"every": 0}, "positive number"),
        ({"every": -5}, "positive number"),
        ({"every": True}, "positive number"),
        ({"every": float("inf")}, "positive number"),
        ({"cron": "* * * *"}, "5 fields"),
        ({"cron": "* * * * * *"}, "5 fields"),
        ({"cron": "61 * * * *"}, "not valid"),
        ({"cron": "0 0 30 2 *"}, "no next slot"),
        ({"every": 1, "timezone": "Mars/Olympus"}, "unknown timezone"),
    ]:
        with pytest.raises(ValueError, match=message):
            manager.schedule(**kwargs)(beat)
    with pytest.raises(ValueError, match="without arguments"):
        manager.schedule(every=1)(needs)
    manager.schedule(every=1)(beat)
    with pytest.raises(ValueError, match="named 'beat' exists already"):
        manager.schedule(every=2)(beat)


def test_cron_without_croniter_names_the_extra_at_decoration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "croniter", None)  # makes `import croniter` fail
    with pytest.raises(ImportError, match=r"fastapi-taskflow-rs\[cron\]"):
        TaskManager().schedule(cron="* * * * *")


def test_schedule_once_refuses_what_could_never_run(db: str) -> None:
    manager = TaskManager(snapshot_db=db)

    @manager.task()
    def work(value: object) -> None: ...

    def unregistered() -> None: ...

    now = datetime.now(UTC)
    with TestClient(app_for(manager)) as client:
        with pytest.raises(ValueError, match="not a registered task"):
            call(client, manager.schedule_once, unregistered, run_at=now, run_key="k")
        with pytest.raises(ValueError, match="run_key"):
            call(client, manager.schedule_once, work, 1, run_at=now, run_key="")
        with pytest.raises(TypeError, match="run_at must be a datetime"):
            call(client, manager.schedule_once, work, 1, run_at="tomorrow", run_key="k")
        with pytest.raises(TypeError, match=r"positional argument 0 \(object\) of one-off run of 'work'"):
            call(client, manager.schedule_once, work, object(), run_at=now, run_key="k")
        with pytest.raises(TypeError, match="priority"):
            call(client, manager.schedule_once, work, 1, run_at=now, run_key="k", priority="high")
        assert call(client, manager.list_scheduled) == []


# -- routes ----------------------------------------------------------------------------------------


def test_schedule_routes_list_and_cancel(db: str) -> None:
    manager = TaskManager(snapshot_db=db)

    @manager.schedule(every=3600, queue="reports")
    def hourly() -> None: ...

    @manager.task()
    def work() -> None: ...

    at = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)
    with TestClient(app_for(manager)) as client:
        call(client, manager.schedule_once, work, run_at=at, run_key="june/1", tags={"k": "v"})
        body = client.get("/tasks/schedules").json()
        (recurring,) = body["recurring"]
        assert set(recurring) == {"name", "every", "cron", "timezone", "next_run", "last_run", "queue"}
        assert (recurring["name"], recurring["every"], recurring["cron"], recurring["queue"]) == (
            "hourly",
            3600,
            None,
            "reports",
        )
        assert datetime.fromisoformat(recurring["next_run"]).minute == 0
        (one_off,) = body["one_off"]
        assert one_off == {
            "run_key": "june/1",
            "func_name": "work",
            "fire_at": at.isoformat(),
            "queue": "default",
            "priority": None,
            "tags": {"k": "v"},
            "created_at": one_off["created_at"],
        }
        assert client.delete("/tasks/schedules/june/1").json() == {"run_key": "june/1", "cancelled": True}
        missing = client.delete("/tasks/schedules/june/1")
        assert (missing.status_code, missing.json()) == (404, {"detail": "Scheduled run not found"})
        assert client.get("/tasks/schedules").json()["one_off"] == []
        (entry,) = [e for e in client.get("/tasks/audit").json() if e["action"] == "cancel_scheduled"]
        assert entry["task_id"] == "june/1"


# -- queue limits kept in the file (the same metadata the scheduler's store offers) -----------------------


def test_queue_limits_changed_at_run_time_are_applied_at_the_next_start(db: str) -> None:
    def make() -> TaskManager:
        return TaskManager(snapshot_db=db, queues={"mail": QueueConfig(concurrency=1, max_size=10)})

    first = make()
    with TestClient(app_for(first)) as client:
        response = client.patch("/tasks/queues/mail", json={"concurrency": 4, "max_size": None})
        assert response.status_code == 200
    first.core.close()
    saved = query(db, "SELECT value FROM task_metadata WHERE key = 'queue_configs'")
    assert orjson.loads(saved[0]["value"])["mail"] == {"concurrency": 4, "max_size": None}

    second = make()
    with TestClient(app_for(second)):
        stats = {q["name"]: q for q in second.queue_stats()}
    assert (stats["mail"]["concurrency"], stats["mail"]["max_size"]) == (4, None)
    assert stats["default"]["concurrency"] is None


# -- several processes on one file ------------------------------------------------------------------

# A process running one schedule on a shared file until the file `stop` appears; argv = db,
# out (each run appends a line), stop, mode ("every": every second; "startup": run_on_startup).
PROCESS = r"""
import asyncio, json, os, sys
from fastapi_taskflow import TaskManager

db, out, stop, mode = sys.argv[1:5]
manager = TaskManager(snapshot_db=db)

def beat() -> None:
    with open(out, "a") as f:
        f.write(f"{os.getpid()}\n")

if mode == "every":
    manager.schedule(every=1)(beat)
else:
    manager.schedule(every=3600, run_on_startup=True)(beat)

async def main() -> None:
    await manager.startup()
    # Ready once the start-up firing happened here or was taken by the other process.
    while mode == "startup" and manager.scheduler.recurring["beat"].last_us is None:
        await asyncio.sleep(0.01)
    open(f"{out}.ready.{os.getpid()}", "w").close()
    while not os.path.exists(stop):
        await asyncio.sleep(0.02)
    # No tick taken is left unrun: stop firing, then let what was fired finish.
    await manager.scheduler.stop()
    while True:
        metrics = json.loads(manager.core.metrics_json())
        if metrics["pending"] + metrics["running"] == 0:
            break
        await asyncio.sleep(0.01)
    await manager.shutdown()

asyncio.run(main())
"""


@pytest.fixture(params=["rust", "python"])
def process_core(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def two_processes(tmp_path: Path, mode: str, core: str, until: Callable[[Path], bool]) -> list[str]:
    """Run two processes on one file until ``until(out)``; the lines their runs wrote."""
    db, out, stop = tmp_path / "tasks.db", tmp_path / "runs.txt", tmp_path / "stop"
    env = {**os.environ, "FASTAPI_TASKFLOW_CORE": core}
    processes = [
        subprocess.Popen([sys.executable, "-c", PROCESS, str(db), str(out), str(stop), mode], env=env) for _ in range(2)
    ]
    try:
        wait_for(lambda: len(list(tmp_path.glob("runs.txt.ready.*"))) == 2, what="both processes started")
        wait_for(lambda: until(out), timeout=60, what="enough runs")
        stop.touch()
        for process in processes:
            assert process.wait(timeout=60) == 0
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    return out.read_text().split() if out.exists() else []


def test_two_processes_on_one_file_fire_each_tick_once(tmp_path: Path, process_core: str) -> None:
    runs = two_processes(
        tmp_path, "every", process_core, lambda out: out.exists() and len(out.read_text().split()) >= 6
    )
    ticks = query(
        tmp_path / "tasks.db", "SELECT lock_key FROM task_schedule_locks WHERE lock_key LIKE 'schedule:beat:%'"
    )
    labels = [row["lock_key"].removeprefix("schedule:beat:") for row in ticks]
    # One lock per tick, on the whole-second grid, and exactly one run per lock taken.
    assert all(label.isdigit() for label in labels), labels
    assert len(runs) == len(labels) >= 6


def test_run_on_startup_fires_once_for_processes_starting_together(tmp_path: Path, process_core: str) -> None:
    runs = two_processes(tmp_path, "startup", process_core, lambda out: True)
    assert len(runs) == 1
