"""Exceptions raised to user code."""

from __future__ import annotations

from ._selected import core

#: The snapshot file cannot be opened, read or written; the message names the file.
SnapshotError: type[RuntimeError] = core.SnapshotError

#: The snapshot file is damaged or not SQLite at all (raised when it is opened).
CorruptSnapshotError: type[RuntimeError] = core.CorruptSnapshotError


class TaskArgumentError(ValueError):
    """A task's arguments cannot be sent to its executor (e.g. unpicklable for a process task).

    Raised by ``add_task`` before anything is stored; the message names the argument.
    """


class TaskTimeoutError(TimeoutError):
    """An attempt ran longer than its task's ``timeout``.

    It fails the attempt like any exception (and is retried like one). The record's
    ``error`` reads ``TimeoutError: attempt exceeded timeout=...``; its ``stacktrace``
    shows where the attempt was when the deadline passed, when that is known.
    """

    def __init__(self, message: str, stacktrace: str | None = None) -> None:
        super().__init__(message)
        #: What the task record shows as ``error``.
        self.task_error = f"TimeoutError: {message}"
        #: What the task record shows as ``stacktrace``.
        self.task_stacktrace = stacktrace or f"TimeoutError: {message}\n"
