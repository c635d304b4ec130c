"""``LoggerChain``: hands each event to several observers in order."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from .base import LifecycleEvent, LogEvent, TaskObserver

logger = logging.getLogger("fastapi_taskflow")


class LoggerChain(TaskObserver):
    """Calls each observer in turn; one that raises is logged and skipped, never fatal."""

    def __init__(self, loggers: Iterable[TaskObserver]) -> None:
        super().__init__(min_level="debug")
        self.loggers = list(loggers)

    async def on_log(self, event: LogEvent) -> None:
        for observer in self.loggers:
            if observer.accepts(event.level):
                try:
                    await observer.on_log(event)
                except Exception:
                    logger.exception("fastapi_taskflow: observer %r failed in on_log", observer)

    async def on_lifecycle(self, event: LifecycleEvent) -> None:
        for observer in self.loggers:
            if observer.accepts(event.level):
                try:
                    await observer.on_lifecycle(event)
                except Exception:
                    logger.exception("fastapi_taskflow: observer %r failed in on_lifecycle", observer)

    async def startup(self) -> None:
        for observer in self.loggers:
            try:
                await observer.startup()
            except Exception:
                logger.exception("fastapi_taskflow: observer %r failed to start", observer)

    async def close(self) -> None:
        for observer in self.loggers:
            try:
                await observer.close()
            except Exception:
                logger.exception("fastapi_taskflow: observer %r failed to close", observer)
