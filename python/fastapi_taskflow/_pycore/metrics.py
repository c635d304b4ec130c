"""Incremental metrics: counts per status, duration histograms, percentiles.

O(1) per event, O(task names) per read. The bucket bounds, the percentile rule and
the rounding are shared with ``metrics.rs`` in the Rust core: change them together.
"""

from __future__ import annotations

from bisect import bisect_left
from math import ceil
from typing import Final

from .statuses import FINISHED_SET, STATUSES

#: Upper bounds in seconds: 10 ** (k / 20) for k in -120..80 (1 microsecond .. 10_000 s), 20 per decade.
BOUNDS: Final[list[float]] = [10.0 ** (k / 20) for k in range(-120, 81)]
#: Bucket i counts BOUNDS[i-1] < d <= BOUNDS[i]; the last bucket counts d > BOUNDS[-1].
N_BUCKETS: Final[int] = len(BOUNDS) + 1
QUANTILES: Final[tuple[float, ...]] = (0.50, 0.95, 0.99)


class Histogram:
    __slots__ = ("buckets", "count", "hi", "lo", "total")

    def __init__(self) -> None:
        self.buckets = [0] * N_BUCKETS
        self.count = 0
        self.total = 0.0
        self.lo = 0.0
        self.hi = 0.0

    def observe(self, seconds: float) -> None:
        self.buckets[bisect_left(BOUNDS, seconds)] += 1
        if self.count == 0:
            self.lo = self.hi = seconds
        elif seconds < self.lo:
            self.lo = seconds
        elif seconds > self.hi:
            self.hi = seconds
        self.count += 1
        self.total += seconds

    def forget(self, seconds: float) -> None:
        """Undo ``observe`` for a deleted record.

        Min and max cannot be undone: they stay until no duration is left, so a percentile may
        clamp to a bound a deleted record set (it stays within its bucket). Twin: ``forget_duration``
        in ``metrics.rs``.
        """
        i = bisect_left(BOUNDS, seconds)
        if self.buckets[i] == 0:
            return  # never counted here (written by another store after this one opened)
        self.buckets[i] -= 1
        self.count -= 1
        if self.count == 0:
            self.total = self.lo = self.hi = 0.0
        else:
            self.total -= seconds

    def average(self) -> float:
        return round(self.total / self.count, 6) if self.count else 0.0

    def percentiles(self) -> list[float | None]:
        """p50, p95, p99: the upper bound of the bucket holding rank ceil(q * n), clamped to [min, max]."""
        n = self.count
        if n == 0:
            return [None] * len(QUANTILES)
        ranks = [max(1, ceil(q * n)) for q in QUANTILES]
        out: list[float | None] = []
        seen = 0
        i = bisect_left(BOUNDS, self.lo)  # the buckets below the minimum are empty
        for rank in ranks:
            while seen + self.buckets[i] < rank:
                seen += self.buckets[i]
                i += 1
            value = BOUNDS[i] if i < len(BOUNDS) else self.hi
            out.append(round(min(max(value, self.lo), self.hi), 6))
        return out


class Aggregate:
    """Counts and durations for one function name, or for all of them."""

    __slots__ = ("counts", "hist", "total")

    def __init__(self) -> None:
        self.total = 0
        self.counts = dict.fromkeys(STATUSES, 0)
        self.hist = Histogram()

    def to_obj(self) -> dict[str, object]:
        counts = self.counts
        obj: dict[str, object] = {"total": self.total}
        obj.update(counts)
        obj["success_rate"] = counts["success"] / self.total if self.total else 0.0
        obj["avg_duration_seconds"] = self.hist.average()
        obj["p50_seconds"], obj["p95_seconds"], obj["p99_seconds"] = self.hist.percentiles()
        return obj


class Metrics:
    __slots__ = ("all", "by_name")

    def __init__(self) -> None:
        self.all = Aggregate()
        self.by_name: dict[str, Aggregate] = {}

    def created(self, func_name: str) -> Aggregate:
        """Count a new pending record; return its name's aggregate for later moves."""
        agg = self.by_name.get(func_name)
        if agg is None:
            agg = self.by_name[func_name] = Aggregate()
        agg.total += 1
        agg.counts["pending"] += 1
        every = self.all
        every.total += 1
        every.counts["pending"] += 1
        return agg

    def moved(self, agg: Aggregate, old: str, new: str) -> None:
        # Never below zero (as ``metrics.rs``): a record claimed from the file may have been
        # written after this store opened, and then was never counted.
        counts = agg.counts
        n = counts[old]
        counts[old] = n - 1 if n else 0
        counts[new] += 1
        counts = self.all.counts
        n = counts[old]
        counts[old] = n - 1 if n else 0
        counts[new] += 1

    def finished_after(self, agg: Aggregate, seconds: float) -> None:
        agg.hist.observe(seconds)
        self.all.hist.observe(seconds)

    def load(self, func_name: str, status: str, start_us: int | None, end_us: int | None) -> None:
        """Count one record read from the snapshot file when the store opens."""
        agg = self.aggregate(func_name)
        for a in (agg, self.all):
            a.total += 1
            if status in a.counts:
                a.counts[status] += 1
        if status in FINISHED_SET and start_us is not None and end_us is not None:
            self.finished_after(agg, (end_us - start_us) / 1e6)

    def forget(self, func_name: str, status: str, start_us: int | None, end_us: int | None) -> None:
        """Undo ``load`` for a deleted finished record, as if it had never been seen (what a reopen counts).

        Counts never go below zero: a record another store wrote after this one opened was never counted.
        """
        agg = self.by_name.get(func_name)
        for a in (self.all,) if agg is None else (agg, self.all):
            a.total = max(0, a.total - 1)
            a.counts[status] = max(0, a.counts[status] - 1)
            if start_us is not None and end_us is not None:
                a.hist.forget((end_us - start_us) / 1e6)

    def aggregate(self, func_name: str) -> Aggregate:
        """The name's aggregate, for a record already counted (one claimed from the file)."""
        agg = self.by_name.get(func_name)
        if agg is None:
            agg = self.by_name[func_name] = Aggregate()
        return agg

    def to_obj(self) -> dict[str, object]:
        """The figures of everything, then of each name that still counts a record, sorted by name."""
        obj = self.all.to_obj()
        by_name = self.by_name
        obj["by_name"] = {name: by_name[name].to_obj() for name in sorted(by_name) if by_name[name].total}
        return obj
