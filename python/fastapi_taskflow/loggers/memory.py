"""``InMemoryLogger``: keeps every event in lists, for tests and debugging."""

from __future__ import annotations

from .base import LifecycleEvent, LogEvent, TaskObserver


class InMemoryLogger(TaskObserver):
    """Records log events at or above ``min_level`` and every lifecycle event."""

    def __init__(self, *, min_level: str = "debug") -> None:
        super().__init__(min_level=min_level)
        self.log_events: list[LogEvent] = []
        self.lifecycle_events: list[LifecycleEvent] = []

    def accepts(self, level: str) -> bool:
        return True  # lifecycle events are kept whatever their level; logs are filtered below

    async def on_log(self, event: LogEvent) -> None:
        if super().accepts(event.level):
            self.log_events.append(event)

    async def on_lifecycle(self, event: LifecycleEvent) -> None:
        self.lifecycle_events.append(event)

    def clear(self) -> None:
        self.log_events.clear()
        self.lifecycle_events.clear()
