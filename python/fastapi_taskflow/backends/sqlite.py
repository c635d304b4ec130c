"""``SqliteBackend``: the snapshot file on this host, kept by the task core itself."""

from __future__ import annotations


class SqliteBackend:
    """A SQLite snapshot file: ``TaskManager(snapshot_backend=SqliteBackend(path))`` is
    ``TaskManager(snapshot_db=path)``.

    The file is written by the task core (in Rust) on its own thread, so there is no
    pool to size: ``max_workers`` is accepted for code written for fastapi-taskflow
    0.12.1 and not used. Processes on one host may share the file; instances on several
    hosts share a Redis, PostgreSQL or MySQL backend instead.
    """

    supports_scheduled_once = True

    def __init__(self, db_path: str = "tasks.db", *, max_workers: int = 4) -> None:
        if not isinstance(db_path, str) or not db_path:
            raise ValueError(f"db_path must be a non-empty path, got {db_path!r}")
        self.db_path = db_path
