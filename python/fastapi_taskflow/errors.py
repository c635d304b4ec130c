"""Exceptions raised to user code."""

from __future__ import annotations

from ._selected import core

#: The snapshot file cannot be opened, read or written; the message names the file.
SnapshotError: type[RuntimeError] = core.SnapshotError

#: The snapshot file is damaged or not SQLite at all (raised when it is opened).
CorruptSnapshotError: type[RuntimeError] = core.CorruptSnapshotError
