"""Runs one accepted task: attempts, retries with backoff, status changes, events.

Each status change is a single call into the core, which updates the record, its
indexes, the metrics and the event ring together. Each attempt runs inside the
context captured when the task was accepted.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import sys
import time
import traceback
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Generator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from .crypto import ArgumentCipher
from .loggers.base import LifecycleEvent, LogEvent
from .observing import ObserverThread
from .task_logging import ActiveTask, current_task, stamped
from .tracing import end_task_span, start_task_span, task_tracer

if TYPE_CHECKING:
    from ._core import TaskStore
    from .wrapper import TrackedTask


def describe_error(exc: BaseException) -> str:
    """``str(exc)``, or the exception's type name when its message is empty."""
    return str(exc) or type(exc).__name__


def user_traceback(exc: BaseException) -> str:
    """The exception's traceback without the runner's own frames, which only add noise."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def retry_delay(delay: float, backoff: float, attempt: int) -> float:
    """Seconds to wait before ``attempt`` (1-based retry number): ``delay * backoff**(attempt-1)``."""
    return delay * backoff ** (attempt - 1)


class _InContext:
    """Awaits a coroutine with every step run inside ``ctx``.

    The same effect as ``create_task(coro, context=ctx)`` without the cost of a new
    task per attempt: the steps run in the caller's task, switched into ``ctx``.
    """

    __slots__ = ("coro", "ctx")

    def __init__(self, coro: Coroutine[Any, Any, Any], ctx: contextvars.Context) -> None:
        self.coro = coro
        self.ctx = ctx

    def __await__(self) -> Generator[Any, Any, Any]:
        send, throw, run = self.coro.send, self.coro.throw, self.ctx.run
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                future = run(send, value) if error is None else run(throw, error)
            except StopIteration as stop:
                return stop.value
            try:
                value, error = (yield future), None
            except BaseException as exc:  # delivered into the coroutine on the next step
                value, error = None, exc


_UNRESOLVED = object()

#: Arguments of this many failed or interrupted tasks are kept for a retry through the API.
RETAINED_ARGUMENTS = 10_000

#: The arguments a task was accepted with: live args and kwargs, or the encrypted payload.
Arguments = tuple[tuple[Any, ...], dict[str, Any], bytes | None]


def _now() -> datetime:
    return datetime.now(timezone.utc)


class TaskRunner:
    """Executes tasks for one manager: async ones on the loop, sync ones in a thread pool."""

    def __init__(
        self,
        store: TaskStore,
        *,
        max_concurrent_tasks: int | None,
        max_sync_threads: int | None,
        observers: ObserverThread | None = None,
        cipher: ArgumentCipher | None = None,
        on_finished: Callable[[], None] | None = None,
        durable: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self._store = store
        self._max_sync_threads = max_sync_threads
        self._pool: ThreadPoolExecutor | None = None
        self._semaphore = asyncio.Semaphore(max_concurrent_tasks) if max_concurrent_tasks else None
        self.observers = observers
        self.cipher = cipher
        self._on_finished = on_finished
        self._durable = durable
        self._tracer: Any = _UNRESOLVED
        #: The asyncio task running each started task, for cancellation through the API.
        self._running: dict[str, asyncio.Task[Any]] = {}
        self._cancel_requested: set[str] = set()
        self._retained: OrderedDict[str, Arguments] = OrderedDict()

    def _thread_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            prefix = "taskflow-sync" if self._max_sync_threads else "taskflow-thread"
            self._pool = ThreadPoolExecutor(max_workers=self._max_sync_threads, thread_name_prefix=prefix)
        return self._pool

    # -- the LogSink of task_log ---------------------------------------------

    def write_log(self, task: ActiveTask, message: str, level: str, extra: dict[str, Any]) -> None:
        self._store.append_log(task.task_id, stamped(message))
        if self.observers is not None:
            self.observers.emit(
                LogEvent(task.task_id, task.func_name, message, level, _now(), task.attempt, task.tags, extra)
            )

    # -- running --------------------------------------------------------------

    async def run(self, task: TrackedTask) -> None:
        """Run every attempt of one task and record how it ended. Never raises an ``Exception``.

        One coroutine for the whole task, on purpose: this is the per-task hot path.
        """
        store = self._store
        task_id = task.task_id
        if not store.transition(task_id, "running"):
            return  # cancelled or otherwise finished before it could start
        handle = asyncio.current_task()
        if handle is not None:
            self._running[task_id] = handle
        observers = self.observers
        if observers is not None:
            self._lifecycle(task, "running", 0)
        if self._tracer is _UNRESOLVED:
            # Looked up once: asking OpenTelemetry for its provider reads the environment each time.
            self._tracer = task_tracer()
        span = None if self._tracer is None else start_task_span(self._tracer, task.context, task.spec.name, task_id)
        spec = task.spec
        config = spec.config
        attempt = 0
        started = 0.0
        outcome: BaseException | None = None
        try:
            if task.journaled and not config.requeue_on_interrupt and self._durable is not None:
                # A task that must not run twice is marked running on disk before it runs:
                # after a crash it is then reported interrupted rather than run again.
                await self._durable()
            args: tuple[Any, ...] = task.args
            kwargs: dict[str, Any] = task.kwargs
            if task.payload is not None:
                try:
                    args, kwargs = self._decrypt(task.payload)
                except Exception as exc:  # undecryptable arguments: retrying cannot help
                    outcome = exc
                    self._finish_failed(task, exc, attempt, None)
                    return
            while True:
                task.context.run(current_task.set, ActiveTask(task_id, spec.name, attempt, task.tags, self))
                started = time.perf_counter() if observers is not None else 0.0
                try:
                    if not spec.is_async:
                        call = functools.partial(task.context.run, spec.func, *args, **kwargs)
                        await asyncio.get_running_loop().run_in_executor(self._thread_pool(), call)
                    elif self._semaphore is None:
                        await _InContext(spec.func(*args, **kwargs), task.context)
                    else:
                        async with self._semaphore:
                            await _InContext(spec.func(*args, **kwargs), task.context)
                except Exception as exc:
                    if attempt < config.retries:
                        attempt += 1
                        await asyncio.sleep(retry_delay(config.delay, config.backoff, attempt))
                        store.transition(task_id, "running", retries_used=attempt)
                        store.append_log(task_id, f"--- Retry {attempt} ---")
                        continue
                    outcome = exc
                    self._finish_failed(task, exc, attempt, time.perf_counter() - started)
                    return
                store.transition(task_id, "success")
                if observers is not None or self._on_finished is not None:
                    self._lifecycle(task, "success", attempt, time.perf_counter() - started)
                return
        except asyncio.CancelledError as exc:
            outcome = exc
            duration = time.perf_counter() - started if started else None
            if task_id in self._cancel_requested:
                self._cancel_requested.discard(task_id)
                store.transition(task_id, "cancelled", error="cancelled through the API")
                self._lifecycle(task, "cancelled", attempt, duration)
                if handle is not None and sys.version_info >= (3, 11):
                    handle.uncancel()
                # Swallowed on purpose: the other background tasks of the request still run.
                return
            if task.journaled and config.requeue_on_interrupt:
                # Back to pending, as it is in the journal: the next start runs it again.
                store.transition(task_id, "pending")
            else:
                store.transition(task_id, "interrupted", error="cancelled while running (server shutdown)")
                self._lifecycle(task, "interrupted", attempt, duration)
                self._retain(task)
            raise
        finally:
            self._running.pop(task_id, None)
            if span is not None:
                end_task_span(span, outcome)

    def _decrypt(self, payload: bytes) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if self.cipher is None:
            raise RuntimeError("the task's arguments are encrypted but no encrypt_args_key is configured")
        return self.cipher.decrypt(payload)

    def _finish_failed(self, task: TrackedTask, exc: BaseException, attempt: int, duration: float | None) -> None:
        stack = user_traceback(exc)
        error = describe_error(exc)
        self._store.transition(task.task_id, "failed", error=error, stacktrace=stack)
        self._lifecycle(task, "failed", attempt, duration, error, stack)
        self._retain(task)

    def _retain(self, task: TrackedTask) -> None:
        """Keep the arguments of a task that may be retried (bounded; the oldest go first)."""
        retained = self._retained
        retained[task.task_id] = (task.args, task.kwargs, task.payload)
        if len(retained) > RETAINED_ARGUMENTS:
            retained.popitem(last=False)

    def retained_arguments(self, task_id: str) -> Arguments | None:
        """The arguments of a failed or interrupted task, while they are kept."""
        return self._retained.get(task_id)

    def forget_arguments(self, task_id: str) -> None:
        self._retained.pop(task_id, None)

    def cancel(self, task_id: str) -> bool:
        """Cancel a task: a pending one never runs, a running one is stopped at its next await.

        Returns False when the task is neither pending in memory nor running here. Call it
        on the event loop thread (where tasks move to running), so the two checks are atomic.
        """
        handle = self._running.get(task_id)
        if handle is not None:
            self._cancel_requested.add(task_id)
            handle.cancel(msg=f"fastapi_taskflow: task {task_id} cancelled through the API")
            return True
        try:
            return self._store.transition(task_id, "cancelled", error="cancelled through the API")
        except KeyError:
            return False

    def running_handles(self) -> list[asyncio.Task[Any]]:
        return list(self._running.values())

    def _lifecycle(
        self,
        task: TrackedTask,
        status: str,
        attempt: int,
        duration: float | None = None,
        error: str | None = None,
        stacktrace: str | None = None,
    ) -> None:
        if status != "running" and self._on_finished is not None:
            self._on_finished()
        if self.observers is not None:
            self.observers.emit(
                LifecycleEvent(
                    task.task_id,
                    task.spec.name,
                    status,
                    _now(),
                    attempt,
                    attempt,
                    duration,
                    error,
                    stacktrace,
                    task.tags,
                )
            )

    def shutdown(self) -> None:
        """Join a dedicated pool; abandon the queued work of the default one."""
        pool, self._pool = self._pool, None
        if pool is not None:
            dedicated = self._max_sync_threads is not None
            pool.shutdown(wait=dedicated, cancel_futures=not dedicated)
