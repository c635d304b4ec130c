"""One-off runs: stored in the snapshot file by ``schedule_once``, fired once by whichever process gets there first.

The file is the source of truth. The runs due within ``HORIZON`` are *armed* in
memory only to know when to wake up; at that moment the due rows are read again and
each is fired with ``fire_scheduled``, which removes the row and creates the task's
journaled record in one transaction. Two processes sharing the file never both fire
a run, a run rescheduled or cancelled by another process is seen at its due time,
and a crash right after the firing leaves a journaled task that the next start runs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, cast

import orjson

from .models import ScheduledOnce
from .process_executor import validate_process_args
from .queues import check_priority

if TYPE_CHECKING:
    from .manager import TaskManager
    from .registry import TaskFunc
    from .schedule_store import ScheduleStore

logger = logging.getLogger("fastapi_taskflow")

_US = 1_000_000

#: Seconds ahead within which stored runs are armed in memory (as fastapi_taskflow's DEFAULT_HORIZON).
HORIZON = 300.0
#: Seconds between two reads of the runs due within the horizon (as DEFAULT_REFILL_INTERVAL).
REFILL_INTERVAL = 150.0
#: Seconds before reading again after a read of the file failed.
RETRY_PAUSE = 5.0
#: How far ahead ``list_scheduled()`` looks by default.
LIST_WINDOW = 365 * 86_400.0
#: Rows one read takes; a full batch is followed by another read at once.
BATCH = 1_000


def require_file(manager: TaskManager, what: str) -> None:
    """One-off runs live in the snapshot file or the shared backend: refuse ``what`` without either."""
    if manager.schedules is None:
        raise RuntimeError(
            f"{what} needs a snapshot file to keep one-off runs in: "
            "create the manager with TaskManager(snapshot_db='tasks.db')"
        )


def to_us(moment: datetime, what: str = "run_at") -> int:
    """Microseconds since the epoch of ``moment``; a naive datetime is read as UTC."""
    if not isinstance(moment, datetime):
        raise TypeError(f"{what} must be a datetime, got {type(moment).__name__}")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return round(moment.timestamp() * _US)


def from_us(us: int) -> datetime:
    return datetime.fromtimestamp(us // _US, timezone.utc).replace(microsecond=us % _US)


def scheduled_once(row: Mapping[str, Any]) -> ScheduledOnce:
    """A row of ``load_due`` as the public ``ScheduledOnce``."""
    args_json, kwargs_json = row.get("args_json"), row.get("kwargs_json")
    priority = row.get("priority")
    return ScheduledOnce(
        run_key=str(row["run_key"]),
        func_name=str(row["func_name"]),
        fire_at=from_us(int(row["fire_us"])),
        args=tuple(orjson.loads(args_json)) if isinstance(args_json, bytes) else (),
        kwargs=orjson.loads(kwargs_json) if isinstance(kwargs_json, bytes) else {},
        encrypted_payload=row.get("encrypted_payload"),
        queue=str(row.get("queue") or "default"),
        priority=priority if isinstance(priority, int) else None,
        idempotency_key=row.get("idempotency_key"),
        tags=dict(row.get("tags") or {}),
        created_at=from_us(int(row["created_us"])),
    )


async def save_once(
    manager: TaskManager,
    func: TaskFunc,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    run_at: datetime,
    run_key: str,
    idempotency_key: str | None,
    tags: dict[str, str] | None,
    priority: int | None,
    queue: str | None,
) -> int:
    """Check, encode and store one run (replacing a run of the same key); returns its fire time in µs.

    The arguments are refused here, as ``add_task`` refuses them, rather than when the
    run fires, possibly in another process, long after the caller could react.
    """
    require_file(manager, "schedule_once")
    if not isinstance(run_key, str) or not run_key:
        raise ValueError(f"run_key must be a non-empty string, got {run_key!r}")
    fire_us = to_us(run_at)
    spec = manager.registry.spec(func)
    if spec is None:
        # The firing process finds the function by its registered name; an unregistered
        # one could never run there.
        name = getattr(func, "__qualname__", repr(func))
        raise ValueError(f"{name} is not a registered task; decorate it with @task_manager.task() to schedule it")
    check_priority(priority)
    if spec.executor == "process":
        validate_process_args(spec, args, kwargs)
    args, kwargs, payload = manager.encrypt_arguments(args, kwargs)
    args_json, kwargs_json = (
        manager.serialize_arguments(
            spec, args, kwargs, kind="one-off run of", remedy="pass JSON-compatible values to schedule_once"
        )
        if payload is None
        else (None, None)
    )
    config = spec.config
    assert manager.schedules is not None  # require_file
    await manager.schedules.save(
        run_key,
        spec.name,
        fire_us,
        args_json=args_json,
        kwargs_json=kwargs_json,
        encrypted_payload=payload,
        queue=queue or config.queue or "default",
        priority=config.priority if priority is None else priority,
        idempotency_key=idempotency_key,
        tags=dict(tags) if tags else {},
    )
    return fire_us


class OneOffs:
    """The one-off runs of one manager: armed in memory near their time, fired from the file."""

    def __init__(self, manager: TaskManager) -> None:
        self._manager = manager
        #: Seconds between two reads of the runs due within the horizon.
        self.refill_interval = REFILL_INTERVAL
        #: run_key -> fire time (µs) of the runs due within the horizon, as last read or saved here.
        self._armed: dict[str, int] = {}
        self._next_read_us = 0
        #: After a failed read: no read before this time (so a due run does not spin the loop).
        self._not_before_us = 0

    @property
    def _store(self) -> ScheduleStore:
        store = self._manager.schedules
        assert store is not None  # the manager makes a OneOffs only when it has a store
        return store

    @property
    def armed(self) -> int:
        """How many runs are armed in memory."""
        return len(self._armed)

    def saved(self, run_key: str, fire_us: int, now_us: int) -> bool:
        """A run was saved here: arm it when it is due within the horizon; True when armed."""
        if fire_us <= now_us + HORIZON * _US:
            self._armed[run_key] = fire_us
            return True
        self._armed.pop(run_key, None)  # rescheduled beyond the horizon
        return False

    def cancelled(self, run_key: str) -> None:
        self._armed.pop(run_key, None)

    def deadline(self) -> int:
        """When the loop must next call ``run_due`` (µs)."""
        soonest = min(self._armed.values(), default=self._next_read_us)
        return max(min(soonest, self._next_read_us), self._not_before_us)

    async def run_due(self, now_us: int) -> None:
        """Fire the runs that are due, reading the file when one is armed as due or a refill is due."""
        if now_us < self._not_before_us:
            return
        if now_us < self._next_read_us and all(fire_us > now_us for fire_us in self._armed.values()):
            return
        armed_before = dict(self._armed)
        try:
            rows = await self._store.load_due(now_us + int(HORIZON * _US), BATCH)
        except Exception as exc:
            # Logged and tried again shortly; the runs stay in the file meanwhile.
            logger.error("fastapi_taskflow: cannot read the one-off runs now, trying again shortly: %s", exc)
            self._not_before_us = now_us + int(RETRY_PAUSE * _US)
            return
        self._not_before_us = 0
        times = [cast("int", row["fire_us"]) for row in rows]
        # A full batch of due runs may hide more: read again right after firing these.
        more_due = len(rows) >= BATCH and times[-1] <= now_us
        self._next_read_us = now_us if more_due else now_us + int(self.refill_interval * _US)
        # Runs saved here while the file was read may be missing from what it returned: they
        # stay armed (a due one makes the loop read again at once).
        saved_meanwhile = {key: at for key, at in self._armed.items() if armed_before.get(key) != at}
        self._armed = {str(row["run_key"]): at for row, at in zip(rows, times, strict=True) if at > now_us}
        self._armed.update(saved_meanwhile)
        for row, at in zip(rows, times, strict=True):
            if at <= now_us and not await self._fire(row):
                self._next_read_us = min(self._next_read_us, now_us + int(RETRY_PAUSE * _US))

    async def _fire(self, row: Mapping[str, Any]) -> bool:
        """Fire one due run; False when it failed (it stays in the file, to be tried again)."""
        manager = self._manager
        run_key, func_name = str(row["run_key"]), str(row["func_name"])
        spec = manager.spec_named(func_name)
        try:
            fired = await self._store.fire(run_key, spec.executor if spec else None)
            if fired is None:
                return True  # taken by another process, or cancelled meanwhile
            task_id, created = fired
            if not created:
                logger.info(
                    "fastapi_taskflow: one-off run %r of %s skipped: its idempotency key is held by task %s",
                    run_key,
                    func_name,
                    task_id,
                )
                return True
            record = manager.core.get(task_id)
            assert record is not None  # just created, in memory
            manager.run_stored(record)
        except Exception:
            logger.exception(
                "fastapi_taskflow: one-off run %r of %s could not fire; it is tried again shortly", run_key, func_name
            )
            return False
        return True
