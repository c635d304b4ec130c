"""Pure-Python task core: the reference twin of the compiled ``fastapi_taskflow._core``.

Same classes, same behaviour, same snapshot file format; see ``_core.pyi`` for the
interface. Selected with ``FASTAPI_TASKFLOW_CORE=python``, and used by the
differential tests and benchmarks as the yardstick for the Rust core.
"""

from __future__ import annotations

from .snapshot import CorruptSnapshotError, SnapshotError
from .statuses import STATUSES
from .store import TaskStore
from .version import __version__

__all__ = ["STATUSES", "CorruptSnapshotError", "SnapshotError", "TaskStore", "__version__"]
