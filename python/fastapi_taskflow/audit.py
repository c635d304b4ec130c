"""The audit log: the latest actions taken through the task routes, kept in memory."""

from __future__ import annotations

import threading
import uuid
from collections import deque
from typing import Any

from .models import AuditEntry, utc_now

#: Entries kept; the oldest leave first. ``GET /tasks/audit`` returns at most this many.
AUDIT_LOG_SIZE = 1_000


class AuditLog:
    """A bounded log of ``AuditEntry``, newest last inside, newest first when read."""

    def __init__(self, maxlen: int = AUDIT_LOG_SIZE) -> None:
        if maxlen < 1:
            raise ValueError(f"maxlen must be at least 1, got {maxlen!r}")
        self._entries: deque[AuditEntry] = deque(maxlen=maxlen)
        # Reads copy the deque, which must not change while it is copied (a record from another thread).
        self._lock = threading.Lock()

    def record(self, action: str, task_id: str, actor: str, detail: dict[str, Any] | None = None) -> AuditEntry:
        """Add an entry stamped now (UTC) with a fresh uuid4 id, and return it."""
        entry = AuditEntry(
            entry_id=str(uuid.uuid4()),
            action=action,
            task_id=task_id,
            actor=actor,
            timestamp=utc_now(),
            detail=dict(detail or {}),
        )
        with self._lock:
            self._entries.append(entry)
        return entry

    def entries(self) -> list[dict[str, Any]]:
        """Every kept entry as ``to_dict()``, newest first."""
        with self._lock:
            kept = list(self._entries)
        return [entry.to_dict() for entry in reversed(kept)]

    def __len__(self) -> int:
        return len(self._entries)
