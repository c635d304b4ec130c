"""transition(): the allowed moves, what each one sets, and what a refused move leaves alone."""

from __future__ import annotations

import itertools

import pytest
from _corehelpers import FINISHED, STATUSES, StoreFactory, drive, iso_to_us, loads

ALLOWED = {
    "pending": {"running", "cancelled", "rejected", "interrupted"},
    "running": {"running", "pending", *FINISHED},
}


@pytest.mark.parametrize(("old", "new"), list(itertools.product(STATUSES, STATUSES)))
def test_move_is_allowed_exactly_when_the_table_says(make_store: StoreFactory, old: str, new: str) -> None:
    store = make_store()
    task_id, _ = store.create("f")
    drive(store, task_id, old)
    before = store.get(task_id)
    seq = store.last_seq
    allowed = new in ALLOWED.get(old, set())
    assert store.transition(task_id, new, error="e", retries_used=3) is allowed
    after = store.get(task_id)
    if allowed:
        assert after["status"] == new
        assert after["error"] == "e"
        assert after["retries_used"] == 3
        assert store.last_seq == seq + 1
    else:
        assert after == before
        assert store.last_seq == seq


def test_start_time_is_set_once_and_end_time_on_finish(make_store: StoreFactory) -> None:
    store = make_store()
    task_id, _ = store.create("f")
    assert store.transition(task_id, "running")
    first_start = store.get(task_id)["start_time"]
    assert first_start is not None and store.get(task_id)["end_time"] is None
    assert store.transition(task_id, "running", retries_used=1)
    assert store.transition(task_id, "pending")
    assert store.transition(task_id, "running", retries_used=2)
    assert store.get(task_id)["start_time"] == first_start
    assert store.transition(task_id, "success")
    record = store.get(task_id)
    assert record["retries_used"] == 2
    assert record["start_time"] == first_start
    start, end = iso_to_us(record["start_time"]), iso_to_us(record["end_time"])
    assert start <= end
    assert record["duration"] == pytest.approx((end - start) / 1e6, abs=1e-9)


def test_cancel_before_start_has_no_duration(make_store: StoreFactory) -> None:
    store = make_store()
    task_id, _ = store.create("f")
    assert store.transition(task_id, "cancelled")
    record = store.get(task_id)
    assert record["start_time"] is None
    assert record["end_time"] is not None
    assert record["duration"] is None
    assert store.transition(task_id, "running") is False


def test_error_and_stacktrace_are_kept_unless_replaced(make_store: StoreFactory) -> None:
    store = make_store()
    task_id, _ = store.create("f")
    store.transition(task_id, "running", error="boom", stacktrace="Traceback ...")
    store.transition(task_id, "running", retries_used=1)
    assert store.get(task_id)["error"] == "boom"
    store.transition(task_id, "failed", error="final")
    record = loads(store.get_json(task_id))
    assert (record["error"], record["stacktrace"], record["retries_used"]) == ("final", "Traceback ...", 1)


def test_unknown_id_raises_key_error(make_store: StoreFactory) -> None:
    store = make_store()
    with pytest.raises(KeyError):
        store.transition("no-such-id", "running")


def test_unknown_status_raises_value_error(make_store: StoreFactory) -> None:
    store = make_store()
    task_id, _ = store.create("f")
    for status in ("done", "", "PENDING"):
        with pytest.raises(ValueError):
            store.transition(task_id, status)
    assert store.get(task_id)["status"] == "pending"


def test_json_cache_follows_changes(make_store: StoreFactory) -> None:
    store = make_store()
    task_id, _ = store.create("f")
    assert loads(store.get_json(task_id))["status"] == "pending"
    store.transition(task_id, "running")
    assert loads(store.get_json(task_id))["status"] == "running"
    store.append_log(task_id, "x")
    assert loads(store.get_json(task_id))["logs"] == ["x"]
