"""append_log(): bounded per record, oldest lines dropped first."""

from __future__ import annotations

import pytest
from _corehelpers import StoreFactory, drive, loads


def test_lines_are_kept_in_order(make_store: StoreFactory) -> None:
    store = make_store()
    task_id, _ = store.create("f")
    for line in ("one", "two", "three"):
        store.append_log(task_id, line)
    assert store.get(task_id)["logs"] == ["one", "two", "three"]
    assert loads(store.get_json(task_id))["logs"] == ["one", "two", "three"]


def test_oldest_lines_are_dropped_beyond_the_bound(make_store: StoreFactory) -> None:
    store = make_store(max_log_lines=3)
    task_id, _ = store.create("f")
    for i in range(10):
        store.append_log(task_id, f"line {i}")
    assert store.get(task_id)["logs"] == ["line 7", "line 8", "line 9"]


def test_bound_is_per_record(make_store: StoreFactory) -> None:
    store = make_store(max_log_lines=2)
    a, _ = store.create("f")
    b, _ = store.create("f")
    store.append_log(a, "a1")
    store.append_log(b, "b1")
    store.append_log(a, "a2")
    assert store.get(a)["logs"] == ["a1", "a2"]
    assert store.get(b)["logs"] == ["b1"]


def test_logs_on_a_finished_record_are_kept(make_store: StoreFactory) -> None:
    store = make_store()
    task_id, _ = store.create("f")
    store.transition(task_id, "cancelled")
    store.append_log(task_id, "after the end")
    assert store.get(task_id)["logs"] == ["after the end"]


def test_unicode_lines_survive(make_store: StoreFactory) -> None:
    store = make_store()
    task_id, _ = store.create("f")
    line = 'caf\u00e9 \u2603 "quoted" \\ \n tab\t \U0001f600'
    store.append_log(task_id, line)
    assert loads(store.get_json(task_id))["logs"] == [line]


def test_unknown_id_raises_key_error(make_store: StoreFactory) -> None:
    store = make_store()
    with pytest.raises(KeyError):
        store.append_log("no-such-id", "x")


def test_logs_dropped_is_counted_served_and_persisted(make_store: StoreFactory, db_path: str) -> None:
    store = make_store(db_path, max_log_lines=3, max_history=1)
    task_id, _ = store.create("job")
    for i in range(5):
        store.append_log(task_id, f"line {i}")
    detail = loads(store.get_json(task_id))
    assert list(detail)[-2:] == ["logs_dropped", "retry_of"]
    assert detail["logs_dropped"] == 2 and detail["logs"] == ["line 2", "line 3", "line 4"]
    assert store.get(task_id)["logs_dropped"] == 2
    page, _ = store.page_json()
    assert len(loads(page)[0]) == 16  # list pages keep exactly the 16 keys
    drive(store, task_id, "success")
    store.append_log(task_id, "late")
    other, _ = store.create("other")
    drive(store, other, "success")
    assert store.flush() == 2
    assert store.memory_len() == 1  # task_id was evicted: read back from disk
    assert loads(store.get_json(task_id))["logs_dropped"] == 3
    assert store.get(task_id)["logs_dropped"] == 3
    assert loads(store.get_json(other))["logs_dropped"] == 0
