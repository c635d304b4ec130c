"""delete_finished_before() and delete(): from memory and the file, with tags, and forgotten by the metrics."""

from __future__ import annotations

import time
from types import ModuleType
from typing import Any

import pytest
from _corehelpers import (
    COUNT_KEYS,
    StoreFactory,
    all_pages,
    drive,
    iso_to_us,
    loads,
    query,
    run_sql,
    wait_for_next_microsecond,
)


def finish(store: Any, name: str, status: str = "success", tags: dict[str, str] | None = None) -> str:
    task_id, _ = store.create(name, tags=tags)
    drive(store, task_id, status)
    wait_for_next_microsecond()  # strictly ordered end times
    return task_id


def end_us(store: Any, task_id: str) -> int:
    return iso_to_us(store.get(task_id)["end_time"])


def now_us() -> int:
    wait_for_next_microsecond()
    return time.time_ns() // 1000


def counts(store: Any) -> dict[str, Any]:
    metrics = loads(store.metrics_json())
    return {
        "all": {k: metrics[k] for k in COUNT_KEYS},
        "by_name": {name: {k: agg[k] for k in COUNT_KEYS} for name, agg in metrics["by_name"].items()},
    }


def test_delete_finished_before_without_a_file(make_store: StoreFactory) -> None:
    store = make_store()
    live, _ = store.create("y")
    a = finish(store, "x")
    b = finish(store, "x", "failed")
    c = finish(store, "y", "cancelled")
    assert store.delete_finished_before(end_us(store, a)) == (0, 0)  # strictly before
    assert store.delete_finished_before(end_us(store, b) + 1) == (2, 0)
    assert [store.get(t) for t in (a, b)] == [None, None]
    assert [r["task_id"] for r in all_pages(store, 10)] == [c, live]
    assert counts(store) == {
        "all": {"total": 2, "pending": 1, "running": 0, "success": 0, "failed": 0, "interrupted": 0, "cancelled": 1,
                "rejected": 0},
        "by_name": {"y": {"total": 2, "pending": 1, "running": 0, "success": 0, "failed": 0, "interrupted": 0,
                          "cancelled": 1, "rejected": 0}},
    }  # fmt: skip
    metrics = loads(store.metrics_json())
    assert metrics["p50_seconds"] is None and metrics["avg_duration_seconds"] == 0.0  # only durations of "x" were


def test_delete_finished_before_reaches_memory_and_file(make_store: StoreFactory, db_path: str) -> None:
    store = make_store(db_path, max_history=2)
    flushed = [finish(store, "job", tags={"n": str(i)}) for i in range(5)]
    running, _ = store.create("job", journal=True)
    store.transition(running, "running")
    assert store.flush() == 6
    assert store.memory_len() == 3  # three finished records are in the file only, two in both
    unflushed = finish(store, "job", tags={"n": "x"})
    survivor = finish(store, "other", "failed")
    cutoff = end_us(store, survivor)
    assert store.delete_finished_before(cutoff) == (3, 5)  # a record in both counts in both
    assert [r["task_id"] for r in all_pages(store, 3)] == [survivor, running]
    assert all(store.get(t) is None for t in [*flushed, unflushed])
    assert query(db_path, "SELECT task_id FROM task_history") == [(running,)]
    assert query(db_path, "SELECT COUNT(*) FROM task_tags") == [(0,)]

    # The metrics forget them as a reopen would (percentiles only to within a bucket: the minimum and
    # maximum durations cannot be undone).
    deleted_counts = counts(store)
    assert deleted_counts["all"]["total"] == 2 and list(deleted_counts["by_name"]) == ["job", "other"]
    average = loads(store.metrics_json())["avg_duration_seconds"]
    assert average == pytest.approx((cutoff - iso_to_us(store.get(survivor)["start_time"])) / 1e6, abs=1e-6)
    store.flush()
    store.close()
    reopened = make_store(db_path)
    assert counts(reopened) == deleted_counts
    assert loads(reopened.metrics_json())["avg_duration_seconds"] == pytest.approx(average, abs=1e-6)


def test_a_finished_record_whose_row_is_still_a_journal_row(make_store: StoreFactory, db_path: str) -> None:
    store = make_store(db_path)
    task_id, _ = store.create("f", journal=True)
    store.transition(task_id, "running")
    store.flush()  # the row says running
    store.transition(task_id, "success")
    assert store.delete_finished_before(now_us()) == (1, 1)
    assert store.get(task_id) is None  # not served from the old row
    store.close()
    assert make_store(db_path).claim_orphans() == []  # nor taken over from it


def test_a_failed_deletion_changes_nothing(core: ModuleType, make_store: StoreFactory, db_path: str) -> None:
    store = make_store(db_path, max_history=1)
    ids = [finish(store, "f") for _ in range(3)]
    store.flush()
    before = (store.memory_len(), counts(store), all_pages(store, 10))
    run_sql(db_path, "CREATE TRIGGER keep BEFORE DELETE ON task_history BEGIN SELECT RAISE(ABORT, 'kept'); END")
    with pytest.raises(core.SnapshotError) as info:
        store.delete_finished_before(now_us())
    assert db_path in str(info.value)
    with pytest.raises(core.SnapshotError):
        store.delete(ids[-1])
    assert (store.memory_len(), counts(store), all_pages(store, 10)) == before
    run_sql(db_path, "DROP TRIGGER keep")
    assert store.delete_finished_before(now_us()) == (1, 3)


def test_delete_one_record(make_store: StoreFactory, db_path: str) -> None:
    store = make_store(db_path, max_history=1)
    on_disk = finish(store, "f", tags={"t": "1"})
    in_memory = finish(store, "f", "failed", tags={"t": "2"})
    store.flush()
    live, _ = store.create("f")
    assert store.get(on_disk) is not None and store.memory_len() == 2
    assert store.delete("00000000-0000-4000-8000-000000000000") is False
    assert store.delete(live) is False  # not finished
    assert store.get(live)["status"] == "pending"
    assert store.delete(on_disk) is True
    assert store.delete(in_memory) is True
    assert store.delete(in_memory) is False  # gone
    assert [r["task_id"] for r in all_pages(store, 10)] == [live]
    assert all_pages(store, 10, tag="t=1") == [] and all_pages(store, 10, tag="t=2") == []
    assert query(db_path, "SELECT COUNT(*) FROM task_history") == [(0,)]
    assert query(db_path, "SELECT COUNT(*) FROM task_tags") == [(0,)]
    assert counts(store)["all"] == {
        "total": 1, "pending": 1, "running": 0, "success": 0, "failed": 0, "interrupted": 0, "cancelled": 0,
        "rejected": 0,
    }  # fmt: skip


def test_delete_without_a_file(make_store: StoreFactory) -> None:
    store = make_store()
    task_id = finish(store, "f")
    assert store.delete(task_id) is True
    assert store.get(task_id) is None
    assert loads(store.metrics_json())["total"] == 0


def test_deleting_after_close_raises(core: ModuleType, make_store: StoreFactory, db_path: str) -> None:
    store = make_store(db_path)
    task_id = finish(store, "f")
    store.close()
    with pytest.raises(core.SnapshotError):
        store.delete(task_id)
    with pytest.raises(core.SnapshotError):
        store.delete_finished_before(now_us())
    assert store.get(task_id) is not None  # memory unchanged
