"""``FileLogger``: writes task logs to a rotating or externally rotated file."""

from __future__ import annotations

import logging
import logging.handlers

from .base import LifecycleEvent, LogEvent, TaskObserver
from .lines import lifecycle_line, log_line

MODES = ("rotate", "watched")


class FileLogger(TaskObserver):
    """Appends ``[<id8>] [<func>] <message>`` lines to ``path``.

    ``mode="rotate"`` rolls the file over at ``max_bytes`` keeping ``backup_count``
    old files; ``mode="watched"`` reopens the file when an outside tool (logrotate)
    moves it.
    """

    def __init__(
        self,
        path: str,
        *,
        max_bytes: int = 10_485_760,
        backup_count: int = 5,
        mode: str = "rotate",
        log_lifecycle: bool = False,
        min_level: str = "info",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        super().__init__(min_level=min_level)
        self.path = path
        self.log_lifecycle = log_lifecycle
        self._logger = logging.getLogger(f"fastapi_taskflow.file_logger.{path}")
        self._logger.propagate = False
        self._logger.setLevel(logging.INFO)
        if not self._logger.handlers:
            handler: logging.Handler
            if mode == "rotate":
                handler = logging.handlers.RotatingFileHandler(
                    path, maxBytes=max_bytes, backupCount=backup_count, encoding="utf-8"
                )
            else:
                handler = logging.handlers.WatchedFileHandler(path, encoding="utf-8")
            handler.setFormatter(logging.Formatter("%(message)s"))
            self._logger.addHandler(handler)

    async def on_log(self, event: LogEvent) -> None:
        self._logger.info(log_line(event, with_time=False))

    async def on_lifecycle(self, event: LifecycleEvent) -> None:
        if self.log_lifecycle:
            self._logger.info(lifecycle_line(event))

    async def close(self) -> None:
        for handler in list(self._logger.handlers):
            self._logger.removeHandler(handler)
            handler.close()
