"""The snapshot writer: one background task that owns every write to the snapshot file.

Three kinds of demand reach it. A request that accepted journaled tasks waits for a
*group commit* before its response leaves (``durable()``): every request that asks
while a write runs shares the next one, so a busy server writes one transaction per
batch of requests, never one per task. A record left unwritten (a finished task, a
journaled one that changed) is written *soon*: the core wakes the writer once, at the
first such record after a write (``TaskStore.on_unwritten``), so that the records close
in time share one transaction after a short window; and once ``WRITE_BEHIND`` records
wait, the core writes them itself, on a thread of its own, even while a run of tasks
gives the event loop no turn (``TaskStore.write_behind``). A finished task costs the
writer nothing. And with nothing to write, the writer still writes every ``interval``
seconds.

A failed write (disk full, read-only file, a lock held too long) loses nothing: the
core keeps the records as unwritten, the failure shows in ``/tasks/metrics``, and the
writer retries with a growing pause until a write succeeds again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from .errors import SnapshotError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ._core import TaskStore

logger = logging.getLogger("fastapi_taskflow")

#: Seconds a write woken by an unwritten record waits, so that the records close in time share it.
BATCH_WINDOW = 0.05

#: A write of at least this many records is followed by the next one without a pause.
KEEP_UP_ROWS = 1_000

#: Unwritten records from which the core writes them itself (``TaskStore.write_behind``).
#: Tasks run back to back (one request's background tasks) give the event loop, and so this
#: writer, no turn: without it their rows would wait for the next turn, at worst for
#: shutdown, instead of being written on the other CPU while the tasks still run. The core's
#: thread needs no GIL, which a run of tasks holds: a write handed to a Python thread would
#: wait for it to start and again to finish. Once started, the core writes again at once
#: while this many wait, so its writes grow to match the pace of the tasks.
WRITE_BEHIND = 256

#: Pause after the first failed write; it doubles with each failure up to the flush interval.
FIRST_RETRY_PAUSE = 0.5

#: Seconds between two retention passes (as the pure-Python package: every 6 hours).
RETENTION_PERIOD = 6 * 3600.0


class SnapshotWriter:
    """Writes the core's unwritten records to its snapshot file, from a single task."""

    def __init__(self, core: TaskStore, *, interval: float) -> None:
        self._core = core
        self._interval = interval
        self._retention_days: float | None = None
        self._wake: asyncio.Event | None = None
        #: Set by ``stop()``, so that a batch window in progress ends at once.
        self._halt: asyncio.Event | None = None
        self._waiters: list[asyncio.Future[bool]] = []
        self._task: asyncio.Task[None] | None = None
        # A thread of its own: a write never queues behind the application's blocking work.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="taskflow-snapshot")
        self._failures = 0
        self._stopping = False
        self._next_retention = 0.0
        #: Transactions that wrote at least one record (for tests and diagnostics).
        self.writes = 0
        #: Called after each write of at least one record (the replicator pushes them on).
        self.after_write: Callable[[], None] | None = None
        #: Awaited after each durable write, when durable means more than this file (a shared
        #: backend that must hold the rows too, so that another instance can take them over).
        self.durable_beyond: Callable[[], Awaitable[object]] | None = None
        #: What a retention pass calls with its cutoff (epoch seconds), when more than the file
        #: keeps history (a shared backend); by default ``delete_finished_before``.
        self.retain_with: Callable[[float], Awaitable[object]] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None

    def set_retention_days(self, days: float | None) -> None:
        self._retention_days = days
        self._next_retention = 0.0

    def start(self) -> None:
        """Start the loop on the running event loop (again after a ``stop()``: apps may restart)."""
        if self._task is None:
            self._wake = wake = asyncio.Event()
            self._halt = halt = asyncio.Event()
            # The core calls this from the thread of the change, which may be a worker's.
            wake_up = functools.partial(asyncio.get_running_loop().call_soon_threadsafe, wake.set)
            self._core.on_unwritten(wake_up)
            self._task = asyncio.create_task(self._run(wake, halt, wake_up), name="taskflow-snapshot")
            # Not with a shared backend: each write there has a follower (``after_write``),
            # which only this writer's own writes call.
            self._core.write_behind(WRITE_BEHIND if self.after_write is None else None)

    async def stop(self) -> None:
        """Stop the loop and make one last write; waiters still pending get its outcome.

        The loop is asked to end rather than cancelled: on Python 3.11, ``wait_for``
        swallows a cancellation that arrives just as the event it waits for is set.
        """
        task, wake, halt = self._task, self._wake, self._halt
        self._task = self._wake = self._halt = None
        if task is not None and wake is not None and halt is not None:
            self._core.write_behind(None)
            self._core.on_unwritten(None)
            self._stopping = True
            wake.set()
            halt.set()  # ends a batch window at once: the write below takes what it waited for
            await task
            self._stopping = False
        await self.write_now()

    async def durable(self) -> bool:
        """Wait for a write that starts after this call; True when it succeeded.

        Without a running writer (before start-up, after shutdown) the write happens here.
        """
        if self._wake is None:
            written = await self.write_now() is not None
        else:
            waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            self._wake.set()
            written = await waiter
        if written and self.durable_beyond is not None:
            await self.durable_beyond()
        return written

    async def _run(self, wake: asyncio.Event, halt: asyncio.Event, wake_up: Callable[[], object]) -> None:
        written: int | None = 0
        # The flag is checked before each wait: a stop may come while a write runs.
        while not self._stopping:
            # After a large write, more is surely waiting: write again at once, so that the
            # writer keeps pace with a busy server instead of leaving a backlog for later.
            if (written or 0) < KEEP_UP_ROWS:
                pause = self._interval if self._failures == 0 else self._retry_pause()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), pause)
                if self._stopping:
                    return
                if not self._waiters:
                    # Only completions asked: let the ones close in time join this write.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(halt.wait(), BATCH_WINDOW)
                    if self._stopping:
                        return
            else:
                await asyncio.sleep(0)  # let the loop run between two writes
            wake.clear()
            # Before the write: a record left unwritten from here on, whether this write
            # takes it or not, wakes the loop for the next.
            self._core.on_unwritten(wake_up)
            written = await self.write_now()
            await self._retain()

    def _retry_pause(self) -> float:
        pause: float = FIRST_RETRY_PAUSE * 2.0 ** (self._failures - 1)
        return min(pause, self._interval)

    async def write_now(self) -> int | None:
        """Write now; the number of records written, or None when the write failed (logged)."""
        waiters, self._waiters = self._waiters, []
        written: int | None = None
        try:
            written = await asyncio.get_running_loop().run_in_executor(self._thread, self._core.flush)
        except SnapshotError as exc:
            self._failures += 1
            if self._failures == 1:
                logger.error("fastapi_taskflow: snapshot write failed; tasks stay in memory, retrying: %s", exc)
        else:
            if self._failures:
                logger.warning("fastapi_taskflow: snapshot writes work again after %d failures", self._failures)
            self._failures = 0
            if written > 0:
                self.writes += 1
                if self.after_write is not None:
                    self.after_write()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(written is not None)
        return written

    async def _retain(self) -> None:
        if self._retention_days is None or time.monotonic() < self._next_retention:
            return
        self._next_retention = time.monotonic() + RETENTION_PERIOD
        delete = self.retain_with or self.delete_finished_before
        with contextlib.suppress(SnapshotError):  # logged; the next pass tries again
            await delete(time.time() - self._retention_days * 86_400)

    async def delete_finished_before(self, cutoff: float) -> tuple[int, int]:
        """Delete finished records that ended before ``cutoff`` (epoch seconds), memory and file.

        Returns ``(deleted_from_memory, deleted_from_file)``; a failure is logged and raised.
        """
        cutoff_us = int(cutoff * 1_000_000)
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._thread, self._core.delete_finished_before, cutoff_us
            )
        except SnapshotError as exc:
            logger.error("fastapi_taskflow: deleting old history failed: %s", exc)
            raise
