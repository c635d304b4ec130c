"""Observers of task activity and the two kinds of event they receive."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

#: Weight of each log level; unknown levels weigh like "info".
LEVEL_WEIGHTS = {"debug": 0, "info": 1, "warning": 2, "error": 3}

#: The level a lifecycle event is logged at, by status; other statuses are "info".
LIFECYCLE_LEVELS = {"failed": "error", "interrupted": "warning"}


def level_weight(level: str) -> int:
    return LEVEL_WEIGHTS.get(level.lower(), 1)


@dataclass
class LogEvent:
    """One ``task_log`` call made inside a running task."""

    task_id: str
    func_name: str
    message: str
    level: str
    timestamp: datetime
    attempt: int
    tags: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class LifecycleEvent:
    """A task started, or ended in a final status."""

    task_id: str
    func_name: str
    status: str
    timestamp: datetime
    attempt: int
    retries_used: int
    duration: float | None = None
    error: str | None = None
    stacktrace: str | None = None
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def level(self) -> str:
        return LIFECYCLE_LEVELS.get(self.status, "info")


class TaskObserver:
    """Base class of observers: override the hooks you need; each defaults to doing nothing.

    Hooks run on the observer thread, never on the application's event loop, so a
    slow observer delays only other observers. An exception in a hook is logged and
    does not affect the task.
    """

    def __init__(self, min_level: str = "info") -> None:
        self.min_level = min_level

    def accepts(self, level: str) -> bool:
        return level_weight(level) >= level_weight(self.min_level)

    async def on_log(self, event: LogEvent) -> None:
        return None

    async def on_lifecycle(self, event: LifecycleEvent) -> None:
        return None

    async def startup(self) -> None:
        return None

    async def close(self) -> None:
        return None
