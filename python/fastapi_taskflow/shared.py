"""Several instances, one shared backend: what a manager does differently when it has one.

Every task is journaled in the instance's local snapshot file, and the replicator
copies the file's rows to the backend, so the backend holds the tasks of every
instance: live ones while they run, finished ones afterwards. Reads (``GET /tasks``,
``GET /tasks/{id}``) merge this instance's own records, which are always the freshest
for its tasks, with the backend's. Idempotency keys are claimed in the backend just
before a task runs, so that one key runs once across instances.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import orjson

from .backends.base import BackendError
from .replication import Replicator
from .schedule_store import SharedSchedules
from .scheduling_once import from_us

if TYPE_CHECKING:
    from ._core import TaskStore
    from .backends.base import SharedBackend, TaskRow
    from .persistence import SnapshotWriter

logger = logging.getLogger("fastapi_taskflow")

_US = 1_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class SharedMode:
    """The replicator, the shared schedules and the merged reads of one manager."""

    def __init__(
        self,
        core: TaskStore,
        backend: SharedBackend,
        writer: SnapshotWriter,
        *,
        lease: float,
        heartbeat: float,
        idempotency_ttl: float | None,
        adopt: Callable[[Mapping[str, Any]], None],
    ) -> None:
        self._core = core
        self.backend = backend
        self._idempotency_ttl = idempotency_ttl
        #: Key releases under way (a reference keeps each task alive until it ends).
        self._releases: set[asyncio.Task[None]] = set()
        self.replicator = Replicator(core, backend, lease=lease, heartbeat=heartbeat, adopt=adopt)
        self.schedules = SharedSchedules(backend, core, writer)

    # -- idempotency across instances -------------------------------------------

    async def key_holder(self, key: str, task_id: str) -> str | None:
        """The task holding ``key`` across instances (``task_id`` when this one won it).

        None when the backend cannot tell (it is away): the task then runs, as the local
        check let it, and the failure is logged.
        """
        try:
            return await self.backend.claim_idempotency_key(key, task_id, self._idempotency_ttl)
        except BackendError as exc:
            logger.warning("fastapi_taskflow: idempotency key %r not checked across instances: %s", key, exc)
            return None

    def free_key_soon(self, key: str, task_id: str) -> None:
        """Let another task take ``key`` (this one failed), in the background."""
        release = asyncio.get_running_loop().create_task(self._free_key(key, task_id))
        self._releases.add(release)
        release.add_done_callback(self._releases.discard)

    async def _free_key(self, key: str, task_id: str) -> None:
        try:
            await self.backend.release_idempotency_key(key, task_id)
        except BackendError as exc:
            logger.warning("fastapi_taskflow: idempotency key %r not released in the backend: %s", key, exc)

    # -- merged reads ---------------------------------------------------------------

    async def page_json(
        self,
        local: tuple[bytes, str | None],
        *,
        status: str | None,
        func_name: str | None,
        limit: int,
        cursor: str | None,
        tag: str | None,
    ) -> tuple[bytes, str | None]:
        """This instance's page ``local`` merged with the backend's page for the same query.

        Both are newest first by ``(created, task_id)``: the merge keeps that order, lists
        a task once (as this instance has it, when it does) and cuts at ``limit``. When the
        backend is away, the local page is served as it is.
        """
        body, local_next = local
        try:
            rows = await self.backend.page(
                status=status,
                func_name=func_name,
                tag=_split_tag(tag),
                limit=limit,
                before=_parse_cursor(cursor),
            )
        except BackendError as exc:
            logger.warning("fastapi_taskflow: listing this instance's tasks only: %s", exc)
            return local
        mine: list[dict[str, Any]] = orjson.loads(body)
        merged = {record["task_id"]: (_created_us(record), record) for record in mine}
        for row in rows:
            if row["task_id"] not in merged:
                merged[row["task_id"]] = (row["created_us"], row_record(row))
        ordered = sorted(merged.items(), key=lambda item: (item[1][0], item[0]), reverse=True)
        more = local_next is not None or len(rows) >= limit or len(ordered) > limit
        page = ordered[:limit]
        next_cursor = f"{page[-1][1][0]}:{page[-1][0]}" if more and page else None
        return orjson.dumps([record for _, (_, record) in page]), next_cursor

    async def get_json(self, task_id: str) -> bytes | None:
        """A task of another instance (this one has none of that id), from the backend."""
        try:
            row = await self.backend.get(task_id)
        except BackendError as exc:
            logger.warning("fastapi_taskflow: task %s not looked up in the backend: %s", task_id, exc)
            return None
        if row is None:
            return None
        detail = row_record(row)
        detail["logs_dropped"] = row["logs_dropped"]
        detail["retry_of"] = row["retry_of"]
        return orjson.dumps(detail)

    async def delete_finished_before(self, end_before: datetime) -> None:
        """Delete every instance's finished tasks that ended before ``end_before`` from the backend."""
        cutoff_us = (end_before - _EPOCH) // timedelta(microseconds=1)
        try:
            await self.backend.delete_finished_before(cutoff_us)
        except BackendError as exc:
            logger.warning("fastapi_taskflow: old history not deleted from the backend: %s", exc)

    def health(self) -> dict[str, Any]:
        return self.replicator.health()


def row_record(row: TaskRow) -> dict[str, Any]:
    """A backend row as the 16 keys of a record's JSON, as the core writes them."""
    start, end = row["start_us"], row["end_us"]
    tags = orjson.loads(row["tags_json"] or "{}")
    return {
        "task_id": row["task_id"],
        "func_name": row["func_name"],
        "status": row["status"],
        "created_at": from_us(row["created_us"]).isoformat(),
        "start_time": None if start is None else from_us(start).isoformat(),
        "end_time": None if end is None else from_us(end).isoformat(),
        "duration": None if start is None or end is None else (end - start) / _US,
        "retries_used": row["retries_used"],
        "error": row["error"],
        "logs": orjson.loads(row["logs_json"] or "[]"),
        "stacktrace": row["stacktrace"],
        "tags": tags if isinstance(tags, dict) else {},
        "source": row["source"],
        "priority": row["priority"],
        "executor": row["executor"],
        "queue": row["queue"],
    }


def _created_us(record: Mapping[str, Any]) -> int:
    """The ``created_at`` of a record's JSON back in µs since the epoch (exact: no float on the way)."""
    return (datetime.fromisoformat(record["created_at"]) - _EPOCH) // timedelta(microseconds=1)


def _parse_cursor(cursor: str | None) -> tuple[int, str] | None:
    """``"<created_us>:<task_id>"`` (the core already refused a malformed one)."""
    if cursor is None:
        return None
    created, _, task_id = cursor.partition(":")
    return int(created), task_id


def _split_tag(tag: str | None) -> tuple[str, str] | None:
    if tag is None:
        return None
    key, _, value = tag.partition("=")
    return key, value
