"""``StdoutLogger``: prints task logs and lifecycle events."""

from __future__ import annotations

import sys

from .base import LifecycleEvent, LogEvent, TaskObserver
from .lines import lifecycle_line, log_line


class StdoutLogger(TaskObserver):
    """Prints ``[<id8>] [<func>] <time> <message>`` lines (and lifecycle lines if asked)."""

    def __init__(self, *, log_lifecycle: bool = True, min_level: str = "info") -> None:
        super().__init__(min_level=min_level)
        self.log_lifecycle = log_lifecycle

    async def on_log(self, event: LogEvent) -> None:
        print(log_line(event, with_time=True), file=sys.stdout, flush=True)

    async def on_lifecycle(self, event: LifecycleEvent) -> None:
        if self.log_lifecycle:
            print(lifecycle_line(event), file=sys.stdout, flush=True)
