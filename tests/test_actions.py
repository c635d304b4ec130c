"""The action routes: retry, bulk retry, retry-failed, cancel, DELETE history and the audit log."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from polling import wait_for
from sqlite_peek import query

from fastapi_taskflow import ManagedBackgroundTasks, TaskAdmin, TaskManager
from fastapi_taskflow import actions as actions_module
from fastapi_taskflow.actions import ActionRefused, parse_since
from fastapi_taskflow.audit import AuditLog
from fastapi_taskflow.models import AuditEntry

FINISHED = ("success", "failed", "interrupted", "cancelled", "rejected")
DEADLINE = 10.0


def make_app(manager: TaskManager, funcs: dict[str, Callable[..., Any]], **admin: Any) -> FastAPI:
    """An app whose ``POST /submit/{key}`` adds ``funcs[key]`` with the JSON body's args, kwargs, tags, priority."""
    app = FastAPI()
    TaskAdmin(app, manager, **admin)

    @app.post("/submit/{key}")
    def submit(
        key: str, body: dict[str, Any], tasks: ManagedBackgroundTasks = Depends(manager.get_tasks)
    ) -> dict[str, str]:
        task_id = tasks.add_task(
            funcs[key],
            *body.get("args", []),
            tags=body.get("tags"),
            priority=body.get("priority"),
            **body.get("kwargs", {}),
        )
        return {"task_id": task_id}

    return app


def submit(client: TestClient, key: str, **body: Any) -> str:
    response = client.post(f"/submit/{key}", json=body)
    assert response.status_code == 200, response.text
    task_id: str = response.json()["task_id"]
    return task_id


def task_json(client: TestClient, task_id: str) -> dict[str, Any]:
    response = client.get(f"/tasks/{task_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def wait_status(client: TestClient, task_id: str, *statuses: str) -> dict[str, Any]:
    """Poll the task until its status is one of ``statuses``; its detail then."""

    def reached() -> bool:
        response = client.get(f"/tasks/{task_id}")
        return response.status_code == 200 and response.json()["status"] in statuses

    wait_for(reached, DEADLINE, f"task {task_id} in {statuses}")
    body: dict[str, Any] = client.get(f"/tasks/{task_id}").json()
    return body


def wait_until(condition: Callable[[], bool], what: str) -> None:
    wait_for(condition, DEADLINE, what)


def audit(client: TestClient) -> list[dict[str, Any]]:
    response = client.get("/tasks/audit")
    assert response.status_code == 200, response.text
    entries: list[dict[str, Any]] = response.json()
    return entries


def history_rows(db: Path) -> list[tuple[str, str]]:
    return [(r["task_id"], r["status"]) for r in query(db, "SELECT task_id, status FROM task_history")]


class Flaky:
    """Records each call's arguments; raises while ``failing``."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.failing = True

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append((*args, *sorted(kwargs.items())))
        if self.failing:
            raise RuntimeError("boom")


def register(manager: TaskManager, flaky: Flaky, name: str, **config: Any) -> Callable[..., None]:
    """A registered plain function named ``name`` that delegates to ``flaky``."""

    def func(*args: Any, **kwargs: Any) -> None:
        flaky(*args, **kwargs)

    func.__name__ = func.__qualname__ = name
    manager.task(**config)(func)
    return func


# -- retry ---------------------------------------------------------------------------


def test_retry_runs_the_task_again_with_its_arguments_tags_and_priority() -> None:
    manager = TaskManager()
    flaky = Flaky()
    charge = register(manager, flaky, "charge")
    with TestClient(make_app(manager, {"charge": charge})) as client:
        original = submit(client, "charge", args=[10], kwargs={"currency": "eur"}, tags={"tenant": "a"}, priority=5)
        assert task_json(client, original)["status"] == "failed"
        flaky.failing = False

        response = client.post(f"/tasks/{original}/retry")
        assert response.status_code == 200, response.text
        body = response.json()
        new_id = body["task_id"]
        assert new_id != original
        assert uuid.UUID(new_id).version == 4
        assert body["task"]["task_id"] == new_id
        assert body["task"]["func_name"] == "charge"
        assert body["task"]["status"] in ("pending", "running", "success")
        assert body["task"]["retry_of"] == original

        retried = wait_status(client, new_id, "success")
        assert retried["tags"] == {"tenant": "a"}
        assert retried["priority"] == 5
        assert retried["queue"] == "default"
        assert retried["source"] == "manual"
        assert retried["retry_of"] == original
        # retry_replaces_original (the default): the original is gone.
        assert client.get(f"/tasks/{original}").status_code == 404
        assert flaky.calls == [(10, ("currency", "eur"))] * 2

        (entry,) = audit(client)
        assert entry["action"] == "retry"
        assert entry["task_id"] == original
        assert entry["actor"] == "anonymous"
        assert entry["detail"] == {"new_task_id": new_id}


def test_retry_keeps_the_original_without_retry_replaces_original() -> None:
    manager = TaskManager(retry_replaces_original=False)
    flaky = Flaky()
    job = register(manager, flaky, "job")
    with TestClient(make_app(manager, {"job": job})) as client:
        original = submit(client, "job", args=["x"])
        first = client.post(f"/tasks/{original}/retry").json()["task_id"]
        second = client.post(f"/tasks/{original}/retry").json()["task_id"]
        assert first != second
        for new_id in (first, second):
            assert wait_status(client, new_id, "failed")["retry_of"] == original
        assert task_json(client, original)["status"] == "failed"
        assert flaky.calls == [("x",)] * 3


def test_retry_of_a_function_registered_under_another_name() -> None:
    manager = TaskManager()
    flaky = Flaky()

    @manager.task(name="billing.charge")
    def charge(amount: int) -> None:
        flaky(amount)

    with TestClient(make_app(manager, {"charge": charge})) as client:
        original = submit(client, "charge", args=[3])
        assert task_json(client, original)["func_name"] == "billing.charge"
        flaky.failing = False
        response = client.post(f"/tasks/{original}/retry")
        assert response.status_code == 200, response.text
        assert wait_status(client, response.json()["task_id"], "success")["func_name"] == "billing.charge"
    assert flaky.calls == [(3,), (3,)]


def test_retry_errors() -> None:
    manager = TaskManager()
    flaky = Flaky()
    job = register(manager, flaky, "job")

    def unregistered() -> None:
        raise RuntimeError("unregistered")

    def fine() -> None:
        pass

    manager.task()(fine)
    with TestClient(make_app(manager, {"job": job, "unregistered": unregistered, "fine": fine})) as client:
        missing = client.post(f"/tasks/{uuid.uuid4()}/retry")
        assert (missing.status_code, missing.json()) == (404, {"detail": "Task not found"})

        succeeded = submit(client, "fine")
        refused = client.post(f"/tasks/{succeeded}/retry")
        assert refused.status_code == 400
        assert "success" in refused.json()["detail"]

        orphan = submit(client, "unregistered")
        assert task_json(client, orphan)["status"] == "failed"
        conflict = client.post(f"/tasks/{orphan}/retry")
        assert conflict.status_code == 409
        assert "not registered" in conflict.json()["detail"]
        # Nothing was dispatched, deleted or audited.
        assert task_json(client, orphan)["status"] == "failed"
        assert audit(client) == []


def test_retry_after_a_restart_reads_persisted_arguments(tmp_path: Path) -> None:
    db = str(tmp_path / "tasks.db")
    flaky = Flaky()

    def build() -> FastAPI:
        manager = TaskManager(snapshot_db=db)
        kept = register(manager, flaky, "kept", persist=True)
        lost = register(manager, flaky, "lost")
        return make_app(manager, {"kept": kept, "lost": lost})

    with TestClient(build()) as client:
        kept_id = submit(client, "kept", args=[1, [2, 3]], kwargs={"k": "v"})
        lost_id = submit(client, "lost", args=[4])
        wait_status(client, kept_id, "failed")
        wait_status(client, lost_id, "failed")

    flaky.failing = False
    with TestClient(build()) as client:
        response = client.post(f"/tasks/{kept_id}/retry")
        assert response.status_code == 200, response.text
        wait_status(client, response.json()["task_id"], "success")
        # A task that was not persistent kept its arguments only in the old process's memory.
        gone = client.post(f"/tasks/{lost_id}/retry")
        assert gone.status_code == 409
        assert "no longer available" in gone.json()["detail"]
    assert flaky.calls == [(1, [2, 3], ("k", "v")), (4,), (1, [2, 3], ("k", "v"))]


@pytest.mark.parametrize("restart", [False, True], ids=["same-process", "after-restart"])
def test_retry_keeps_encrypted_arguments(tmp_path: Path, restart: bool) -> None:
    fernet = pytest.importorskip("cryptography.fernet")
    key = fernet.Fernet.generate_key()
    db = tmp_path / "tasks.db"
    flaky = Flaky()

    def build() -> FastAPI:
        manager = TaskManager(snapshot_db=str(db), encrypt_args_key=key)
        secret = register(manager, flaky, "secret", persist=True)
        return make_app(manager, {"secret": secret})

    def retry(client: TestClient, task_id: str) -> str:
        flaky.failing = False
        response = client.post(f"/tasks/{task_id}/retry")
        assert response.status_code == 200, response.text
        new_id: str = response.json()["task_id"]
        wait_status(client, new_id, "success")
        return new_id

    with TestClient(build()) as client:
        original = submit(client, "secret", args=["card-4242"], kwargs={"cvc": "123"})
        wait_status(client, original, "failed")
        if not restart:
            new_id = retry(client, original)
    if restart:
        with TestClient(build()) as client:
            new_id = retry(client, original)

    assert flaky.calls == [("card-4242", ("cvc", "123"))] * 2
    (row,) = query(db, "SELECT encrypted_payload, args_json, retry_of FROM task_history WHERE task_id = ?", (new_id,))
    payload, args_json, retry_of = row["encrypted_payload"], row["args_json"], row["retry_of"]
    assert payload is not None
    assert args_json is None
    assert b"card-4242" not in bytes(payload)
    assert retry_of == original


# -- bulk retries ---------------------------------------------------------------------


def test_bulk_retry_dispatches_retryable_tasks_and_skips_the_rest() -> None:
    manager = TaskManager()
    flaky = Flaky()
    job = register(manager, flaky, "job")

    def unregistered() -> None:
        raise RuntimeError("unregistered")

    def fine() -> None:
        pass

    manager.task()(fine)
    with TestClient(make_app(manager, {"job": job, "unregistered": unregistered, "fine": fine})) as client:
        first, second = submit(client, "job", args=[1]), submit(client, "job", args=[2])
        succeeded = submit(client, "fine")
        orphan = submit(client, "unregistered")
        flaky.failing = False
        ids = [first, succeeded, "no-such-task", orphan, second, first]

        response = client.post("/tasks/bulk-retry", json={"task_ids": ids})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["dispatched"] == 2
        # success, unknown, unregistered, and the repeated first id.
        assert body["skipped"] == 4
        assert [r["original_task_id"] for r in body["results"]] == [first, second]
        for result in body["results"]:
            assert wait_status(client, result["new_task_id"], "success")["retry_of"] == result["original_task_id"]
        assert sorted(flaky.calls) == [(1,), (1,), (2,), (2,)]

        (entry,) = audit(client)
        assert (entry["action"], entry["task_id"], entry["actor"]) == ("bulk_retry", "bulk", "anonymous")
        assert entry["detail"] == {"dispatched": 2, "skipped": 4, "task_ids": ids[:5]}


def test_bulk_retry_audits_at_most_20_ids() -> None:
    manager = TaskManager()
    with TestClient(make_app(manager, {})) as client:
        ids = [f"unknown-{i}" for i in range(25)]
        body = client.post("/tasks/bulk-retry", json={"task_ids": ids}).json()
        assert body == {"dispatched": 0, "skipped": 25, "results": []}
        assert audit(client)[0]["detail"]["task_ids"] == ids[:20]


@pytest.mark.parametrize(
    "body",
    [{}, {"task_ids": "abc"}, {"task_ids": [1, 2]}, {"task_ids": None}, {"ids": []}, "not json"],
)
def test_bulk_retry_refuses_a_bad_body(body: Any) -> None:
    manager = TaskManager()
    with TestClient(make_app(manager, {})) as client:
        if isinstance(body, str):
            response = client.post("/tasks/bulk-retry", content=body, headers={"content-type": "application/json"})
        else:
            response = client.post("/tasks/bulk-retry", json=body)
        assert response.status_code == 422
        assert audit(client) == []


def test_retry_failed_by_window_and_function() -> None:
    manager = TaskManager()
    flaky_a, flaky_b = Flaky(), Flaky()
    a = register(manager, flaky_a, "a")
    b = register(manager, flaky_b, "b")

    def unregistered() -> None:
        raise RuntimeError("unregistered")

    with TestClient(make_app(manager, {"a": a, "b": b, "unregistered": unregistered})) as client:
        a1, b1, a2 = submit(client, "a", args=[1]), submit(client, "b", args=[1]), submit(client, "a", args=[2])
        orphan = submit(client, "unregistered")
        # An interrupted and a rejected task of b whose arguments are on record.
        interrupted, _ = manager.core.create("b", args_json=b"[2]", kwargs_json=b"{}")
        assert manager.core.transition(interrupted, "interrupted")
        rejected, _ = manager.core.create("b", args_json=b"[3]", kwargs_json=b"{}")
        assert manager.core.transition(rejected, "rejected")
        flaky_a.failing = flaky_b.failing = False

        # Every task was created before now, so an empty window holds none.
        empty = client.post("/tasks/retry-failed", params={"since": "0h"}).json()
        assert empty == {"dispatched": 0, "skipped": 0, "results": []}

        only_b = client.post("/tasks/retry-failed", params={"since": "1h", "func_name": "b"})
        assert only_b.status_code == 200, only_b.text
        body = only_b.json()
        assert (body["dispatched"], body["skipped"]) == (2, 0)
        # Oldest first; the rejected task is not a candidate.
        assert [r["original_task_id"] for r in body["results"]] == [b1, interrupted]
        for result in body["results"]:
            wait_status(client, result["new_task_id"], "success")
        assert task_json(client, rejected)["status"] == "rejected"

        everything = client.post("/tasks/retry-failed", params={"since": "all"}).json()
        assert [r["original_task_id"] for r in everything["results"]] == [a1, a2]
        assert everything["skipped"] == 1  # the unregistered function's task
        for result in everything["results"]:
            wait_status(client, result["new_task_id"], "success")
        assert task_json(client, orphan)["status"] == "failed"
        # Retries run concurrently, so only the multiset of calls is known.
        assert sorted(flaky_a.calls) == [(1,), (1,), (2,), (2,)]
        assert sorted(flaky_b.calls) == [(1,), (1,), (2,)]

        newest, older, oldest = audit(client)
        assert newest["detail"] == {"since": "all", "func_name": None, "dispatched": 2, "skipped": 1}
        assert older["detail"] == {"since": "1h", "func_name": "b", "dispatched": 2, "skipped": 0}
        assert oldest["detail"] == {"since": "0h", "func_name": None, "dispatched": 0, "skipped": 0}
        assert {e["action"] for e in (newest, older, oldest)} == {"bulk_retry"}


def test_retry_failed_defaults_to_six_hours() -> None:
    manager = TaskManager()
    with TestClient(make_app(manager, {})) as client:
        response = client.post("/tasks/retry-failed")
        assert response.status_code == 200
        assert audit(client)[0]["detail"]["since"] == "6h"


@pytest.mark.parametrize("since", ["6", "h", "6x", "-1h", "1.5h", "", "ALL", "6 h", "6hh", "d6"])
def test_retry_failed_refuses_a_bad_since(since: str) -> None:
    manager = TaskManager()
    with TestClient(make_app(manager, {})) as client:
        response = client.post("/tasks/retry-failed", params={"since": since})
        assert response.status_code == 400
        assert "since" in response.json()["detail"]
        assert audit(client) == []


def test_parse_since() -> None:
    assert parse_since("all") is None
    six_hours = parse_since("6h")
    assert six_hours is not None
    expected = datetime.now(timezone.utc) - timedelta(hours=6)
    assert abs((six_hours - expected).total_seconds()) < 60
    two_days = parse_since("2d")
    assert two_days is not None
    assert abs((two_days - (datetime.now(timezone.utc) - timedelta(days=2))).total_seconds()) < 60
    # Longer ago than the calendar reaches: every task is in the window.
    assert parse_since("99999999999d") is None
    with pytest.raises(ActionRefused) as refused:
        parse_since("6m")
    assert refused.value.status_code == 400


# -- cancel ---------------------------------------------------------------------------


def test_cancelling_a_pending_task_means_it_never_runs() -> None:
    manager = TaskManager()
    release = threading.Event()
    ran: list[str] = []
    accepted: list[str] = []

    @manager.task()
    def blocker() -> None:
        release.wait(DEADLINE)

    @manager.task()
    def later() -> None:
        ran.append("later")

    app = make_app(manager, {})

    @app.post("/pair")
    def pair(tasks: ManagedBackgroundTasks = Depends(manager.get_tasks)) -> None:
        # The second task stays pending until the first ends: a request's tasks run in order.
        accepted.extend([tasks.add_task(blocker), tasks.add_task(later)])

    with TestClient(app) as client:
        request = threading.Thread(target=client.post, args=("/pair",))
        request.start()
        try:
            wait_until(lambda: len(accepted) == 2, "the two tasks to be accepted")
            first, second = accepted
            wait_status(client, first, "running")
            assert task_json(client, second)["status"] == "pending"

            response = client.post(f"/tasks/{second}/cancel")
            assert response.status_code == 200, response.text
            assert response.json()["task_id"] == second
            assert response.json()["task"]["status"] == "cancelled"
            assert client.post(f"/tasks/{second}/cancel").status_code == 400
        finally:
            release.set()
            request.join(DEADLINE)
        assert not request.is_alive()
        wait_status(client, first, "success")
        cancelled = task_json(client, second)
        assert cancelled["status"] == "cancelled"
        assert cancelled["end_time"] is not None
        (entry,) = audit(client)
        assert (entry["action"], entry["task_id"], entry["actor"], entry["detail"]) == (
            "cancel",
            second,
            "anonymous",
            {},
        )
    assert ran == []


def test_cancelling_a_running_async_task() -> None:
    manager = TaskManager()
    started = threading.Event()
    finished: list[str] = []

    @manager.task()
    async def hang() -> None:
        started.set()
        await asyncio.Event().wait()
        finished.append("hang")

    with TestClient(make_app(manager, {"hang": hang})) as client:
        responses: list[int] = []
        request = threading.Thread(target=lambda: responses.append(client.post("/submit/hang", json={}).status_code))
        request.start()
        try:
            assert started.wait(DEADLINE)
            (listed,) = client.get("/tasks").json()
            task_id = listed["task_id"]
            assert listed["status"] == "running"
            response = client.post(f"/tasks/{task_id}/cancel")
            assert response.status_code == 200, response.text
            assert response.json()["task"]["status"] in ("running", "cancelled")
        finally:
            request.join(DEADLINE)
        assert not request.is_alive()
        assert responses == [200]
        cancelled = wait_status(client, task_id, "cancelled")
        assert cancelled["end_time"] is not None
        assert client.post(f"/tasks/{task_id}/cancel").status_code == 400
    assert finished == []


def test_cancel_errors() -> None:
    manager = TaskManager()

    @manager.task()
    def fine() -> None:
        pass

    with TestClient(make_app(manager, {"fine": fine})) as client:
        missing = client.post(f"/tasks/{uuid.uuid4()}/cancel")
        assert (missing.status_code, missing.json()) == (404, {"detail": "Task not found"})
        done = submit(client, "fine")
        refused = client.post(f"/tasks/{done}/cancel")
        assert refused.status_code == 400
        assert "success" in refused.json()["detail"]
        assert audit(client) == []


# -- DELETE history -------------------------------------------------------------------


@pytest.fixture
def two_minutes_later(monkeypatch: pytest.MonkeyPatch) -> None:
    """DELETE history's clock runs two minutes ahead, so tasks that just ended are a minute old and more."""
    real = actions_module.now_us
    monkeypatch.setattr(actions_module, "now_us", lambda: real() + 120_000_000)


def finished_in_every_status(client: TestClient, manager: TaskManager) -> list[str]:
    ids = [submit(client, "ok"), submit(client, "ok"), submit(client, "fail")]
    wait_status(client, ids[-1], "failed")
    for status in ("cancelled", "rejected", "interrupted"):
        task_id, _ = manager.core.create("ok")
        assert manager.core.transition(task_id, status)
        ids.append(task_id)
    return ids


def test_delete_history_removes_every_finished_status_from_memory_and_disk(
    tmp_path: Path, two_minutes_later: None
) -> None:
    db = tmp_path / "tasks.db"
    manager = TaskManager(snapshot_db=str(db), max_history=2)
    funcs = {"ok": manager.task(name="ok")(lambda: None), "fail": register(manager, Flaky(), "fail")}
    with TestClient(make_app(manager, funcs)) as client:
        finished = finished_in_every_status(client, manager)
        live, _ = manager.core.create("ok")  # pending: never deleted
        assert client.portal is not None
        assert manager.writer is not None
        client.portal.call(manager.writer.write_now)
        assert {status for _, status in history_rows(db)} >= set(FINISHED)
        # max_history=2: most finished records now live on disk only.
        assert manager.core.memory_len() < len(finished) + 1

        response = client.delete("/tasks/history", params={"value": 1, "unit": "min"})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["backend"] == len(finished)
        assert body["deleted"] == len(finished)
        assert 0 <= body["store"] <= len(finished)
        for task_id in finished:
            assert client.get(f"/tasks/{task_id}").status_code == 404
        assert task_json(client, live)["status"] == "pending"
        assert not [row for row in history_rows(db) if row[1] in FINISHED]
        manager.core.transition(live, "cancelled")

    # They do not come back after a restart.
    reopened = TaskManager(snapshot_db=str(db))
    try:
        assert all(reopened.core.get(task_id) is None for task_id in finished)
    finally:
        reopened.core.close()


def test_delete_history_keeps_what_ended_within_the_window() -> None:
    manager = TaskManager()
    funcs = {"ok": manager.task(name="ok")(lambda: None), "fail": register(manager, Flaky(), "fail")}
    with TestClient(make_app(manager, funcs)) as client:
        finished = finished_in_every_status(client, manager)
        response = client.delete("/tasks/history", params={"value": 1, "unit": "day"})
        assert response.json() == {"deleted": 0, "store": 0, "backend": 0}
        assert all(task_json(client, task_id)["status"] in FINISHED for task_id in finished)


def test_delete_history_in_memory(two_minutes_later: None) -> None:
    manager = TaskManager()
    funcs = {"ok": manager.task(name="ok")(lambda: None), "fail": register(manager, Flaky(), "fail")}
    with TestClient(make_app(manager, funcs)) as client:
        finished = finished_in_every_status(client, manager)
        response = client.delete("/tasks/history", params={"value": 1, "unit": "hour"})
        # Two minutes ahead is not an hour: nothing ended that long ago.
        assert response.json()["deleted"] == 0
        response = client.delete("/tasks/history", params={"value": 1, "unit": "min"})
        assert response.json() == {"deleted": len(finished), "store": len(finished), "backend": 0}
        assert client.get("/tasks").json() == []


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"value": 0, "unit": "min"}, 422),
        ({"value": -5, "unit": "hour"}, 422),
        ({"value": "abc", "unit": "day"}, 422),
        ({"unit": "day"}, 422),
        ({"value": 1}, 422),
        ({"value": 1, "unit": "week"}, 400),
        ({"value": 1, "unit": "MIN"}, 400),
    ],
)
def test_delete_history_refuses_bad_parameters(params: dict[str, Any], status: int) -> None:
    manager = TaskManager()
    with TestClient(make_app(manager, {})) as client:
        response = client.delete("/tasks/history", params=params)
        assert response.status_code == status, response.text


# -- audit ----------------------------------------------------------------------------


def test_audit_is_newest_first_and_names_the_signed_in_user() -> None:
    manager = TaskManager()
    flaky = Flaky()
    job = register(manager, flaky, "job")
    app = make_app(manager, {"job": job}, auth=("alice", "s3cret"), secret_key="k" * 64)
    with TestClient(app) as client:
        assert client.get("/tasks/audit").status_code == 401
        assert client.post(f"/tasks/{uuid.uuid4()}/retry").status_code == 401
        login = client.post(
            "/tasks/auth/login", data={"username": "alice", "password": "s3cret"}, follow_redirects=False
        )
        assert login.status_code == 302
        first, second = submit(client, "job"), submit(client, "job")
        assert client.post(f"/tasks/{first}/retry").status_code == 200
        assert client.post("/tasks/bulk-retry", json={"task_ids": [second]}).status_code == 200

        entries = audit(client)
        assert [e["action"] for e in entries] == ["bulk_retry", "retry"]
        assert {e["actor"] for e in entries} == {"alice"}
        assert entries[0]["timestamp"] >= entries[1]["timestamp"]
        for entry in entries:
            assert list(entry) == ["entry_id", "action", "task_id", "actor", "timestamp", "detail"]
            assert uuid.UUID(entry["entry_id"]).version == 4
            assert datetime.fromisoformat(entry["timestamp"]).utcoffset() == timedelta(0)


def test_fixed_paths_are_not_taken_for_task_ids() -> None:
    manager = TaskManager()
    app = make_app(manager, {})
    with TestClient(app) as client:
        assert client.get("/tasks/audit").json() == []
    paths = app.openapi()["paths"]
    assert {"post"} <= set(paths["/tasks/bulk-retry"])
    assert {"post"} <= set(paths["/tasks/retry-failed"])
    assert {"delete"} <= set(paths["/tasks/history"])
    assert {"post"} <= set(paths["/tasks/{task_id}/retry"])
    assert {"post"} <= set(paths["/tasks/{task_id}/cancel"])


def test_audit_log_is_bounded_and_newest_first() -> None:
    log = AuditLog(maxlen=3)
    detail = {"n": 0}
    for n in range(5):
        detail["n"] = n
        entry = log.record("retry", f"t{n}", "bob", detail)
        assert isinstance(entry, AuditEntry)
        assert entry.timestamp.tzinfo is not None
    entries = log.entries()
    assert [e["task_id"] for e in entries] == ["t4", "t3", "t2"]
    # The entry keeps the detail it was given, not later changes to the caller's dict.
    assert [e["detail"] for e in entries] == [{"n": 4}, {"n": 3}, {"n": 2}]
    assert len({e["entry_id"] for e in entries}) == 3
    assert len(log) == 3
    with pytest.raises(ValueError, match="maxlen"):
        AuditLog(maxlen=0)


def test_audit_entry_to_dict() -> None:
    when = datetime(2024, 1, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)
    entry = AuditEntry("id-1", "cancel", "t1", "anonymous", when)
    assert entry.to_dict() == {
        "entry_id": "id-1",
        "action": "cancel",
        "task_id": "t1",
        "actor": "anonymous",
        "timestamp": "2024-01-01T12:00:00.123456+00:00",
        "detail": {},
    }
