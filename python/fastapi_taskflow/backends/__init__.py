"""Backends that several instances share: Redis, PostgreSQL, MySQL/MariaDB.

Each backend module is imported on first use of its class, so an application pays
for (and needs) only the driver it uses: ``pip install 'fastapi-taskflow-rs[redis]'``,
``[postgres]`` or ``[mysql]``. Constructing a backend whose driver is missing raises
``ImportError`` naming the extra.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .base import BackendError, ScheduledRow, SharedBackend, TaskRow
from .sqlite import SqliteBackend

#: The name fastapi_taskflow 0.12.1 gives the backend base class.
SnapshotBackend = SharedBackend

if TYPE_CHECKING:
    from .mysql import MySQLBackend
    from .postgres import PostgresBackend
    from .redis import RedisBackend

__all__ = [
    "BackendError",
    "MySQLBackend",
    "PostgresBackend",
    "RedisBackend",
    "ScheduledRow",
    "SharedBackend",
    "SnapshotBackend",
    "SqliteBackend",
    "TaskRow",
]

_LAZY = {"MySQLBackend": ".mysql", "PostgresBackend": ".postgres", "RedisBackend": ".redis"}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
