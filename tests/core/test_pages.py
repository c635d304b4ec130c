"""page_json(): newest first, cursors, filters, memory and disk merged, bad input refused."""

from __future__ import annotations

from typing import Any

import pytest
from _corehelpers import (
    STATUSES,
    StoreFactory,
    all_pages,
    drive,
    listed_form,
    loads,
    sort_key,
    wait_for_next_microsecond,
)

NAMES = ("alpha", "beta", "gamma")


def populate(store: Any, n: int) -> list[str]:
    """n records with names and statuses cycling; created strictly in time order."""
    ids = []
    for i in range(n):
        task_id, _ = store.create(NAMES[i % 3], tags={"i": str(i)})
        drive(store, task_id, STATUSES[i % 7])
        ids.append(task_id)
        wait_for_next_microsecond()
    return ids


def test_empty_store_has_one_empty_page(make_store: StoreFactory, db_path: str) -> None:
    for store in (make_store(), make_store(db_path)):
        assert store.page_json() == (b"[]", None)


def test_newest_first_with_full_records(make_store: StoreFactory) -> None:
    store = make_store()
    ids = populate(store, 5)
    body, cursor = store.page_json()
    page = loads(body)
    assert cursor is None
    assert [r["task_id"] for r in page] == ids[::-1]
    assert page[0] == listed_form(loads(store.get_json(ids[-1])))


def test_same_microsecond_orders_by_task_id(make_store: StoreFactory) -> None:
    store = make_store()
    for _ in range(300):
        store.create("f")
    page = loads(store.page_json(limit=1000)[0])
    keys = [sort_key(r) for r in page]
    assert keys == sorted(keys, reverse=True)
    assert len(set(keys)) == 300


@pytest.mark.parametrize("limit", [1, 2, 3, 7, 21, 22, 100])
def test_cursor_paging_visits_every_record_once(make_store: StoreFactory, limit: int) -> None:
    store = make_store()
    ids = populate(store, 21)
    listed = all_pages(store, limit)
    assert [r["task_id"] for r in listed] == ids[::-1]


def test_last_full_page_has_no_cursor(make_store: StoreFactory) -> None:
    store = make_store()
    populate(store, 4)
    body, cursor = store.page_json(limit=2)
    body, cursor = store.page_json(limit=2, cursor=cursor)
    assert len(loads(body)) == 2
    assert cursor is None


@pytest.mark.parametrize("status", STATUSES)
def test_status_filter(make_store: StoreFactory, status: str) -> None:
    store = make_store()
    ids = populate(store, 30)
    want = [i for n, i in enumerate(ids) if STATUSES[n % 7] == status][::-1]
    listed = all_pages(store, 2, status=status)
    assert [r["task_id"] for r in listed] == want
    assert all(r["status"] == status for r in listed)


def test_name_filter_and_both_filters(make_store: StoreFactory) -> None:
    store = make_store()
    ids = populate(store, 42)
    want = [i for n, i in enumerate(ids) if NAMES[n % 3] == "beta"][::-1]
    assert [r["task_id"] for r in all_pages(store, 4, func_name="beta")] == want
    both = [i for n, i in enumerate(ids) if NAMES[n % 3] == "beta" and STATUSES[n % 7] == "success"][::-1]
    assert both  # 42 = lcm(3, 7) * 2 covers every combination
    assert [r["task_id"] for r in all_pages(store, 1, func_name="beta", status="success")] == both
    assert store.page_json(func_name="nobody") == (b"[]", None)


def test_status_index_follows_transitions(make_store: StoreFactory) -> None:
    store = make_store()
    a, _ = store.create("f")
    assert [r["task_id"] for r in all_pages(store, 5, status="pending")] == [a]
    store.transition(a, "running")
    assert all_pages(store, 5, status="pending") == []
    assert [r["task_id"] for r in all_pages(store, 5, status="running")] == [a]
    # back and forth: listed once under its current status, never under the old one
    b, _ = store.create("f")
    for _ in range(3):
        store.transition(a, "pending")
        store.transition(a, "running")
    store.transition(b, "running")
    store.transition(b, "pending")
    assert [r["task_id"] for r in all_pages(store, 1, status="running")] == [a]
    assert [r["task_id"] for r in all_pages(store, 1, status="pending")] == [b]
    assert sorted(r["task_id"] for r in all_pages(store, 1)) == sorted([a, b])


def test_status_pages_stay_right_through_many_moves(make_store: StoreFactory) -> None:
    store = make_store()
    ids = populate(store, 300)  # enough moves to make the status indexes compact themselves
    for n, task_id in enumerate(ids):
        if STATUSES[n % 7] == "running":
            store.transition(task_id, "pending")
    current = {s: [i for i in ids if store.get(i)["status"] == s][::-1] for s in STATUSES}
    for status in STATUSES:
        assert [r["task_id"] for r in all_pages(store, 9, status=status)] == current[status]


@pytest.mark.parametrize(
    "cursor", ["", "abc", "12", "x:abc", "1.5:abc", "99999999999999999999999:abc", "\u0661\u0662:abc"]
)
def test_malformed_cursor_is_refused(make_store: StoreFactory, cursor: str) -> None:
    store = make_store()
    populate(store, 3)
    with pytest.raises(ValueError):
        store.page_json(cursor=cursor)


def test_cursor_need_not_name_a_known_record(make_store: StoreFactory) -> None:
    store = make_store()
    ids = populate(store, 3)
    body, _ = store.page_json(cursor="1:x")
    assert loads(body) == []
    body, _ = store.page_json(cursor="9999999999999999:z")
    assert [r["task_id"] for r in loads(body)] == ids[::-1]


@pytest.mark.parametrize("limit", [0, -1])
def test_bad_limit_is_refused(make_store: StoreFactory, limit: int) -> None:
    with pytest.raises(ValueError):
        make_store().page_json(limit=limit)


def test_unknown_status_filter_is_refused(make_store: StoreFactory) -> None:
    with pytest.raises(ValueError):
        make_store().page_json(status="done")


def test_memory_and_disk_are_merged(make_store: StoreFactory, db_path: str) -> None:
    store = make_store(db_path, max_history=4)
    ids = populate(store, 40)
    written = store.flush()
    assert written == sum(1 for n in range(40) if STATUSES[n % 7] not in ("pending", "running"))
    live = sum(1 for n in range(40) if STATUSES[n % 7] in ("pending", "running"))
    assert store.memory_len() == live + 4
    # more records after the flush: some only in memory, finished but not yet written
    more = populate(store, 10)
    everything = ids + more
    statuses = [STATUSES[n % 7] for n in range(40)] + [STATUSES[n % 7] for n in range(10)]
    for limit in (1, 3, 10, 100):
        assert [r["task_id"] for r in all_pages(store, limit)] == everything[::-1]
    for status in STATUSES:
        want = [i for i, s in zip(everything, statuses, strict=True) if s == status]
        assert [r["task_id"] for r in all_pages(store, 3, status=status)] == want[::-1]
    for task_id in everything:
        record = store.get(task_id)
        assert record is not None and record["task_id"] == task_id


def test_disk_records_are_listed_once_and_as_in_memory(make_store: StoreFactory, db_path: str) -> None:
    store = make_store(db_path, max_history=100)
    ids = populate(store, 14)
    store.flush()
    assert store.memory_len() == 14  # nothing evicted: finished records are in memory and on disk
    listed = all_pages(store, 4)
    assert [r["task_id"] for r in listed] == ids[::-1]
    assert listed == [listed_form(loads(store.get_json(i))) for i in ids[::-1]]
