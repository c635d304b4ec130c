"""Bounded event ring with sequence numbers (SSE resume, live logs)."""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class EventRing(Generic[T]):
    """The newest ``capacity`` events, numbered 1, 2, 3... in order of arrival.

    Event ``seq`` lives in slot ``seq % capacity``, so lookups by sequence number
    are O(1). Not thread-safe: the store's lock guards it.
    """

    __slots__ = ("_buf", "_cap", "last_seq")

    def __init__(self, capacity: int) -> None:
        self._cap = capacity
        self._buf: list[T | None] = [None] * capacity
        self.last_seq = 0

    def push(self, event: T) -> int:
        seq = self.last_seq + 1
        self.last_seq = seq
        self._buf[seq % self._cap] = event
        return seq

    def first_seq(self) -> int:
        """Sequence number of the oldest event kept (``last_seq + 1`` when empty)."""
        return max(1, self.last_seq - self._cap + 1)

    def since(self, after: int, limit: int) -> tuple[list[tuple[int, T]], bool]:
        """Up to ``limit`` events numbered above ``after``, oldest first, and whether some were lost."""
        first = self.first_seq()
        start = after + 1
        missed = start < first
        if missed:
            start = first
        stop = min(self.last_seq, start + limit - 1) + 1
        buf, cap = self._buf, self._cap
        out: list[tuple[int, T]] = []
        for seq in range(start, stop):
            event = buf[seq % cap]
            assert event is not None
            out.append((seq, event))
        return out, missed

    def replace(self, seq: int, old: T, new: T) -> None:
        """Swap event ``seq`` for ``new`` if it is still ``old`` and still kept (memoised serialisation)."""
        if seq >= self.first_seq() and self._buf[seq % self._cap] is old:
            self._buf[seq % self._cap] = new
