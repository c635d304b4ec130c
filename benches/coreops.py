"""Scenario 6: the core operations alone, called straight on ``TaskStore``, µs per call.

The same calls on either core, so the ratio is the core's own speed-up: no FastAPI, no
event loop; both cores are timed in one process, taking turns (``core_ops``). Calls well
under a microsecond are timed in runs of ``RUN`` and averaged.
"""

from __future__ import annotations

import gc
import itertools
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from time import perf_counter_ns
from typing import Any

from reads import fill
from timing import latency_us, median

#: Records in the store while its operations are timed (the default ``max_history``).
STORE_SIZE = 10_000
#: Calls per timed run of the fast operations.
RUN = 1_000
#: What ``workload.py`` puts before the Python core's keys: both cores' figures come out of the rust
#: variant's process, and ``run.py`` files these under the python variant.
PYTHON_CORE = "python:"
PAGE_LIMIT = 100
#: Calls per read figure, shared out among the runs.
READ_CALLS = 2_000
#: Rows already in the file when the grown-file flushes are timed, and records per flush.
GROWN_ROWS = 100_000
GROWN_BATCH = 1_000
#: Timed flushes into the grown file: enough to include the checkpoints they cause.
GROWN_FLUSHES = 20


def _mean_us(ids: list[str], call: Callable[[str], object]) -> float:
    """Mean µs of ``call(task_id)`` over ``ids``."""
    gc.collect()
    start = perf_counter_ns()
    for task_id in ids:
        call(task_id)
    return (perf_counter_ns() - start) / len(ids) / 1_000


def _flush_us(store_type: Callable[..., Any], path: str) -> float:
    """µs per record of one flush of ``STORE_SIZE`` new records into a new file."""
    disk = store_type(path, max_history=STORE_SIZE)
    fill(disk, STORE_SIZE)
    start = perf_counter_ns()
    written = disk.flush()
    elapsed = perf_counter_ns() - start
    disk.close()
    return elapsed / written / 1_000


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


class _Turns:
    """One core's store of ``STORE_SIZE`` records, and one run of each operation on it per ``run()``."""

    def __init__(self, store_type: Callable[..., Any], files: Iterator[str]) -> None:
        self.store_type, self.files = store_type, files
        self.store = store_type(max_history=STORE_SIZE)
        fill(self.store, STORE_SIZE)
        self.created: list[str] = []
        self.samples: dict[str, list[float]] = {}

    def run(self, *, read_calls: int, budget_s: float) -> None:
        store, created = self.store, self.created
        create, transition = store.create, store.transition

        def run_and_finish(task_id: str) -> None:
            transition(task_id, "running")
            transition(task_id, "success")

        # Finish the previous run's records untimed, so the store keeps its size.
        for task_id in created:
            run_and_finish(task_id)
        created.clear()
        run = {
            "ops.create": _mean_us(["noop"] * RUN, lambda name: created.append(create(name)[0])),
            "ops.transition": _mean_us([create("noop")[0] for _ in range(RUN)], run_and_finish) / 2,
            "ops.metrics": latency_us(store.metrics_json, max_calls=read_calls, budget_s=budget_s),
            "ops.page": latency_us(lambda: store.page_json(limit=PAGE_LIMIT), max_calls=read_calls, budget_s=budget_s),
            "ops.flush": _flush_us(self.store_type, next(self.files)),
        }
        for key, value in run.items():
            self.samples.setdefault(key, []).append(value)

    def finish(self) -> dict[str, float]:
        """Close the store; the median of the runs per operation, and the grown-file write, timed once now."""
        self.store.close()
        results = {key: median(values) for key, values in self.samples.items()}
        results["ops.flush.grown"] = grown_flush_us(self.store_type, next(self.files))
        return results


def core_ops(store_types: Sequence[Callable[..., Any]], *, runs: int, budget_s: float) -> list[dict[str, float]]:
    """The core operations of each store type, µs per call, the store types taking turns run by run.

    The cores are compared by the ratio of their figures, so every run times each of them once,
    seconds apart in one process: a slow spell of the shared machine lands on both, not on the
    one measured in another process minutes later. The order flips every run (A B, B A, ...):
    drift within a run and whatever the first leaves behind (garbage, a cooled cache) then
    falls on each core as often. Reads take ``READ_CALLS`` calls and ``budget_s`` in all,
    shared out among the runs; each figure is the median of its runs.
    """
    with tempfile.TemporaryDirectory(prefix="taskflow-bench-") as tmp:
        files = (os.path.join(tmp, f"ops-{n}.db") for n in itertools.count())
        turns = [_Turns(store_type, files) for store_type in store_types]
        for run in range(runs):
            for turn in turns if run % 2 == 0 else turns[::-1]:
                turn.run(read_calls=READ_CALLS // runs, budget_s=budget_s / runs)
        return [turn.finish() for turn in turns]
