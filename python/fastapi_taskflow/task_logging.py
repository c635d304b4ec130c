"""``task_log`` and ``get_task_context``: what code running inside a task can ask for."""

from __future__ import annotations

import logging
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

_fallback_logger = logging.getLogger("fastapi_taskflow.task")
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


@dataclass(frozen=True)
class TaskContext:
    """The running task, as seen from inside it. ``attempt`` counts from 0."""

    task_id: str
    func_name: str
    attempt: int
    tags: dict[str, str] = field(default_factory=dict)


class LogSink(Protocol):
    def write_log(self, task: ActiveTask, message: str, level: str, extra: dict[str, Any]) -> None: ...


class ActiveTask:
    """What the context variable holds while an attempt runs.

    A plain slotted object: one is made per attempt on the hot path, and the frozen
    ``TaskContext`` is only built when code inside the task asks for it.
    """

    __slots__ = ("attempt", "func_name", "sink", "tags", "task_id")

    def __init__(self, task_id: str, func_name: str, attempt: int, tags: dict[str, str], sink: LogSink) -> None:
        self.task_id = task_id
        self.func_name = func_name
        self.attempt = attempt
        self.tags = tags
        self.sink = sink

    @property
    def context(self) -> TaskContext:
        return TaskContext(self.task_id, self.func_name, self.attempt, self.tags)


current_task: ContextVar[ActiveTask | None] = ContextVar("fastapi_taskflow_task", default=None)


def get_task_context() -> TaskContext | None:
    """The task this code runs in (async or thread task), or None outside any task."""
    active = current_task.get()
    return None if active is None else active.context


def task_log(message: str, *, level: str = "info", **extra: Any) -> None:
    """Add a line to the running task's logs, visible in ``GET /tasks/{id}`` and to observers.

    ``extra`` fields go to observers only. Outside a task the message goes to the
    ``fastapi_taskflow.task`` logger instead.
    """
    active = current_task.get()
    if active is None:
        _fallback_logger.log(_LEVELS.get(level.lower(), logging.INFO), "%s", message)
        return
    active.sink.write_log(active, message, level, extra)


def stamped(message: str) -> str:
    """A stored log line: ``YYYY-MM-DDTHH:MM:SSZ message`` in UTC."""
    return f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {message}"
