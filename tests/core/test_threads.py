"""Many threads at once: nothing is lost, counted twice, or listed twice."""

from __future__ import annotations

import threading
from typing import Any

from _corehelpers import StoreFactory, all_pages, loads

WORKERS = 4
PER_WORKER = 300


def test_concurrent_lifecycles_flushes_and_reads(make_store: StoreFactory, db_path: str) -> None:
    store = make_store(db_path, max_history=50, ring_capacity=1000, max_log_lines=3)
    done = threading.Event()
    errors: list[BaseException] = []
    made: list[list[str]] = [[] for _ in range(WORKERS)]

    def worker(n: int) -> None:
        try:
            for i in range(PER_WORKER):
                task_id, created = store.create(f"job{n}", idempotency_key=f"{n}-{i // 2}")
                if not created:
                    continue
                made[n].append(task_id)
                store.transition(task_id, "running")
                store.append_log(task_id, f"{n}/{i}")
                store.transition(task_id, "success" if i % 3 else "failed", retries_used=i % 2)
        except BaseException as exc:
            errors.append(exc)

    def background() -> None:
        try:
            while not done.is_set():
                store.flush()
                store.page_json(limit=20)
                store.page_json(status="success", limit=5)
                store.metrics_json()
                store.events_since(max(0, store.last_seq - 50))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(WORKERS)]
    reader = threading.Thread(target=background)
    reader.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    reader.join()
    assert errors == []
    store.flush()

    ids = [task_id for batch in made for task_id in batch]
    # pairs i, i + 1 share a key: the second create is a duplicate unless the first failed (every third)
    assert len(ids) == len(set(ids))
    assert store.memory_len() == 50
    listed = all_pages(store, 37)
    assert sorted(r["task_id"] for r in listed) == sorted(ids)
    metrics: dict[str, Any] = loads(store.metrics_json())
    assert metrics["total"] == len(ids)
    assert metrics["success"] + metrics["failed"] == len(ids)
    assert metrics["pending"] == metrics["running"] == 0
    for n in range(WORKERS):
        assert metrics["by_name"][f"job{n}"]["total"] == len(made[n])
