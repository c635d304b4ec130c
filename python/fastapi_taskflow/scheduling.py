"""The scheduler: one loop on the manager's event loop that fires recurring schedules and one-off runs.

A firing goes through the manager's ordinary path (record, queue, retries, logs,
dashboard) with ``source="scheduled"``. With a snapshot file, each tick of a
recurring schedule takes the lock ``schedule:<name>:<tick>`` first, so processes
sharing the file fire each tick once; without one, every process fires its own.

Nothing that goes wrong in a firing stops the loop: a full queue, a failing file or a
bug is logged with the schedule's name, and the next tick fires as usual.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .scheduling_once import OneOffs, from_us
from .scheduling_triggers import Trigger

if TYPE_CHECKING:
    from .manager import TaskManager
    from .registry import TaskSpec

logger = logging.getLogger("fastapi_taskflow")

_US = 1_000_000

#: Longest single sleep of the loop (s): the wall clock may jump (NTP, a suspended VM)
#: while the loop sleeps on the monotonic clock, and a late tick should stay late by little.
MAX_SLEEP = 30.0
#: A tick's lock outlives the tick by far, so a slow process cannot fire it again later.
MIN_LOCK_TTL = 3_600.0
#: Processes starting within this many seconds of each other fire a ``run_on_startup`` schedule once.
STARTUP_WINDOW = 60.0


def iso(us: int | None) -> str | None:
    return None if us is None else from_us(us).isoformat()


def tick_label(us: int) -> str:
    """A tick's instant in epoch seconds, as in its lock key: whole seconds without a fraction."""
    seconds, fraction = divmod(us, _US)
    return str(seconds) if fraction == 0 else f"{seconds}.{fraction:06d}"


@dataclass
class RecurringSchedule:
    """One ``@task_manager.schedule`` function and when it fires."""

    spec: TaskSpec
    trigger: Trigger
    timezone: str
    run_on_startup: bool
    #: The next tick to fire (µs); None until the scheduler starts.
    next_us: int | None = None
    #: The last tick fired, here or (with a shared file) by another process that took its lock.
    last_us: int | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    def describe(self, now_us: int) -> dict[str, Any]:
        """``{"name", "every", "cron", "timezone", "next_run", "last_run", "queue"}`` for the routes."""
        next_us = self.next_us if self.next_us is not None else self.trigger.after(now_us)
        return {
            "name": self.name,
            **self.trigger.describe(),
            "timezone": self.timezone,
            "next_run": iso(next_us),
            "last_run": iso(self.last_us),
            "queue": self.spec.config.queue or "default",
        }


class Scheduler:
    """Fires the manager's recurring schedules and, with a snapshot file, its one-off runs.

    ``clock`` returns the time in epoch seconds (``time.time``); tests replace it and
    call ``wake()`` after moving it.
    """

    def __init__(self, manager: TaskManager, clock: Callable[[], float] = time.time) -> None:
        self._manager = manager
        self.clock = clock
        self.recurring: dict[str, RecurringSchedule] = {}
        self.one_offs = OneOffs(manager) if manager.schedules is not None else None
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._stopping = False

    def now_us(self) -> int:
        return round(self.clock() * _US)

    def add(self, schedule: RecurringSchedule) -> None:
        if schedule.name in self.recurring:
            raise ValueError(f"a schedule named {schedule.name!r} exists already; give one of them another name=")
        self.recurring[schedule.name] = schedule
        if self._task is not None:  # added after start-up: arm it now
            self._arm(schedule, self.now_us())
            self.wake()

    def wake(self) -> None:
        """Look at the clock again now (a schedule or a run due soon was added, or the clock moved)."""
        if self._wake is not None:
            self._wake.set()

    def start(self) -> None:
        """Start the loop on the running event loop when there is anything to fire."""
        if self._task is None and (self.recurring or self.one_offs is not None):
            self._stopping = False
            self._wake = wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(wake), name="taskflow-scheduler")

    async def stop(self) -> None:
        """Let the loop finish what it is doing and end (never cancelled in the middle of a write)."""
        task, self._task = self._task, None
        if task is not None:
            self._stopping = True
            self.wake()
            await task
            self._wake = None

    async def _run(self, wake: asyncio.Event) -> None:
        now = self.now_us()
        for schedule in self.recurring.values():
            self._arm(schedule, now)
        for schedule in list(self.recurring.values()):
            if schedule.run_on_startup and not self._stopping:
                await self._fire(schedule, now, f"schedule:{schedule.name}:startup", STARTUP_WINDOW)
        while not self._stopping:
            wake.clear()  # before looking: a wake from now on is seen by the wait below
            now = self.now_us()
            for schedule in list(self.recurring.values()):
                if schedule.next_us is not None and schedule.next_us <= now and not self._stopping:
                    await self._fire_tick(schedule, now)
            if self.one_offs is not None and not self._stopping:
                await self.one_offs.run_due(now)
            pause = min(MAX_SLEEP, max(0.0, (self._deadline() - self.now_us()) / _US))
            try:
                await asyncio.wait_for(wake.wait(), pause)
            except asyncio.TimeoutError:
                pass

    def _deadline(self) -> int:
        deadlines = [s.next_us for s in self.recurring.values() if s.next_us is not None]
        if self.one_offs is not None:
            deadlines.append(self.one_offs.deadline())
        return min(deadlines, default=self.now_us() + round(MAX_SLEEP * _US))

    def _arm(self, schedule: RecurringSchedule, now: int) -> None:
        """Set the schedule's next tick; a schedule whose ticks cannot be computed stops, alone."""
        try:
            schedule.next_us = schedule.trigger.after(now)
        except Exception:
            schedule.next_us = None
            logger.exception("fastapi_taskflow: schedule %r cannot compute its next tick; it stops", schedule.name)

    async def _fire_tick(self, schedule: RecurringSchedule, now: int) -> None:
        self._arm(schedule, now)
        if schedule.next_us is None:
            return
        trigger = schedule.trigger
        # The latest tick that has come, once: a process that fell behind (a busy loop, a
        # suspended machine) does not fire the ticks it missed in a burst. (Where a cron
        # expression has a next slot, it has a previous one: these do not raise.)
        tick = trigger.latest(now)
        period = (trigger.after(tick) - tick) / _US
        await self._fire(schedule, tick, f"schedule:{schedule.name}:{tick_label(tick)}", max(2 * period, MIN_LOCK_TTL))

    async def _fire(self, schedule: RecurringSchedule, tick: int, lock_key: str, lock_ttl: float) -> None:
        """Create and dispatch the schedule's task for ``tick``, unless another process took its lock."""
        manager = self._manager
        try:
            if manager.schedules is not None:
                if not await manager.schedules.acquire_lock(lock_key, lock_ttl):
                    schedule.last_us = tick  # another process sharing the file fired it
                    return
            spec = schedule.spec
            manager.submit(
                spec,
                (),
                {},
                priority=spec.config.priority,
                queue=spec.config.queue or "default",
                source="scheduled",
                refuse_when_full=True,
            )
            schedule.last_us = tick
        except Exception:
            logger.exception(
                "fastapi_taskflow: schedule %r could not fire its tick of %s; it fires again at its next tick",
                schedule.name,
                iso(tick),
            )
