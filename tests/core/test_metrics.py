"""metrics_json(): counts of current statuses, totals, by_name, duration percentiles."""

from __future__ import annotations

import math
from typing import Any

import pytest
from _corehelpers import AGG_KEYS, COUNT_KEYS, STATUSES, StoreFactory, drive, insert_rows, loads

BOUNDS = [10.0 ** (k / 20) for k in range(-120, 81)]


def expected_percentile(durations: list[float], q: float) -> float:
    """The contract's rule, computed by sorting instead of walking a histogram."""
    ordered = sorted(durations)
    d = ordered[max(1, math.ceil(q * len(ordered))) - 1]
    upper = next((b for b in BOUNDS if d <= b), ordered[-1])
    return round(min(max(upper, ordered[0]), ordered[-1]), 6)


def with_durations(make_store: StoreFactory, db_path: str, rows: list[tuple[str, str, int | None]]) -> Any:
    """A store opened on a file holding finished records of known durations (name, status, micros)."""
    make_store(db_path).close()
    base = 1_700_000_000_000_000
    insert_rows(
        db_path,
        [
            {
                "task_id": f"t{i:05d}",
                "func_name": name,
                "status": status,
                "created_us": base + i,
                "start_us": None if micros is None else base + i,
                "end_us": base + i + (micros or 0),
            }
            for i, (name, status, micros) in enumerate(rows)
        ],
    )
    return make_store(db_path)


def test_empty(make_store: StoreFactory) -> None:
    metrics = loads(make_store().metrics_json())
    assert list(metrics) == [*AGG_KEYS, "by_name", "snapshot"]
    assert metrics["snapshot"] is None  # no file
    assert all(metrics[k] == 0 for k in COUNT_KEYS)
    assert metrics["success_rate"] == 0.0
    assert metrics["avg_duration_seconds"] == 0.0
    assert metrics["p50_seconds"] is None and metrics["p95_seconds"] is None and metrics["p99_seconds"] is None
    assert metrics["by_name"] == {}


def test_counts_follow_current_statuses(make_store: StoreFactory) -> None:
    store = make_store()
    plan = {"pending": 3, "running": 2, "success": 5, "failed": 1, "interrupted": 1, "cancelled": 2, "rejected": 1}
    for status, n in plan.items():
        for _ in range(n):
            task_id, _ = store.create("a" if status in ("success", "pending") else "b")
            drive(store, task_id, status)
    metrics = loads(store.metrics_json())
    assert metrics["total"] == 15
    assert {s: metrics[s] for s in STATUSES} == plan
    assert metrics["success_rate"] == 5 / 15
    assert list(metrics["by_name"]) == ["a", "b"]
    a, b = metrics["by_name"]["a"], metrics["by_name"]["b"]
    assert list(a) == AGG_KEYS
    assert (a["total"], a["pending"], a["success"], a["success_rate"]) == (8, 3, 5, 5 / 8)
    assert (b["total"], b["running"], b["failed"], b["success"], b["success_rate"]) == (7, 2, 1, 0, 0.0)
    # durations: success, failed and interrupted ran; cancelled and rejected went straight from pending
    assert a["p50_seconds"] is not None and b["p50_seconds"] is not None
    assert a["p50_seconds"] <= a["p95_seconds"] <= a["p99_seconds"]
    assert metrics["p50_seconds"] <= metrics["p95_seconds"] <= metrics["p99_seconds"]
    assert metrics["avg_duration_seconds"] >= 0.0


def test_by_name_is_sorted(make_store: StoreFactory) -> None:
    store = make_store()
    for name in ("zeta", "alpha", "Mid", "beta"):
        store.create(name)
    assert list(loads(store.metrics_json())["by_name"]) == sorted(["zeta", "alpha", "Mid", "beta"])


def test_total_counts_duplicates_once(make_store: StoreFactory) -> None:
    store = make_store()
    store.create("f", idempotency_key="k")
    store.create("f", idempotency_key="k")
    assert loads(store.metrics_json())["total"] == 1


def test_cancelled_before_start_adds_no_duration(make_store: StoreFactory) -> None:
    store = make_store()
    task_id, _ = store.create("f")
    store.transition(task_id, "cancelled")
    metrics = loads(store.metrics_json())
    assert metrics["cancelled"] == 1
    assert metrics["p50_seconds"] is None and metrics["avg_duration_seconds"] == 0.0


def test_metrics_survive_eviction(make_store: StoreFactory) -> None:
    store = make_store(max_history=2)
    for _ in range(10):
        task_id, _ = store.create("f")
        drive(store, task_id, "success")
    assert store.memory_len() == 2
    metrics = loads(store.metrics_json())
    assert (metrics["total"], metrics["success"]) == (10, 10)


def test_known_durations(make_store: StoreFactory, db_path: str) -> None:
    micros = [1_000] * 90 + [500_000] * 9 + [3_000_000]
    store = with_durations(make_store, db_path, [("f", "success", m) for m in micros])
    metrics = loads(store.metrics_json())
    seconds = [m / 1e6 for m in micros]
    assert metrics["p50_seconds"] == expected_percentile(seconds, 0.50) == 0.001
    assert metrics["p95_seconds"] == expected_percentile(seconds, 0.95) == 0.501187
    assert metrics["p99_seconds"] == expected_percentile(seconds, 0.99)
    assert metrics["avg_duration_seconds"] == round(sum(seconds) / len(seconds), 6)
    assert metrics["by_name"]["f"]["p95_seconds"] == 0.501187


def test_single_duration_is_clamped_to_itself(make_store: StoreFactory, db_path: str) -> None:
    store = with_durations(make_store, db_path, [("f", "failed", 12_300)])
    metrics = loads(store.metrics_json())
    assert metrics["p50_seconds"] == metrics["p95_seconds"] == metrics["p99_seconds"] == 0.0123
    assert metrics["avg_duration_seconds"] == 0.0123


def test_overflow_bucket_reports_the_maximum(make_store: StoreFactory, db_path: str) -> None:
    store = with_durations(make_store, db_path, [("f", "success", 2_000_000)] + [("f", "success", 20_000_000_000)] * 3)
    metrics = loads(store.metrics_json())
    assert metrics["p50_seconds"] == 20_000.0
    assert metrics["p99_seconds"] == 20_000.0


def test_bucket_upper_bound_and_clamp_to_maximum(make_store: StoreFactory, db_path: str) -> None:
    # 0.2 s falls in the bucket (0.1995.., 0.2238..]: p50 reports its upper bound
    store = with_durations(make_store, db_path, [("f", "success", 200_000), ("f", "success", 300_000)])
    metrics = loads(store.metrics_json())
    assert metrics["p50_seconds"] == expected_percentile([0.2, 0.3], 0.5)
    assert 0.2 < metrics["p50_seconds"] < 0.3
    assert metrics["p99_seconds"] == 0.3  # the bucket's upper bound 0.316.. is clamped to the maximum


def test_zero_duration(make_store: StoreFactory, db_path: str) -> None:
    store = with_durations(make_store, db_path, [("f", "success", 0)])
    metrics = loads(store.metrics_json())
    assert metrics["p50_seconds"] == 0.0 and metrics["avg_duration_seconds"] == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_random_durations_match_the_sorting_rule(make_store: StoreFactory, db_path: str, seed: int) -> None:
    import random

    rng = random.Random(seed)
    micros = [int(10 ** rng.uniform(0, 10)) for _ in range(rng.randint(1, 400))]
    names = ["a", "b"]
    rows = [(names[i % 2], rng.choice(["success", "failed", "interrupted"]), m) for i, m in enumerate(micros)]
    store = with_durations(make_store, db_path, rows)
    metrics = loads(store.metrics_json())
    for scope, subset in (
        (metrics, [m for _, _, m in rows]),
        (metrics["by_name"]["a"], [m for n, _, m in rows if n == "a"]),
    ):
        seconds = [m / 1e6 for m in subset]
        for key, q in (("p50_seconds", 0.50), ("p95_seconds", 0.95), ("p99_seconds", 0.99)):
            assert scope[key] == expected_percentile(seconds, q)
        assert scope["avg_duration_seconds"] == pytest.approx(round(sum(seconds) / len(seconds), 6), abs=1.1e-6)


def test_disk_counts_are_rebuilt(make_store: StoreFactory, db_path: str) -> None:
    rows = [("a", "success", 10), ("a", "failed", 20), ("b", "cancelled", None), ("b", "success", 5)]
    store = with_durations(make_store, db_path, rows)
    metrics = loads(store.metrics_json())
    assert (metrics["total"], metrics["success"], metrics["failed"], metrics["cancelled"]) == (4, 2, 1, 1)
    assert metrics["success_rate"] == 0.5
    assert metrics["by_name"]["b"]["total"] == 2
    assert metrics["by_name"]["b"]["p50_seconds"] == 0.000005
    store.create("b")
    metrics = loads(store.metrics_json())
    assert (metrics["total"], metrics["pending"], metrics["by_name"]["b"]["total"]) == (5, 1, 3)
