"""The text lines the stdout and file observers write."""

from __future__ import annotations

from datetime import datetime

from .base import LifecycleEvent, LogEvent


def _prefix(task_id: str, func_name: str) -> str:
    return f"[{task_id[:8]}] [{func_name}]"


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S")


def log_line(event: LogEvent, *, with_time: bool) -> str:
    head = _prefix(event.task_id, event.func_name)
    return f"{head} {_stamp(event.timestamp)} {event.message}" if with_time else f"{head} {event.message}"


def lifecycle_line(event: LifecycleEvent) -> str:
    return f"{_prefix(event.task_id, event.func_name)} {_stamp(event.timestamp)} -- {event.status.upper()}"
