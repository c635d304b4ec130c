"""Events kept in the ring, and their JSON.

An event is stored as the few values that changed and serialised only when read
(most events are never read, or read once), then memoised as bytes in the ring.
"""

from __future__ import annotations

from .jsonenc import dumps
from .record import Record, event_task_obj

#: ("created" | "status", record, status, start_us, end_us, retries_used, error, stacktrace)
StatusEvent = tuple[str, Record, str, int | None, int | None, int, str | None, str | None]
#: ("log", task_id, line)
LogEvent = tuple[str, str, str]
Event = StatusEvent | LogEvent | bytes


def event_json(seq: int, event: Event) -> bytes:
    """``{"seq", "type", "task"}`` for created/status events, ``{"seq", "type", "task_id", "line"}`` for logs."""
    if isinstance(event, bytes):
        return event
    if len(event) == 3:
        return dumps({"seq": seq, "type": "log", "task_id": event[1], "line": event[2]})
    kind, rec, status, start_us, end_us, retries_used, error, stacktrace = event
    task = event_task_obj(rec, status, start_us, end_us, retries_used, error, stacktrace)
    return dumps({"seq": seq, "type": kind, "task": task})
