"""Idempotency keys held from the snapshot file (after eviction or a restart) and their ttl."""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import pytest
from _corehelpers import StoreFactory, drive, wait_for_next_microsecond


@pytest.mark.parametrize("status", ["success", "pending", "running"])
def test_a_key_is_held_from_the_file_after_a_restart(make_store: StoreFactory, db_path: str, status: str) -> None:
    store = make_store(db_path)
    holder, _ = store.create("f", idempotency_key="k", journal=True)
    drive(store, holder, status)
    assert store.flush() == 1
    store.close()
    reopened = make_store(db_path)
    assert reopened.create("f", idempotency_key="k") == (holder, False)
    assert reopened.memory_len() == 0


def test_a_key_is_held_from_the_file_after_eviction(make_store: StoreFactory, db_path: str) -> None:
    store = make_store(db_path, max_history=1)
    holder, _ = store.create("f", idempotency_key="k")
    drive(store, holder, "success")
    wait_for_next_microsecond()
    other, _ = store.create("g")
    drive(store, other, "success")
    store.flush()
    assert store.memory_len() == 1  # the holder left memory; its row holds the key
    assert store.create("f", idempotency_key="k") == (holder, False)


@pytest.mark.parametrize("status", ["failed", "interrupted", "cancelled", "rejected"])
def test_a_finished_row_that_frees_the_key(make_store: StoreFactory, db_path: str, status: str) -> None:
    store = make_store(db_path)
    first, _ = store.create("f", idempotency_key="k")
    drive(store, first, status)
    store.flush()
    store.close()
    reopened = make_store(db_path)
    second, created = reopened.create("f", idempotency_key="k")
    assert created and second != first
    assert reopened.create("f", idempotency_key="k") == (second, False)


def test_memory_is_newer_than_the_row(make_store: StoreFactory, db_path: str) -> None:
    store = make_store(db_path)
    first, _ = store.create("f", idempotency_key="k", journal=True)
    store.transition(first, "running")
    store.flush()  # the row says running ...
    store.transition(first, "failed")  # ... memory says failed, which frees the key
    second, created = store.create("f", idempotency_key="k")
    assert created and second != first


def test_ttl_expiry_frees_a_key(make_store: StoreFactory) -> None:
    store = make_store(idempotency_ttl=0.05)
    first, _ = store.create("f", idempotency_key="k")
    time.sleep(0.1)
    second, created = store.create("f", idempotency_key="k")
    assert created and second != first
    assert store.get(first)["status"] == "pending"  # the old holder is untouched


def test_ttl_expiry_frees_a_key_held_in_the_file(make_store: StoreFactory, db_path: str) -> None:
    store = make_store(db_path)
    first, _ = store.create("f", idempotency_key="k")
    drive(store, first, "success")
    store.flush()
    store.close()
    time.sleep(0.1)
    assert make_store(db_path, idempotency_ttl=60.0).create("f", idempotency_key="k") == (first, False)
    second, created = make_store(db_path, idempotency_ttl=0.05).create("f", idempotency_key="k")
    assert created and second != first


def test_a_key_is_held_within_its_ttl(make_store: StoreFactory) -> None:
    store = make_store(idempotency_ttl=60.0)
    first, _ = store.create("f", idempotency_key="k")
    assert store.create("f", idempotency_key="k") == (first, False)


@pytest.mark.parametrize("ttl", [0, -1.0, math.nan])
def test_ttl_must_be_positive(core: Any, ttl: float) -> None:
    with pytest.raises(ValueError, match="idempotency_ttl"):
        core.TaskStore(idempotency_ttl=ttl)


def create_together(barrier: threading.Barrier, store: Any, _: int) -> tuple[str, bool]:
    barrier.wait()
    result: tuple[str, bool] = store.create("f", idempotency_key="k", journal=True)
    return result


def test_keyed_creates_with_a_file_are_atomic(make_store: StoreFactory, db_path: str) -> None:
    store = make_store(db_path)
    threads = 8
    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(partial(create_together, threading.Barrier(threads), store), range(threads)))
    assert sum(created for _, created in results) == 1
    assert len({task_id for task_id, _ in results}) == 1
    assert store.memory_len() == 1
