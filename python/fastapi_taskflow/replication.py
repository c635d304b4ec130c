"""Replication: this instance's tasks reach the shared backend, and a dead peer's are taken over.

With a shared backend (Redis, PostgreSQL, MySQL), each instance still writes to its own
local snapshot file first: that file is the outbox. Every row the snapshot writer
writes there gets a sequence number, and one background task, the replicator, pushes
the rows past the last number the backend acknowledged, in batches, then stores that
number in the file. A backend that is away for a while therefore loses nothing: the
rows wait in the file (across a restart too) and are pushed when it returns.

The replicator also keeps this instance's lease alive in the backend (a heartbeat
every ``heartbeat`` seconds, valid for ``lease`` seconds) and, every heartbeat, claims
the unfinished rows of instances whose lease has expired. The backend hands each such
row to exactly one claimant; the claimant adopts it into its own store and runs it as
a restart would.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, cast

from .backends.base import BackendError

if TYPE_CHECKING:
    from ._core import TaskStore
    from .backends.base import SharedBackend, TaskRow

logger = logging.getLogger("fastapi_taskflow")

#: Rows pushed per round trip: large enough to amortise it, small enough to bound memory.
PUSH_BATCH = 1_000

#: Orphaned rows claimed per heartbeat; the rest wait for the next one.
CLAIM_BATCH = 1_000

#: Pause after the first failed round; it doubles with each failure up to the heartbeat.
FIRST_RETRY_PAUSE = 0.5

#: Seconds start-up waits for the backend to connect, and shutdown for it to take the last rows
#: (they stay in the file otherwise).
STOP_TIMEOUT = 5.0


class Replicator:
    """Pushes the local file's new rows to the backend, heartbeats, and claims orphans."""

    def __init__(
        self,
        core: TaskStore,
        backend: SharedBackend,
        *,
        lease: float,
        heartbeat: float,
        adopt: Callable[[Mapping[str, Any]], None],
    ) -> None:
        if not 0 < heartbeat < lease:
            raise ValueError(f"the heartbeat ({heartbeat} s) must be positive and shorter than the lease ({lease} s)")
        self._core = core
        self._backend = backend
        self._lease = lease
        self._heartbeat = heartbeat
        self._adopt = adopt
        self._watermark_key = f"replicated_seq:{backend.identity}"
        self._watermark: int | None = None
        self._next_heartbeat = 0.0
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._stopping = False
        self._failures = 0
        self._last_error: str | None = None
        self._last_push_at: float | None = None
        self._opened = False
        # Made anew by each start(): an asyncio lock belongs to the loop that first waits on it.
        self._push_lock = asyncio.Lock()

    @property
    def backend(self) -> SharedBackend:
        return self._backend

    def health(self) -> dict[str, Any]:
        """What ``/tasks/metrics`` shows under ``"backend"``."""
        return {
            "kind": self._backend.kind,
            "ok": self._failures == 0,
            "failed_rounds": self._failures,
            "last_error": self._last_error,
            "last_push_at": self._last_push_at,
        }

    async def start(self) -> None:
        """Connect (so that reads and schedules work from the first request) and start the loop.

        A backend that does not answer within ``STOP_TIMEOUT`` does not hold up the start:
        the loop keeps trying, and reads serve this instance's tasks meanwhile.
        """
        self._push_lock = asyncio.Lock()
        if not self._opened:
            try:
                await asyncio.wait_for(self._backend.open(), STOP_TIMEOUT)
                self._opened = True
            except (BackendError, TimeoutError) as exc:
                self._failed(exc)
        if self._task is None:
            self._wake = wake = asyncio.Event()
            self._task = asyncio.create_task(self._run(wake), name="taskflow-replicator")

    def soon(self) -> None:
        """Ask for a push now (after a local write), instead of at the next heartbeat."""
        if self._wake is not None:
            self._wake.set()

    async def pushed(self) -> bool:
        """Push what the file holds now; True once the backend has it.

        False at once while the backend is failing (the loop keeps retrying): a request
        then does not wait for it, and its tasks wait in the file instead.
        """
        if self._failures or not self._opened:
            return False
        try:
            await self._push_all()
        except BackendError as exc:
            self._failed(exc)
            self.soon()
            return False
        return True

    async def stop(self) -> None:
        """Push what is left (for at most ``STOP_TIMEOUT``), give up the lease, close the backend."""
        task, wake = self._task, self._wake
        self._task = self._wake = None
        if task is not None and wake is not None:
            self._stopping = True
            wake.set()
            await task
            self._stopping = False
        if self._opened:
            try:
                await asyncio.wait_for(self._push_all(), STOP_TIMEOUT)
                await asyncio.wait_for(self._backend.retire(self._core.instance_id), STOP_TIMEOUT)
            except (BackendError, TimeoutError) as exc:
                # Nothing is lost: the rows wait in the local file for the next start.
                logger.warning("fastapi_taskflow: backend unreachable at shutdown, rows stay in the file: %s", exc)
        await self._backend.close()
        self._opened = False

    async def _run(self, wake: asyncio.Event) -> None:
        while not self._stopping:
            try:
                await self._round()
            except BackendError as exc:
                self._failed(exc)
            else:
                if self._failures:
                    logger.warning("fastapi_taskflow: the backend answers again after %d failures", self._failures)
                self._failures = 0
                self._last_error = None
            pause = self._heartbeat if self._failures == 0 else self._retry_pause()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), pause)
            wake.clear()

    async def _round(self) -> None:
        if not self._opened:
            await self._backend.open()
            self._opened = True
        if time.monotonic() >= self._next_heartbeat:
            await self._backend.heartbeat(self._core.instance_id, self._lease)
            self._next_heartbeat = time.monotonic() + self._heartbeat
            await self._claim_orphans()
        await self._push_all()

    async def _push_all(self) -> None:
        # One push at a time: concurrent ones would send the same rows and could move the
        # stored watermark backwards.
        async with self._push_lock:
            await self._push_unlocked()

    async def _push_unlocked(self) -> None:
        if self._watermark is None:
            stored = await asyncio.to_thread(self._core.load_metadata, self._watermark_key)
            self._watermark = int(stored) if stored is not None else 0
        while True:
            rows, last = await asyncio.to_thread(self._core.changed_rows, self._watermark, PUSH_BATCH)
            if not rows:
                return
            await self._backend.upsert(cast("list[TaskRow]", rows))  # the core writes exactly TaskRow's keys
            self._watermark = last
            await asyncio.to_thread(self._core.save_metadata, self._watermark_key, str(last))
            self._last_push_at = time.time()
            if len(rows) < PUSH_BATCH:
                return

    async def _claim_orphans(self) -> None:
        rows = await self._backend.claim_orphans(self._core.instance_id, CLAIM_BATCH)
        if not rows:
            return
        adopted = await asyncio.to_thread(self._core.adopt, [dict(row) for row in rows])
        for record in adopted:
            self._adopt(record)
        logger.info("fastapi_taskflow: took over %d unfinished tasks of a stopped instance", len(adopted))

    def _failed(self, exc: BackendError | TimeoutError) -> None:
        self._failures += 1
        self._last_error = str(exc)
        if self._failures == 1:
            logger.error("fastapi_taskflow: shared backend unreachable; tasks keep running, retrying: %s", exc)

    def _retry_pause(self) -> float:
        pause: float = FIRST_RETRY_PAUSE * 2.0 ** (self._failures - 1)
        return min(pause, self._heartbeat)
