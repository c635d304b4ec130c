"""Production background tasks for FastAPI: ids, retries, status, persistence, metrics.

A drop-in implementation of the ``fastapi_taskflow`` API whose task store, metrics
and snapshots run in a Rust core.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .admin import TaskAdmin
from .manager import TaskManager
from .models import QueueConfig, TaskConfig, TaskRecord, TaskStatus
from .wrapper import ManagedBackgroundTasks

try:
    __version__ = version("fastapi-taskflow-rs")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "unknown"

__all__ = [
    "ManagedBackgroundTasks",
    "QueueConfig",
    "TaskAdmin",
    "TaskConfig",
    "TaskManager",
    "TaskRecord",
    "TaskStatus",
]
