"""Named queues: a max-heap on priority per queue, a counter-based concurrency limit, one drainer each.

A queue holds accepted tasks that have not started. Its *drainer*, an asyncio task on
the manager's event loop, starts the best waiting task whenever fewer than
``concurrency`` of the queue's tasks run, and counts a task as running until its whole
run (retries included) has ended. The limit is a plain counter compared with the
current ``concurrency`` each time a task could start, so changing the limit at run time
takes effect at once and can never let more tasks start than the new limit allows
(tasks already running are not stopped).

Tasks may be pushed from any thread (sync endpoints run in a worker thread): the heap
is guarded by a lock and the drainer is woken through the loop. Everything else
(popping, counting, starting) happens on the loop thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import threading
from collections.abc import Callable
from typing import Any

from .models import QueueConfig

logger = logging.getLogger("fastapi_taskflow")

#: Starts one job on the running loop and returns its asyncio task (the queue watches it end).
Starter = Callable[[object], asyncio.Task[Any]]

# Heap entries are lists ``[rank, -priority, seq, task_id, job]``: eager tasks (rank 0)
# before the others (rank 1), then the highest priority, then the first accepted. The
# sequence number is unique, so comparison never reaches the task id or the job. A
# removed (cancelled) entry keeps its place with ``job`` set to None and is skipped.
_TASK_ID, _JOB = 3, 4


class QueueFullError(RuntimeError):
    """``add_task`` found its queue's ``max_size`` tasks already waiting; the task is rejected.

    ``queue`` and ``max_size`` say which limit was hit; ``task_id`` is the id of the
    rejected task (its record is ``rejected``, so it can be retried later).
    """

    def __init__(self, queue: str, max_size: int, task_id: str | None = None) -> None:
        super().__init__(f"Queue '{queue}' is full ({max_size} tasks pending). Raise max_size or reduce enqueue rate.")
        self.queue = queue
        self.max_size = max_size
        self.task_id = task_id


def check_limit(what: str, value: object) -> int | None:
    """``value`` when it is None (unlimited) or an int >= 1; else ``ValueError`` naming ``what``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a whole number of at least 1, or None for unlimited; got {value!r}")
    return value


class TaskQueue:
    """One named queue: waiting jobs by priority, and how many of its jobs run."""

    def __init__(self, name: str, concurrency: int | None = None, max_size: int | None = None) -> None:
        self.name = name
        #: The live limits (mutable: ``set_limits``); None = unlimited.
        self.config = QueueConfig(
            concurrency=check_limit(f"concurrency of queue {name!r}", concurrency),
            max_size=check_limit(f"max_size of queue {name!r}", max_size),
        )
        #: Jobs started by the drainer whose asyncio task has not ended yet.
        self.running = 0
        #: Jobs of this queue that ended (any status) or were removed while waiting.
        self.finished = 0
        #: Pushes refused because the queue was full.
        self.rejected = 0
        self._heap: list[list[Any]] = []
        self._live: dict[str, list[Any]] = {}
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._wake: asyncio.Event | None = None
        self._drainer: asyncio.Task[None] | None = None
        self._starter: Starter | None = None

    @property
    def pending(self) -> int:
        """Jobs waiting in the heap (cancelled ones excluded)."""
        return len(self._live)

    @property
    def started(self) -> bool:
        return self._drainer is not None

    # -- any thread -------------------------------------------------------------

    def push(
        self, task_id: str, job: object, priority: int | None = None, *, front: bool = False, force: bool = False
    ) -> None:
        """Add a job; ``front`` puts it before every non-front job (eager tasks).

        Raises ``QueueFullError`` when ``max_size`` jobs already wait, unless ``force``
        (requeued and retried tasks, which were accepted once already).
        """
        with self._lock:
            max_size = self.config.max_size
            if not force and max_size is not None and len(self._live) >= max_size:
                self.rejected += 1
                raise QueueFullError(self.name, max_size, task_id)
            entry = [0 if front else 1, -(priority or 0), next(self._seq), task_id, job]
            heapq.heappush(self._heap, entry)
            self._live[task_id] = entry
        self._notify()

    def set_limits(self, concurrency: int | None, max_size: int | None) -> None:
        """Change the limits now. Lowering ``concurrency`` stops new starts until fewer run;
        lowering ``max_size`` keeps what waits and refuses new pushes until fewer wait."""
        concurrency = check_limit(f"concurrency of queue {self.name!r}", concurrency)
        max_size = check_limit(f"max_size of queue {self.name!r}", max_size)
        with self._lock:
            self.config.concurrency = concurrency
            self.config.max_size = max_size
        self._notify()

    def stats(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "concurrency": self.config.concurrency,
            "max_size": self.config.max_size,
            "pending": len(self._live),
            "running": self.running,
            "finished": self.finished,
            "rejected": self.rejected,
        }

    def _notify(self) -> None:
        wake, loop = self._wake, self._loop
        if wake is None or loop is None:
            return  # not started: the drainer drains what waits when it starts
        if threading.get_ident() == self._loop_thread:
            wake.set()
        elif not wake.is_set():
            # Already set means the drainer has yet to clear it, and it pops after clearing,
            # so it will see what was pushed before this check.
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nothing to wake
                loop.call_soon_threadsafe(wake.set)

    # -- the loop thread -----------------------------------------------------------

    def remove(self, task_id: str) -> bool:
        """Take a waiting job out (a cancel); False when it is not waiting here."""
        with self._lock:
            entry = self._live.pop(task_id, None)
            if entry is None:
                return False
            entry[_JOB] = None
            if len(self._heap) > 2 * len(self._live) + 64:
                # Many removed entries: rebuild rather than let them pile up.
                self._heap = [e for e in self._heap if e[_JOB] is not None]
                heapq.heapify(self._heap)
        self.finished += 1
        return True

    def take_waiting(self, predicate: Callable[[object], bool]) -> list[tuple[str, object]]:
        """Remove and return ``(task_id, job)`` of the waiting jobs that ``predicate`` accepts, best first."""
        with self._lock:
            entries = sorted(entry for entry in self._live.values() if predicate(entry[_JOB]))
            taken = [(str(entry[_TASK_ID]), entry[_JOB]) for entry in entries]
            for entry in entries:
                del self._live[entry[_TASK_ID]]
                entry[_JOB] = None
            if entries:
                self._heap = [e for e in self._heap if e[_JOB] is not None]
                heapq.heapify(self._heap)
        self.finished += len(taken)
        return taken

    def start(self, starter: Starter) -> None:
        """Start the drainer on the running loop (again after ``stop()``: apps may restart)."""
        if self._drainer is not None:
            return
        loop = asyncio.get_running_loop()
        self._starter = starter
        self._loop, self._loop_thread = loop, threading.get_ident()
        self._wake = wake = asyncio.Event()
        wake.set()  # start what waited for start-up
        self._drainer = loop.create_task(self._drain(wake), name=f"taskflow-queue-{self.name}")

    async def stop(self) -> None:
        """Stop the drainer: nothing more starts; what waits stays in the heap."""
        drainer = self._drainer
        self._drainer = self._wake = self._loop = self._loop_thread = None
        if drainer is not None:
            drainer.cancel()
            await asyncio.gather(drainer, return_exceptions=True)

    async def _drain(self, wake: asyncio.Event) -> None:
        while True:
            await wake.wait()
            wake.clear()
            self._start_ready()

    def _start_ready(self) -> None:
        """Start the best waiting jobs while the limit allows (read afresh before each start)."""
        starter = self._starter
        assert starter is not None
        while True:
            concurrency = self.config.concurrency
            if concurrency is not None and self.running >= concurrency:
                return
            job = self._pop()
            if job is None:
                return
            self.running += 1
            try:
                handle = starter(job)
            except Exception:
                self.running -= 1
                self.finished += 1
                logger.exception("fastapi_taskflow: could not start a task of queue %r", self.name)
                continue
            handle.add_done_callback(self._release)

    def _pop(self) -> object | None:
        with self._lock:
            heap = self._heap
            while heap:
                entry = heapq.heappop(heap)
                job = entry[_JOB]
                if job is not None:
                    del self._live[entry[_TASK_ID]]
                    return job  # type: ignore[no-any-return]
            return None

    def _release(self, _handle: asyncio.Task[Any]) -> None:
        self.running -= 1
        self.finished += 1
        if self._wake is not None:
            self._wake.set()


def check_priority(priority: object) -> None:
    """Refuse a priority that is neither None nor a whole number (``TypeError``)."""
    if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int)):
        raise TypeError(f"priority must be a whole number or None, got {priority!r}")
