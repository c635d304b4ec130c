"""Clock helpers shared by the workloads: per-call latency samples and medians."""

from __future__ import annotations

import gc
import statistics
from collections.abc import Awaitable, Callable
from time import perf_counter_ns

#: Calls made before sampling, so lazy set-up (route tables, caches) is not measured.
WARMUP_CALLS = 20


def median(values: list[float]) -> float:
    return statistics.median(values)


def latency_us(call: Callable[[], object], *, max_calls: int, budget_s: float) -> float:
    """Median µs of one ``call()``, over at most ``max_calls`` calls or ``budget_s`` seconds."""
    for _ in range(WARMUP_CALLS):
        call()
    gc.collect()
    samples: list[float] = []
    deadline = perf_counter_ns() + int(budget_s * 1e9)
    while len(samples) < max_calls and (len(samples) < 5 or perf_counter_ns() < deadline):
        start = perf_counter_ns()
        call()
        samples.append((perf_counter_ns() - start) / 1_000)
    return median(samples)


async def latency_us_async(call: Callable[[], Awaitable[object]], *, max_calls: int, budget_s: float) -> float:
    """``latency_us`` for a coroutine function, each call awaited on the running loop."""
    for _ in range(WARMUP_CALLS):
        await call()
    gc.collect()
    samples: list[float] = []
    deadline = perf_counter_ns() + int(budget_s * 1e9)
    while len(samples) < max_calls and (len(samples) < 5 or perf_counter_ns() < deadline):
        start = perf_counter_ns()
        await call()
        samples.append((perf_counter_ns() - start) / 1_000)
    return median(samples)
