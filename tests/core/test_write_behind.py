"""What a change that leaves records unwritten does: one wake for the owner, and writes behind."""

from __future__ import annotations

import logging
import sys
import threading
import time
from types import ModuleType
from typing import Any

import pytest
from _corehelpers import StoreFactory, drive, loads, run_sql
from polling import wait_for


def unwritten(store: Any) -> int:
    count: int = loads(store.metrics_json())["snapshot"]["unwritten"]
    return count


def failed_writes(store: Any) -> int:
    count: int = loads(store.metrics_json())["snapshot"]["failed_writes"]
    return count


def finish(store: Any, status: str = "success") -> str:
    task_id, _ = store.create("f")
    drive(store, task_id, status)
    return task_id


def statuses_in_file(db_path: str) -> list[str]:
    return [row[0] for row in run_sql(db_path, "SELECT status FROM task_history ORDER BY created_us")]


def test_writes_behind_once_enough_records_wait(make_store: StoreFactory, db_path: str) -> None:
    store = make_store(db_path)
    store.write_behind(3)
    finish(store)
    finish(store, "failed")
    assert unwritten(store) == 2  # below the threshold: nothing starts
    finish(store, "cancelled")
    wait_for(lambda: unwritten(store) == 0, what="the write behind")
    assert statuses_in_file(db_path) == ["success", "failed", "cancelled"]

    store.write_behind(None)
    for _ in range(3):
        finish(store)
    assert unwritten(store) == 3  # stopped


def test_the_threshold_must_be_positive_and_needs_no_file(make_store: StoreFactory) -> None:
    with pytest.raises(ValueError, match=r"^threshold must be at least 1, got 0$"):
        make_store().write_behind(0)
    store = make_store()
    store.write_behind(1)
    finish(store)  # nothing to write to, nothing fails
    assert loads(store.metrics_json())["snapshot"] is None


def test_a_failed_write_stops_writing_behind_until_one_succeeds(make_store: StoreFactory, db_path: str) -> None:
    store = make_store(db_path)
    run_sql(
        db_path, "CREATE TRIGGER refuse BEFORE INSERT ON task_history BEGIN SELECT RAISE(ABORT, 'disk says no'); END"
    )
    store.write_behind(1)
    finish(store)
    wait_for(lambda: failed_writes(store) == 1, what="the failed write behind")
    for _ in range(2):
        finish(store)
    time.sleep(0.2)  # time enough for a write that would wrongly start
    assert (failed_writes(store), unwritten(store)) == (1, 3)

    run_sql(db_path, "DROP TRIGGER refuse")
    assert store.flush() == 3  # the owner's retry succeeds: nothing was lost
    finish(store)
    wait_for(lambda: unwritten(store) == 0, what="writing behind again")
    assert statuses_in_file(db_path) == ["success"] * 4


def test_the_wake_comes_once_per_arming(make_store: StoreFactory, db_path: str) -> None:
    store = make_store(db_path)
    calls: list[str] = []

    def arm() -> None:
        store.on_unwritten(lambda: calls.append(threading.current_thread().name))

    arm()
    task_id, _ = store.create("f")
    store.transition(task_id, "running")
    assert calls == []  # a plain record's row waits for its end
    store.transition(task_id, "success")
    assert calls == [threading.current_thread().name]
    finish(store, "failed")
    assert len(calls) == 1  # once per arming

    store.flush()
    arm()
    store.append_log(task_id, "after the end")
    assert len(calls) == 2  # a log line on a finished record
    arm()
    store.create("j", journal=True)
    assert len(calls) == 3  # a journaled record's creation
    arm()
    store.on_unwritten(None)
    finish(store)
    assert len(calls) == 3  # disarmed


def test_the_wake_comes_on_the_thread_of_the_change(make_store: StoreFactory, db_path: str) -> None:
    store = make_store(db_path)
    calls: list[str] = []
    store.on_unwritten(lambda: calls.append(threading.current_thread().name))
    worker = threading.Thread(target=finish, args=(store,), name="a-worker")
    worker.start()
    worker.join()
    assert calls == ["a-worker"]


def test_the_wake_must_be_callable(make_store: StoreFactory) -> None:
    with pytest.raises(TypeError, match=r"^on_unwritten\(\) wants a callable or None, got int$"):
        make_store().on_unwritten(3)  # type: ignore[arg-type]


def test_a_raising_wake_is_reported_and_the_change_stands(
    core: ModuleType,
    make_store: StoreFactory,
    db_path: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = make_store(db_path)
    unraisable: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)

    def wake() -> None:
        raise RuntimeError("the loop is closed")

    store.on_unwritten(wake)
    with caplog.at_level(logging.ERROR, logger="fastapi_taskflow"):
        task_id = finish(store)
    assert loads(store.get_json(task_id))["status"] == "success"
    assert unwritten(store) == 1
    if core.__name__.endswith("._core"):
        assert [type(u.exc_value) for u in unraisable] == [RuntimeError]
        assert unraisable[0].object is wake
    else:
        assert unraisable == []
        assert [r.exc_info[0] for r in caplog.records if r.exc_info] == [RuntimeError]
