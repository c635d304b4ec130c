"""Scenario 6: the core operations alone, called straight on ``TaskStore``, µs per call.

The same calls on either core, so the ratio is the core's own speed-up: no FastAPI, no
event loop. Calls well under a microsecond are timed in runs of ``RUN`` and averaged.
"""

from __future__ import annotations

import gc
import os
import tempfile
from collections.abc import Callable
from time import perf_counter_ns
from typing import Any

from reads import fill
from timing import latency_us, median

#: Records in the store while its operations are timed (the default ``max_history``).
STORE_SIZE = 10_000
#: Calls per timed run of the fast operations.
RUN = 1_000
PAGE_LIMIT = 100
#: Rows already in the file when the grown-file flushes are timed, and records per flush.
GROWN_ROWS = 100_000
GROWN_BATCH = 1_000
#: Timed flushes into the grown file: enough to include the checkpoints they cause.
GROWN_FLUSHES = 20


def _mean_us(runs: int, setup: Callable[[], list[str]], call: Callable[[str], object]) -> float:
    """Median over ``runs`` of the mean µs of ``call(task_id)`` over the ids ``setup()`` made."""
    samples: list[float] = []
    for _ in range(runs):
        ids = setup()
        gc.collect()
        start = perf_counter_ns()
        for task_id in ids:
            call(task_id)
        samples.append((perf_counter_ns() - start) / len(ids) / 1_000)
    return median(samples)


def grown_flush_us(store_type: Callable[..., Any], path: str, *, rows: int = GROWN_ROWS) -> float:
    """Mean µs per record of ``GROWN_FLUSHES`` flushes of ``GROWN_BATCH`` records into a file of ``rows``.

    What a long-running application pays per finished task once the history is large: a
    flush lands among ``rows`` rows (the primary key is the task id), and the checkpoints
    its writes cause are in the mean.
    """
    store = store_type(path, max_history=STORE_SIZE)
    for done in range(0, rows, STORE_SIZE):
        fill(store, min(STORE_SIZE, rows - done))
        store.flush()
    elapsed = written = 0
    for _ in range(GROWN_FLUSHES):
        fill(store, GROWN_BATCH)
        start = perf_counter_ns()
        written += store.flush()
        elapsed += perf_counter_ns() - start
    store.close()
    return elapsed / written / 1_000


def core_ops(store_type: Callable[..., Any], *, runs: int, budget_s: float) -> dict[str, float]:
    store = store_type(max_history=STORE_SIZE)
    fill(store, STORE_SIZE)
    create, transition = store.create, store.transition
    created: list[str] = []

    def timed_creates() -> list[str]:
        # Finish the previous run's records untimed, so the store keeps its size.
        for task_id in created:
            transition(task_id, "running")
            transition(task_id, "success")
        created.clear()
        return ["noop"] * RUN

    results = {"ops.create": _mean_us(runs, timed_creates, lambda name: created.append(create(name)[0]))}

    pending: list[str] = []

    def fresh_ids() -> list[str]:
        pending[:] = [create("noop")[0] for _ in range(RUN)]
        return pending

    def run_and_finish(task_id: str) -> None:
        transition(task_id, "running")
        transition(task_id, "success")

    results["ops.transition"] = _mean_us(runs, fresh_ids, run_and_finish) / 2
    results["ops.metrics"] = latency_us(store.metrics_json, max_calls=2_000, budget_s=budget_s)
    results["ops.page"] = latency_us(lambda: store.page_json(limit=PAGE_LIMIT), max_calls=2_000, budget_s=budget_s)
    store.close()

    flushes: list[float] = []
    with tempfile.TemporaryDirectory(prefix="taskflow-bench-") as tmp:
        for i in range(runs):
            disk = store_type(os.path.join(tmp, f"ops-{i}.db"), max_history=STORE_SIZE)
            fill(disk, STORE_SIZE)
            start = perf_counter_ns()
            written = disk.flush()
            flushes.append((perf_counter_ns() - start) / written / 1_000)
            disk.close()
        results["ops.flush.grown"] = grown_flush_us(store_type, os.path.join(tmp, "grown.db"))
    results["ops.flush"] = median(flushes)
    return results
