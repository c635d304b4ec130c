"""Idempotency keys: held by pending/running/success, freed by the other finished statuses."""

from __future__ import annotations

import pytest
from _corehelpers import StoreFactory, drive, wait_for_next_microsecond


@pytest.mark.parametrize("status", ["pending", "running", "success"])
def test_holder_keeps_the_key(make_store: StoreFactory, status: str) -> None:
    store = make_store()
    first, created = store.create("f", idempotency_key="k")
    assert created
    drive(store, first, status)
    seq = store.last_seq
    assert store.create("f", idempotency_key="k") == (first, False)
    assert store.memory_len() == 1
    assert store.last_seq == seq  # a duplicate emits nothing


@pytest.mark.parametrize("status", ["failed", "interrupted", "cancelled", "rejected"])
def test_key_is_freed(make_store: StoreFactory, status: str) -> None:
    store = make_store()
    first, _ = store.create("f", idempotency_key="k")
    drive(store, first, status)
    second, created = store.create("f", idempotency_key="k")
    assert created and second != first
    assert store.create("f", idempotency_key="k") == (second, False)
    assert store.get(second)["idempotency_key"] == "k"


def test_requeue_keeps_the_key(make_store: StoreFactory) -> None:
    store = make_store()
    first, _ = store.create("f", idempotency_key="k")
    drive(store, first, "running")
    store.transition(first, "pending")
    assert store.create("f", idempotency_key="k") == (first, False)


def test_keys_are_independent(make_store: StoreFactory) -> None:
    store = make_store()
    a, _ = store.create("f", idempotency_key="a")
    b, created = store.create("f", idempotency_key="b")
    assert created and a != b
    c, created = store.create("f")
    d, created_again = store.create("f")
    assert created and created_again and c != d


def test_evicted_holder_frees_its_key(make_store: StoreFactory) -> None:
    store = make_store(max_history=1)
    first, _ = store.create("f", idempotency_key="k")
    drive(store, first, "success")
    wait_for_next_microsecond()
    other, _ = store.create("g")
    drive(store, other, "success")  # without a file, the older finished record leaves memory now
    assert store.get(first) is None
    second, created = store.create("f", idempotency_key="k")
    assert created and second != first
