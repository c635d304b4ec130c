"""Production background tasks for FastAPI: ids, retries, status, persistence, metrics.

A drop-in implementation of the ``fastapi_taskflow`` API whose task store, metrics
and snapshots run in a Rust core.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .admin import TaskAdmin
from .backends import SnapshotBackend, SqliteBackend
from .errors import TaskArgumentError
from .loggers import FileLogger, InMemoryLogger, LifecycleEvent, LogEvent, LoggerChain, StdoutLogger, TaskObserver
from .manager import TaskManager
from .models import QueueConfig, ScheduledOnce, TaskConfig, TaskRecord, TaskStatus
from .queues import QueueFullError
from .task_logging import TaskContext, get_task_context, task_log
from .wrapper import ManagedBackgroundTasks

try:
    __version__ = version("fastapi-taskflow-rs")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "unknown"

# The order of fastapi_taskflow's own __all__; names of features still to come are added as they land.
__all__ = [  # noqa: RUF022
    "TaskAdmin",
    "TaskManager",
    "ManagedBackgroundTasks",
    "TaskStatus",
    "TaskRecord",
    "TaskConfig",
    "QueueConfig",
    "ScheduledOnce",
    "QueueFullError",
    "SnapshotBackend",
    "SqliteBackend",
    "RedisBackend",
    "TaskArgumentError",
    "TaskObserver",
    "LogEvent",
    "LifecycleEvent",
    "LoggerChain",
    "FileLogger",
    "InMemoryLogger",
    "StdoutLogger",
    "task_log",
    "TaskContext",
    "get_task_context",
]


def __getattr__(name: str) -> object:
    # Imported on first use: the Redis client is an optional extra, and costly to import.
    if name == "RedisBackend":
        from .backends import RedisBackend

        return RedisBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
