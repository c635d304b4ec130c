"""events_since(): the event ring, its JSON shapes, limits and the missed flag after wrap-around."""

from __future__ import annotations

import pytest
from _corehelpers import EVENT_TASK_KEYS, StoreFactory, loads


def test_no_events_yet(make_store: StoreFactory) -> None:
    store = make_store()
    assert store.last_seq == 0
    assert store.events_since(0) == ([], False)


def test_event_shapes_and_order(make_store: StoreFactory) -> None:
    store = make_store()
    task_id, _ = store.create("f", tags={"t": "1"})
    store.transition(task_id, "running")
    store.append_log(task_id, "hello")
    store.transition(task_id, "success")
    assert store.transition(task_id, "running") is False  # refused: no event
    events, missed = store.events_since(0)
    assert not missed
    assert [seq for seq, _ in events] == [1, 2, 3, 4]
    assert store.last_seq == 4
    parsed = [loads(data) for _, data in events]
    assert [e["type"] for e in parsed] == ["created", "status", "log", "status"]
    for seq, event in zip([1, 2, 3, 4], parsed, strict=True):
        assert event["seq"] == seq
    created, running, log, success = parsed
    assert list(created) == ["seq", "type", "task"]
    assert list(created["task"]) == EVENT_TASK_KEYS
    assert created["task"]["status"] == "pending" and created["task"]["tags"] == {"t": "1"}
    assert running["task"]["status"] == "running" and running["task"]["start_time"] is not None
    assert running["task"]["end_time"] is None
    assert log == {"seq": 3, "type": "log", "task_id": task_id, "line": "hello"}
    assert list(log) == ["seq", "type", "task_id", "line"]
    final = loads(store.get_json(task_id))
    assert success["task"] == {k: v for k, v in final.items() if k not in ("logs", "logs_dropped", "retry_of")}


def test_events_record_the_state_at_the_time(make_store: StoreFactory) -> None:
    store = make_store()
    task_id, _ = store.create("f")
    store.transition(task_id, "running", retries_used=0)
    store.transition(task_id, "running", retries_used=1, error="first try failed")
    store.transition(task_id, "failed", retries_used=2, error="gave up")
    tasks = [loads(data)["task"] for _, data in store.events_since(0)[0]]
    assert [(t["status"], t["retries_used"], t["error"]) for t in tasks] == [
        ("pending", 0, None),
        ("running", 0, None),
        ("running", 1, "first try failed"),
        ("failed", 2, "gave up"),
    ]


def test_after_and_limit(make_store: StoreFactory) -> None:
    store = make_store()
    task_id, _ = store.create("f")
    for i in range(9):
        store.append_log(task_id, str(i))
    assert store.last_seq == 10
    events, missed = store.events_since(3, limit=4)
    assert not missed
    assert [seq for seq, _ in events] == [4, 5, 6, 7]
    assert [loads(d)["line"] for _, d in events] == ["2", "3", "4", "5"]
    assert store.events_since(10) == ([], False)
    assert store.events_since(99) == ([], False)
    # read twice: the same bytes
    assert store.events_since(3, limit=4)[0] == events


def test_missed_after_wrap_around(make_store: StoreFactory) -> None:
    store = make_store(ring_capacity=4)
    task_id, _ = store.create("f")
    for i in range(9):
        store.append_log(task_id, str(i))
    assert store.last_seq == 10
    events, missed = store.events_since(0)
    assert missed
    assert [seq for seq, _ in events] == [7, 8, 9, 10]
    events, missed = store.events_since(5)
    assert missed
    assert [seq for seq, _ in events] == [7, 8, 9, 10]
    events, missed = store.events_since(6)
    assert not missed
    assert [seq for seq, _ in events] == [7, 8, 9, 10]
    events, missed = store.events_since(0, limit=2)
    assert missed
    assert [seq for seq, _ in events] == [7, 8]


def test_capacity_one(make_store: StoreFactory) -> None:
    store = make_store(ring_capacity=1)
    store.create("f")
    store.create("g")
    events, missed = store.events_since(0)
    assert missed and [seq for seq, _ in events] == [2]
    assert loads(events[0][1])["task"]["func_name"] == "g"


def test_events_outlive_eviction(make_store: StoreFactory) -> None:
    store = make_store(max_history=1)
    first, _ = store.create("f")
    store.transition(first, "cancelled")
    second, _ = store.create("f")
    store.transition(second, "cancelled")
    assert store.memory_len() == 1
    events, _ = store.events_since(0)
    assert [loads(d)["task"]["task_id"] for _, d in events] == [first, first, second, second]


@pytest.mark.parametrize("limit", [0, -3])
def test_bad_limit_is_refused(make_store: StoreFactory, limit: int) -> None:
    with pytest.raises(ValueError):
        make_store().events_since(0, limit=limit)
