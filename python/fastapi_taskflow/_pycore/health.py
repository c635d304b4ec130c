"""Health of the snapshot file as the flushes find it: the metrics' ``snapshot`` object.

Twin of ``health.rs`` in the Rust core (same keys, same order, same rules).
"""

from __future__ import annotations

from .isotime import iso_from_us


class SnapshotHealth:
    __slots__ = ("failed_writes", "last_error", "last_write_us", "ok")

    def __init__(self) -> None:
        #: Whether the last flush succeeded (true before the first).
        self.ok = True
        self.failed_writes = 0
        #: The last failure's message, until a flush succeeds again.
        self.last_error: str | None = None
        #: When the last successful flush ended (µs since epoch).
        self.last_write_us: int | None = None

    def succeeded(self, now_us: int) -> None:
        self.ok = True
        self.last_error = None
        self.last_write_us = now_us

    def failed(self, message: str) -> None:
        self.ok = False
        self.failed_writes += 1
        self.last_error = message

    def to_obj(self, unwritten: int) -> dict[str, object]:
        """``{"ok", "unwritten", "failed_writes", "last_error", "last_write_at"}``."""
        return {
            "ok": self.ok,
            "unwritten": unwritten,
            "failed_writes": self.failed_writes,
            "last_error": self.last_error,
            "last_write_at": None if self.last_write_us is None else iso_from_us(self.last_write_us),
        }
