"""Where schedule locks and one-off runs live: the snapshot file, or the shared backend.

The scheduler sees one interface either way. With only a snapshot file, the core keeps
them in that file (processes sharing it agree through it). With a shared backend,
the backend keeps them, so that every instance takes the same locks and sees the same
one-off runs; a fired run becomes a journaled task of the instance that claimed it.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Protocol

import orjson

if TYPE_CHECKING:
    from ._core import TaskStore
    from .backends.base import ScheduledRow, SharedBackend
    from .persistence import SnapshotWriter


class ScheduleStore(Protocol):
    """Schedule locks and one-off runs. Rows are dicts shaped as the core's ``load_due`` returns them."""

    async def acquire_lock(self, key: str, ttl: float) -> bool: ...

    async def save(self, run_key: str, func_name: str, fire_us: int, **fields: Any) -> None:
        """Store a one-off run (replacing one of the same key); ``fields`` as the core's ``save_scheduled``."""

    async def load_due(self, before_us: int, limit: int) -> list[dict[str, Any]]: ...

    async def delete(self, run_key: str) -> bool: ...

    async def fire(self, run_key: str, executor: str | None) -> tuple[str, bool] | None:
        """Consume the run and create its journaled task: as the core's ``fire_scheduled``."""


class FileSchedules:
    """Schedules kept in the snapshot file by the core (its I/O off the event loop)."""

    def __init__(self, core: TaskStore) -> None:
        self._core = core

    async def acquire_lock(self, key: str, ttl: float) -> bool:
        return await asyncio.to_thread(self._core.acquire_lock, key, ttl)

    async def save(self, run_key: str, func_name: str, fire_us: int, **fields: Any) -> None:
        await asyncio.to_thread(lambda: self._core.save_scheduled(run_key, func_name, fire_us, **fields))

    async def load_due(self, before_us: int, limit: int) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self._core.load_due, before_us, limit)

    async def delete(self, run_key: str) -> bool:
        return await asyncio.to_thread(self._core.delete_scheduled, run_key)

    async def fire(self, run_key: str, executor: str | None) -> tuple[str, bool] | None:
        return await asyncio.to_thread(lambda: self._core.fire_scheduled(run_key, executor=executor, journal=True))


class SharedSchedules:
    """Schedules kept in the shared backend, so that every instance agrees on them.

    Firing claims the run in the backend (one instance wins), then creates the task
    in the local journal and waits for it to be written: from then on a crash of this
    instance hands the task to another one, like any task it accepted.
    """

    def __init__(self, backend: SharedBackend, core: TaskStore, writer: SnapshotWriter) -> None:
        self._backend = backend
        self._core = core
        self._writer = writer

    async def acquire_lock(self, key: str, ttl: float) -> bool:
        return await self._backend.acquire_lock(key, ttl)

    async def save(self, run_key: str, func_name: str, fire_us: int, **fields: Any) -> None:
        row: ScheduledRow = {
            "run_key": run_key,
            "func_name": func_name,
            "fire_us": fire_us,
            "created_us": time.time_ns() // 1_000,
            "args_json": fields.get("args_json"),
            "kwargs_json": fields.get("kwargs_json"),
            "encrypted_payload": fields.get("encrypted_payload"),
            "queue": fields.get("queue") or "default",
            "priority": fields.get("priority"),
            "idempotency_key": fields.get("idempotency_key"),
            "tags_json": orjson.dumps(fields.get("tags") or {}).decode(),
        }
        await self._backend.save_scheduled(row)

    async def load_due(self, before_us: int, limit: int) -> list[dict[str, Any]]:
        return [_as_core_row(row) for row in await self._backend.load_due(before_us, limit)]

    async def delete(self, run_key: str) -> bool:
        return await self._backend.delete_scheduled(run_key)

    async def fire(self, run_key: str, executor: str | None) -> tuple[str, bool] | None:
        claimed = await self._backend.claim_scheduled(run_key)
        if claimed is None:
            return None
        row = _as_core_row(claimed)
        created = self._core.create(
            row["func_name"],
            queue=row["queue"],
            executor=executor,
            priority=row["priority"],
            source="scheduled",
            tags=row["tags"],
            idempotency_key=row["idempotency_key"],
            args_json=row["args_json"],
            kwargs_json=row["kwargs_json"],
            encrypted_payload=row["encrypted_payload"],
            journal=True,
        )
        await self._writer.durable()
        return created


def _as_core_row(row: ScheduledRow) -> dict[str, Any]:
    """A backend's one-off row in the shape of the core's ``load_due``: tags as a dict."""
    tags = orjson.loads(row["tags_json"] or "{}")
    shaped: dict[str, Any] = {key: value for key, value in row.items() if key != "tags_json"}
    shaped["tags"] = {k: v for k, v in tags.items() if isinstance(v, str)} if isinstance(tags, dict) else {}
    return shaped
