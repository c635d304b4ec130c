"""What the action routes do: retry, bulk retry, cancel and history deletion, over a ``TaskManager``.

Differences from fastapi_taskflow 0.12.1, on purpose: a retry keeps the original's
arguments (encrypted ones included), tags, priority and queue, and links to the
original through ``retry_of``; functions registered with ``name=`` can be retried;
history deletion removes all five finished statuses from memory and disk alike.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, TypeVar, cast

import orjson
from fastapi import HTTPException

from .errors import SnapshotError
from .models import utc_now

if TYPE_CHECKING:
    from ._core import TaskStore
    from .manager import TaskManager

T = TypeVar("T")

logger = logging.getLogger("fastapi_taskflow")

#: Statuses a single or bulk retry accepts.
RETRYABLE = frozenset({"failed", "interrupted", "rejected"})
#: Statuses ``retry-failed`` collects (a rejected task is retried one by one, knowingly).
RETRY_FAILED_STATUSES = ("failed", "interrupted")
CANCELLABLE = frozenset({"pending", "running"})
#: Microseconds per unit of ``DELETE /history``.
HISTORY_UNITS = {"min": 60_000_000, "hour": 3_600_000_000, "day": 86_400_000_000}
#: How many records one read of the ``retry-failed`` scan takes from the core.
SCAN_PAGE = 500
#: ``task_ids`` of a bulk retry named in its audit entry.
AUDITED_IDS = 20

_SINCE = re.compile(r"([0-9]+)([hd])")

Task = dict[str, object]


class ActionRefused(HTTPException):
    """The action cannot be done; the route answers with this status and ``{"detail": ...}``."""


def parse_since(since: str) -> datetime | None:
    """The oldest creation time ``retry-failed`` takes for ``<N>h``, ``<N>d`` or ``all`` (None)."""
    if since == "all":
        return None
    match = _SINCE.fullmatch(since)
    if match is None:
        raise ActionRefused(400, f"since must be <N>h, <N>d or all (e.g. 6h, 7d), got {since!r}")
    amount, unit = int(match.group(1)), match.group(2)
    try:
        return utc_now() - (timedelta(hours=amount) if unit == "h" else timedelta(days=amount))
    except OverflowError:
        return None  # a window longer than the calendar holds every task


def now_us() -> int:
    """Microseconds since the epoch, the core's unit of time."""
    return time.time_ns() // 1_000


def history_cutoff_us(value: int, unit: str) -> int:
    """Microseconds since the epoch before which finished tasks are deleted; 0 deletes nothing."""
    unit_us = HISTORY_UNITS.get(unit)
    if unit_us is None:
        raise ActionRefused(400, f"unit must be one of {', '.join(HISTORY_UNITS)}, got {unit!r}")
    return max(0, now_us() - value * unit_us)


def _created_at(task: Task) -> datetime:
    return datetime.fromisoformat(str(task["created_at"]))


class TaskActions:
    """The actions of one manager's routes.

    Retries are serialised: two retries of one task arriving together would both see
    it failed, and with ``retry_replaces_original`` both would run it again.
    """

    def __init__(self, manager: TaskManager) -> None:
        self._manager = manager
        self._core: TaskStore = manager.core
        self._retrying = asyncio.Lock()

    async def off_loop(self, call: Callable[[], T]) -> T:
        """Run a core call; off the event loop thread when it may reach the snapshot file."""
        if self._core.db_path is None:
            return call()
        return await asyncio.to_thread(call)

    # -- retries ----------------------------------------------------------------

    async def retry(self, task_id: str, actor: str) -> bytes:
        """Run a failed, interrupted or rejected task again; ``{"task_id": new id, "task": ...}``."""
        async with self._retrying:
            task = await self._task_in(task_id, RETRYABLE, "failed, interrupted or rejected tasks can be retried")
            new_id = self._resubmit(task)
            body = self._task_body(new_id, self._core.get_json(new_id))
            await self._drop_originals([task_id])
        self._manager.audit.record("retry", task_id, actor, {"new_task_id": new_id})
        return body

    async def bulk_retry(self, task_ids: list[str], actor: str) -> dict[str, Any]:
        """Retry each retryable task of ``task_ids``; unknown, unfit and unregistered ones are skipped."""
        unique = list(dict.fromkeys(task_ids))
        async with self._retrying:
            found = await self.off_loop(lambda: [self._core.get(task_id) for task_id in unique])
            results = await self._retry_all(task for task in found if task is not None and task["status"] in RETRYABLE)
        # A repeated id runs once; its repeats count as skipped.
        outcome = _bulk_outcome(results, skipped=len(task_ids) - len(results))
        self._manager.audit.record(
            "bulk_retry",
            "bulk",
            actor,
            {"dispatched": outcome["dispatched"], "skipped": outcome["skipped"], "task_ids": unique[:AUDITED_IDS]},
        )
        return outcome

    async def retry_failed(self, since: str, func_name: str | None, actor: str) -> dict[str, Any]:
        """Retry every failed or interrupted task created within ``since``, oldest first."""
        oldest = parse_since(since)
        async with self._retrying:
            candidates = await self.off_loop(lambda: self._failed_since(oldest, func_name))
            results = await self._retry_all(candidates)
        outcome = _bulk_outcome(results, skipped=len(candidates) - len(results))
        self._manager.audit.record(
            "bulk_retry",
            "bulk",
            actor,
            {
                "since": since,
                "func_name": func_name,
                "dispatched": outcome["dispatched"],
                "skipped": outcome["skipped"],
            },
        )
        return outcome

    def _failed_since(self, oldest: datetime | None, func_name: str | None) -> list[Task]:
        """Failed and interrupted tasks created at ``oldest`` or later, memory and disk, oldest first."""
        found: list[Task] = []
        for status in RETRY_FAILED_STATUSES:
            cursor: str | None = None
            while True:
                body, cursor = self._core.page_json(status=status, func_name=func_name, limit=SCAN_PAGE, cursor=cursor)
                page = cast("list[Task]", orjson.loads(body))
                # Pages are newest first, so the first record older than the window ends the scan.
                recent = [task for task in page if oldest is None or _created_at(task) >= oldest]
                for listed in recent:
                    task = self._core.get(str(listed["task_id"]))
                    if task is not None and task["status"] == status:
                        found.append(task)
                if cursor is None or len(recent) < len(page):
                    break
        found.sort(key=lambda task: (_created_at(task), str(task["task_id"])))
        return found

    async def _retry_all(self, tasks: Iterable[Task]) -> list[tuple[str, str]]:
        """``(original id, new id)`` of each task dispatched again; the others are skipped."""
        results: list[tuple[str, str]] = []
        for task in tasks:
            try:
                new_id = self._resubmit(task)
            except ActionRefused as exc:
                logger.info("fastapi_taskflow: retry of task %s skipped: %s", task["task_id"], exc.detail)
                continue
            results.append((str(task["task_id"]), new_id))
        await self._drop_originals([original for original, _ in results])
        return results

    def _resubmit(self, task: Task) -> str:
        """Start a new task with the original's function, arguments, tags, priority and queue."""
        manager = self._manager
        task_id = str(task["task_id"])
        func_name = str(task["func_name"])
        spec = manager.spec_named(func_name)
        if spec is None:
            raise ActionRefused(
                409,
                f"Function {func_name!r} is not registered in this process, so task {task_id} cannot be "
                "retried; register it with @task_manager.task()",
            )
        arguments = manager.arguments_of(task)
        if arguments is None:
            raise ActionRefused(
                409,
                f"The arguments of task {task_id} are no longer available (it was not persistent and has "
                "left memory), so it cannot be retried; use persist=True to keep them",
            )
        args, kwargs, payload = arguments
        tags = cast("dict[str, str] | None", task.get("tags")) or None
        priority = task.get("priority")
        return manager.submit(
            spec,
            args,
            kwargs,
            payload=payload,
            tags=dict(tags) if tags else None,
            priority=priority if isinstance(priority, int) else None,
            queue=str(task.get("queue") or "default"),
            retry_of=task_id,
            source="manual",
        )

    async def _drop_originals(self, task_ids: list[str]) -> None:
        """With ``retry_replaces_original``, delete the retried records from memory and disk."""
        if not self._manager.retry_replaces_original or not task_ids:
            return
        core = self._core
        for task_id in task_ids:
            self._manager.runner.forget_arguments(task_id)

        def drop() -> None:
            for task_id in task_ids:
                try:
                    core.delete(task_id)
                except SnapshotError as exc:
                    # The retry runs regardless; the original stays listed until a later delete.
                    logger.warning("fastapi_taskflow: could not delete retried task %s: %s", task_id, exc)

        await self.off_loop(drop)

    async def _task_in(self, task_id: str, statuses: frozenset[str], only: str) -> Task:
        """The task, if its status is one of ``statuses``; else 404 (unknown) or 400 (saying ``only ...``)."""
        task = await self.off_loop(lambda: self._core.get(task_id))
        if task is None:
            raise ActionRefused(404, "Task not found")
        if task["status"] not in statuses:
            raise ActionRefused(400, f"Task is {task['status']}; only {only}")
        return task

    # -- cancel -----------------------------------------------------------------

    async def cancel(self, task_id: str, actor: str) -> bytes:
        """Cancel a pending or running task; ``{"task_id", "task"}`` (the task may still show running)."""
        await self._task_in(task_id, CANCELLABLE, "pending or running tasks can be cancelled")
        if not self._manager.cancel(task_id):
            raise ActionRefused(
                400,
                "Task cannot be cancelled: it finished meanwhile or is not running in this process",
            )
        self._manager.audit.record("cancel", task_id, actor, {})
        return self._task_body(task_id, await self.off_loop(lambda: self._core.get_json(task_id)))

    # -- history ----------------------------------------------------------------

    async def delete_history(self, value: int, unit: str) -> dict[str, int]:
        """Delete finished tasks that ended more than ``value`` ``unit`` ago, from memory and disk."""
        end_before = datetime.fromtimestamp(history_cutoff_us(value, unit) / 1_000_000, timezone.utc)
        try:
            memory, disk = await self._manager.delete_history(end_before)
        except SnapshotError as exc:
            raise ActionRefused(503, str(exc)) from exc
        # A record in both places counts in both; ``deleted`` approximates how many tasks left.
        return {"deleted": disk + max(0, memory - disk), "store": memory, "backend": disk}

    @staticmethod
    def _task_body(task_id: str, task_json: bytes | None) -> bytes:
        task = orjson.Fragment(task_json) if task_json is not None else None
        return orjson.dumps({"task_id": task_id, "task": task})


def _bulk_outcome(results: list[tuple[str, str]], *, skipped: int) -> dict[str, Any]:
    return {
        "dispatched": len(results),
        "skipped": skipped,
        "results": [{"original_task_id": original, "new_task_id": new} for original, new in results],
    }
