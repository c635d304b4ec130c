"""Runs one accepted task: attempts, retries with backoff, status changes, events.

Each status change is a single call into the core, which updates the record, its
indexes, the metrics and the event ring together. Each attempt runs inside the
context captured when the task was accepted.

A task's ``timeout`` bounds each attempt: an async attempt is cancelled at the
deadline, a thread attempt is abandoned (a thread cannot be stopped: it runs on, and
its result and log lines are ignored), a process attempt has its worker killed. A
timed-out attempt fails with ``TaskTimeoutError`` and is retried like any failure.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import random
import sys
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Generator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from .crypto import ArgumentCipher
from .errors import TaskTimeoutError
from .loggers.base import LifecycleEvent, LogEvent
from .observing import ObserverThread
from .task_logging import ActiveTask, LogSink, current_task, stamped
from .tracing import end_task_span, start_task_span, task_tracer

if TYPE_CHECKING:
    from ._core import TaskStore
    from .process_executor import ProcessPool
    from .shared import SharedMode
    from .wrapper import TrackedTask


def describe_error(exc: BaseException) -> str:
    """``str(exc)``, or the exception's type name when its message is empty."""
    return str(exc) or type(exc).__name__


def user_traceback(exc: BaseException) -> str:
    """The exception's traceback without the runner's own frames, which only add noise."""
    report = traceback.TracebackException(type(exc), exc, exc.__traceback__)
    report.stack = traceback.StackSummary.from_list([f for f in report.stack if f.filename != __file__])
    return "".join(report.format())


def retry_delay(delay: float, backoff: float, attempt: int, jitter: float = 0.0) -> float:
    """Seconds to wait before ``attempt`` (1-based retry number).

    ``d = delay * backoff**(attempt-1)``, exactly, when ``jitter`` is 0; otherwise
    ``d * (1 + random.uniform(0, jitter))``, so that tasks failing together spread out.
    """
    base = delay * backoff ** (attempt - 1)
    if jitter:
        return base * (1 + random.uniform(0, jitter))
    return base


class _Deadline:
    """Cancels the task running one timed async attempt when its timeout passes.

    ``expired`` is the marker that the attempt's cancellation came from the deadline.
    """

    __slots__ = ("attempt", "expired", "timer")

    def __init__(self, attempt: asyncio.Task[Any], seconds: float) -> None:
        self.attempt = attempt
        self.expired = False
        self.timer = asyncio.get_running_loop().call_later(seconds, self._expire)

    def _expire(self) -> None:
        if not self.attempt.done():  # an attempt that just finished keeps its result
            self.expired = True
            self.attempt.cancel(msg="fastapi_taskflow: attempt timed out")


async def _timed_attempt(
    coro: Coroutine[Any, Any, Any], ctx: contextvars.Context, where: list[traceback.StackSummary]
) -> None:
    """The body of a timed async attempt's own task; notes where a cancellation found it."""
    try:
        await _InContext(coro, ctx)
    except asyncio.CancelledError as exc:
        where.append(traceback.extract_tb(exc.__traceback__))
        raise


class _AttemptSink:
    """The log sink of one timed thread attempt: once abandoned, its lines are dropped."""

    __slots__ = ("abandoned", "runner")

    def __init__(self, runner: TaskRunner) -> None:
        self.runner = runner
        self.abandoned = False

    def write_log(self, task: ActiveTask, message: str, level: str, extra: dict[str, Any]) -> None:
        if not self.abandoned:
            self.runner.write_log(task, message, level, extra)


def _timeout_trace(frames: list[traceback.FrameSummary], message: str) -> str:
    """A traceback-shaped text: where the attempt was when its deadline passed."""
    head = ["Traceback (most recent call last):\n", *traceback.format_list(frames)] if frames else []
    return "".join(head) + f"TimeoutError: {message}\n"


def _user_frames(frames: traceback.StackSummary) -> list[traceback.FrameSummary]:
    """The frames after the runner's own last frame (the task's code and what it called)."""
    last = max((i for i, frame in enumerate(frames) if frame.filename == __file__), default=-1)
    return list(frames[last + 1 :])


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
        durable: Callable[[], Awaitable[bool]] | None = None,
        shared: SharedMode | None = None,
        max_process_workers: int | None = None,
        process_shutdown_timeout: float = 30.0,
    ) -> None:
        if max_process_workers is not None and max_process_workers < 1:
            raise ValueError(f"max_process_workers must be at least 1, got {max_process_workers!r}")
        if process_shutdown_timeout < 0:
            raise ValueError(f"process_shutdown_timeout must not be negative, got {process_shutdown_timeout!r}")
        self._store = store
        self._max_sync_threads = max_sync_threads
        self._pool: ThreadPoolExecutor | None = None
        self._max_process_workers = max_process_workers
        self._process_shutdown_timeout = process_shutdown_timeout
        #: Worker processes of ``executor="process"`` tasks, started with the first one.
        self._processes: ProcessPool | None = None
        self._semaphore = asyncio.Semaphore(max_concurrent_tasks) if max_concurrent_tasks else None
        self.observers = observers
        self.cipher = cipher
        self._durable = durable
        self._shared = shared
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
            key = task.idempotency_key
            if key is not None and self._shared is not None:
                holder = await self._shared.key_holder(key, task_id)
                if holder is not None and holder != task_id:
                    # Another instance's task holds the key: this one is that task's duplicate.
                    store.append_log(task_id, f"not run: idempotency key {key!r} is held by task {holder}")
                    store.transition(task_id, "success")
                    return
            args: tuple[Any, ...] = task.args
            kwargs: dict[str, Any] = task.kwargs
            if task.payload is not None:
                try:
                    args, kwargs = self._decrypt(task.payload)
                except Exception as exc:  # undecryptable arguments: retrying cannot help
                    outcome = exc
                    self._finish_failed(task, exc, attempt, None)
                    return
            timeout = config.timeout
            in_process = spec.executor == "process"
            while True:
                sink: LogSink = self if timeout is None or in_process else _AttemptSink(self)
                active = ActiveTask(task_id, spec.name, attempt, task.tags, sink)
                task.context.run(current_task.set, active)
                started = time.perf_counter() if observers is not None else 0.0
                try:
                    if in_process:
                        await self._run_in_process(task, args, kwargs, active, timeout)
                    elif not spec.is_async:
                        if timeout is None:
                            call = functools.partial(task.context.run, spec.func, *args, **kwargs)
                            await asyncio.get_running_loop().run_in_executor(self._thread_pool(), call)
                        else:
                            await self._run_in_thread_timed(task, args, kwargs, timeout, sink)
                    elif self._semaphore is None:
                        if timeout is None:
                            await _InContext(spec.func(*args, **kwargs), task.context)
                        else:
                            await self._run_async_timed(task, args, kwargs, timeout)
                    else:
                        async with self._semaphore:
                            if timeout is None:
                                await _InContext(spec.func(*args, **kwargs), task.context)
                            else:
                                await self._run_async_timed(task, args, kwargs, timeout)
                except Exception as exc:
                    if attempt < config.retries:
                        attempt += 1
                        await asyncio.sleep(retry_delay(config.delay, config.backoff, attempt, config.jitter))
                        store.transition(task_id, "running", retries_used=attempt)
                        store.append_log(task_id, f"--- Retry {attempt} ---")
                        continue
                    outcome = exc
                    self._finish_failed(task, exc, attempt, time.perf_counter() - started)
                    return
                store.transition(task_id, "success")
                if observers is not None:
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

    async def _run_async_timed(
        self, task: TrackedTask, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float
    ) -> None:
        """One async attempt, cancelled if it runs past ``timeout`` (then ``TaskTimeoutError``).

        The attempt runs as its own task, which the deadline cancels. Cancelling this
        task (the API, a shutdown) is passed on to it and stays a cancellation, even
        when it lands together with the deadline, on every Python version. Not
        ``asyncio.wait_for``, which on some versions loses a cancellation that
        arrives as the inner call finishes.
        """
        where: list[traceback.StackSummary] = []
        attempt = asyncio.get_running_loop().create_task(
            _timed_attempt(task.spec.func(*args, **kwargs), task.context, where), name=f"taskflow-{task.task_id}"
        )
        deadline = _Deadline(attempt, timeout)
        try:
            await asyncio.wait((attempt,))
        except BaseException:  # cancelled: stop the attempt too and let it unwind first
            deadline.timer.cancel()
            attempt.cancel()
            await asyncio.wait((attempt,))
            if not attempt.cancelled():
                attempt.exception()  # retrieved: it is this task's cancellation that counts
            raise
        deadline.timer.cancel()
        error = None if attempt.cancelled() else attempt.exception()
        if deadline.expired:
            message = f"attempt exceeded timeout={timeout!r}s and was cancelled"
            frames = [f for f in where[0] if f.filename != __file__] if where else []
            raise TaskTimeoutError(message, _timeout_trace(frames, message)) from error
        if attempt.cancelled():  # cancelled from inside, not by the deadline
            raise asyncio.CancelledError
        if error is not None:
            raise error

    async def _run_in_thread_timed(
        self,
        task: TrackedTask,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float,
        sink: LogSink,
    ) -> None:
        """One thread attempt, abandoned if it runs past ``timeout`` (then ``TaskTimeoutError``).

        The thread cannot be stopped: it runs on, and its result, error and log lines
        are ignored. An attempt still waiting for a free thread then never starts.
        """
        loop = asyncio.get_running_loop()
        func, context = task.spec.func, task.context
        threads: list[int] = []

        def call() -> Any:
            threads.append(threading.get_ident())
            return context.run(func, *args, **kwargs)

        future = loop.run_in_executor(self._thread_pool(), call)
        settled: asyncio.Future[None] = loop.create_future()

        def settle(_: object = None) -> None:
            if not settled.done():
                settled.set_result(None)

        future.add_done_callback(settle)
        timer = loop.call_later(timeout, settle)
        try:
            await settled
        except BaseException:
            future.cancel()  # still queued: it never runs; running: it runs on, unheard
            raise
        finally:
            timer.cancel()
        if future.done():
            future.result()  # the function's own error, if it raised
            return
        if isinstance(sink, _AttemptSink):
            sink.abandoned = True
        future.cancel()
        frame = sys._current_frames().get(threads[0]) if threads else None
        if frame is None:
            message = f"attempt exceeded timeout={timeout!r}s waiting for a free thread; it will not run"
            raise TaskTimeoutError(message)
        message = (
            f"attempt exceeded timeout={timeout!r}s; a thread cannot be stopped, so it runs on "
            "and its result and log lines are ignored"
        )
        raise TaskTimeoutError(message, _timeout_trace(_user_frames(traceback.extract_stack(frame)), message))

    async def _run_in_process(
        self,
        task: TrackedTask,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        active: ActiveTask,
        timeout: float | None,
    ) -> None:
        """One attempt in a worker process; its log lines are recorded as the worker writes them."""
        from .process_executor import ProcessPool, encode_call

        payload = encode_call(task.spec, task.task_id, active.attempt, task.tags, args, kwargs)
        pool = self._processes
        if pool is None:
            pool = self._processes = ProcessPool(
                self._max_process_workers, shutdown_timeout=self._process_shutdown_timeout
            )
        write = self.write_log

        def on_log(message: str, level: str, extra: dict[str, Any]) -> None:
            write(active, message, level, extra)

        await pool.run(payload, timeout=timeout, on_log=on_log)

    def _decrypt(self, payload: bytes) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if self.cipher is None:
            raise RuntimeError("the task's arguments are encrypted but no encrypt_args_key is configured")
        return self.cipher.decrypt(payload)

    def _finish_failed(self, task: TrackedTask, exc: BaseException, attempt: int, duration: float | None) -> None:
        # Timeouts and process errors bring their own text (e.g. the worker's traceback).
        stack: str = getattr(exc, "task_stacktrace", None) or user_traceback(exc)
        error: str = getattr(exc, "task_error", None) or describe_error(exc)
        self._store.transition(task.task_id, "failed", error=error, stacktrace=stack)
        self._lifecycle(task, "failed", attempt, duration, error, stack)
        self._retain(task)
        if task.idempotency_key is not None and self._shared is not None:
            self._shared.free_key_soon(task.idempotency_key, task.task_id)  # a failed task frees its key

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
        """Join a dedicated pool; abandon the queued work of the default one; stop the worker processes.

        Busy worker processes get up to ``process_shutdown_timeout`` seconds to finish
        their task, then are killed. A later process task starts a new pool.
        """
        pool, self._pool = self._pool, None
        if pool is not None:
            dedicated = self._max_sync_threads is not None
            pool.shutdown(wait=dedicated, cancel_futures=not dedicated)
        processes, self._processes = self._processes, None
        if processes is not None:
            processes.shutdown()
