"""Sorted key indexes for paging and retention.

Keys are ``(created_us, task_id)``, kept ascending; pages read them backwards. Keys
arrive in time order, so adding one is nearly always an append. Removal is lazy:
an entry whose record left the index (moved to another status, or left memory) stays
as a *stale* entry that readers skip, until stale entries outnumber live ones and the
list is compacted. Deleting from the front of a long Python list would move every
pointer after it, on every status change.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Callable, Iterator

Key = tuple[int, str]

# Compacting tiny lists would cost more than skipping their stale entries.
_COMPACT_MIN = 64


class KeyIndex:
    __slots__ = ("keys", "stale")

    def __init__(self) -> None:
        self.keys: list[Key] = []
        self.stale = 0

    def live(self) -> int:
        return len(self.keys) - self.stale

    def add(self, key: Key) -> None:
        """Add ``key``, or revive its stale entry (a record returning to a status it held before)."""
        keys = self.keys
        if not keys or keys[-1] < key:
            keys.append(key)
            return
        i = bisect_left(keys, key)
        if i < len(keys) and keys[i] == key:
            self.stale -= 1
        else:
            keys.insert(i, key)

    def retire(self, count: int, is_live: Callable[[Key], bool]) -> None:
        """Note that ``count`` entries went stale; compact when they outnumber the live ones."""
        self.stale += count
        if self.stale > _COMPACT_MIN and self.stale * 2 > len(self.keys):
            self.keys = [k for k in self.keys if is_live(k)]
            self.stale = 0


class FinishedQueue:
    """Keys of the finished records in memory, oldest first: the retention order."""

    __slots__ = ("head", "keys")

    def __init__(self) -> None:
        self.keys: list[Key] = []
        self.head = 0

    def __len__(self) -> int:
        return len(self.keys) - self.head

    def add(self, key: Key) -> None:
        keys = self.keys
        if not keys or keys[-1] < key:
            keys.append(key)
        else:
            insort(keys, key, lo=self.head)

    def oldest(self) -> Iterator[Key]:
        """The keys, oldest first. Do not change the queue while iterating."""
        keys = self.keys
        for i in range(self.head, len(keys)):
            yield keys[i]

    def pop_oldest(self) -> Key:
        key = self.keys[self.head]
        self.head += 1
        self._trim()
        return key

    def remove(self, gone: set[str]) -> None:
        keys, head = self.keys, self.head
        n = len(gone)
        if all(k[1] in gone for k in keys[head : head + n]):
            self.head += n
            self._trim()
        else:
            self.keys = [k for k in keys[head:] if k[1] not in gone]
            self.head = 0

    def _trim(self) -> None:
        if self.head > _COMPACT_MIN and self.head * 2 > len(self.keys):
            del self.keys[: self.head]
            self.head = 0
