"""The process executor: tasks that run in spawned worker processes.

Each worker is a ``spawn``-started process that runs one task at a time and talks to
the parent over its own pipe. The parent sends the call: the function (by
``"module:qualname"``, or by value when cloudpickle is installed) and the pickled,
already decrypted arguments. The worker answers ``started`` just before it calls the
function (a ``timeout`` counts from there, so spawning and imports are not charged to
the task), streams each ``task_log`` line as it is written, and ends with ``ok`` or the
error and its traceback. Coroutine functions run under ``asyncio.run`` in the worker,
where ``get_task_context()`` returns the task's context.

Because every worker has its own pipe, a worker that dies (a crash, ``os._exit``, the
OOM killer, or a kill at the deadline) fails only the attempt it was running; the
other workers go on and the next task gets a fresh worker. Return values are not sent
back (nothing reads them), so they need not pickle.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import importlib
import inspect
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.util  # registers its exit hook before ours, so ours runs first
import os
import pickle
import signal
import threading
import time
import traceback
import types
import weakref
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from .errors import TaskArgumentError, TaskTimeoutError
from .task_logging import ActiveTask, current_task

if TYPE_CHECKING:
    from multiprocessing.context import SpawnContext, SpawnProcess

    from .registry import TaskSpec

logger = logging.getLogger("fastapi_taskflow")

#: Called in a reader thread with each ``task_log`` line of the worker: ``(message, level, extra)``.
LogCallback = Callable[[str, str, dict[str, Any]], None]

_STOP = b""  # an empty message asks an idle worker to exit

# -- serialisation ------------------------------------------------------------

_UNKNOWN: Any = object()
_cloudpickle: Any = _UNKNOWN


def cloudpickle_module() -> Any:
    """The ``cloudpickle`` module when it is installed, else None (looked up once)."""
    global _cloudpickle
    if _cloudpickle is _UNKNOWN:
        try:
            _cloudpickle = importlib.import_module("cloudpickle")
        except ImportError:
            _cloudpickle = None
    return _cloudpickle


def dumps(obj: object) -> bytes:
    """Pickle ``obj`` as it is sent to a worker: with cloudpickle when installed."""
    module = cloudpickle_module()
    if module is not None:
        data: bytes = module.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        return data
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


class FunctionRef(NamedTuple):
    """A module-level function, sent by name and imported again in the worker."""

    module: str
    qualname: str


class ProcessCall(NamedTuple):
    """One attempt, as sent to a worker."""

    task_id: str
    func_name: str
    attempt: int
    tags: dict[str, str]
    func: Any  # a FunctionRef, or the callable itself (pickled)
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


def _function_for_worker(func: Callable[..., Any]) -> Any:
    if cloudpickle_module() is None and isinstance(func, types.FunctionType):
        return FunctionRef(func.__module__, func.__qualname__)
    return func


def check_process_function(func: Callable[..., Any]) -> None:
    """Refuse, at decoration time, a function that a worker process could not receive.

    Without cloudpickle a function travels by ``"module:qualname"``, so nested
    functions and lambdas (``<locals>``, ``<lambda>`` in the qualname) are refused;
    other callables (partials, callable objects) must pickle.
    """
    if isinstance(func, types.FunctionType):
        if "<" in func.__qualname__ and cloudpickle_module() is None:
            raise ValueError(
                f"executor='process' cannot send {func.__qualname__!r} to a worker process: a nested function "
                "or lambda cannot be imported there by name. Define it at module level, or install cloudpickle"
            )
        return
    try:
        dumps(func)
    except Exception as exc:
        raise ValueError(
            f"executor='process' cannot send {func!r} to a worker process ({type(exc).__name__}: {exc})"
        ) from exc


def validate_process_args(spec: TaskSpec, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Refuse, at ``add_task`` time, arguments that cannot be sent to a worker process.

    A no-op for tasks of other executors. Raises ``TaskArgumentError`` (a ``ValueError``)
    naming the first argument that does not pickle.
    """
    if spec.executor != "process":
        return
    try:
        dumps((args, kwargs))
    except Exception as exc:
        raise _argument_error(spec.name, args, kwargs, exc) from exc


def encode_call(
    spec: TaskSpec, task_id: str, attempt: int, tags: dict[str, str], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> bytes:
    """The message that starts one attempt of ``spec`` in a worker."""
    call = ProcessCall(task_id, spec.name, attempt, tags, _function_for_worker(spec.func), args, kwargs)
    try:
        return dumps(call)
    except Exception as exc:
        try:
            dumps(call.func)
        except Exception:
            raise TaskArgumentError(
                f"the function of process task {spec.name!r} cannot be sent to a worker process "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        raise _argument_error(spec.name, args, kwargs, exc) from exc


def _argument_error(name: str, args: tuple[Any, ...], kwargs: dict[str, Any], exc: Exception) -> TaskArgumentError:
    named = [(f"positional argument {i}", v) for i, v in enumerate(args)] + [
        (f"argument {k!r}", v) for k, v in kwargs.items()
    ]
    culprit = "an argument"
    for what, value in named:
        try:
            dumps(value)
        except Exception:
            culprit = f"{what} ({type(value).__name__})"
            break
    return TaskArgumentError(
        f"{culprit} of process task {name!r} cannot be sent to a worker process ({type(exc).__name__}: {exc}); "
        "process tasks need arguments that pickle"
    )


# -- errors seen by the runner ---------------------------------------------------


class ProcessTaskError(Exception):
    """The task raised in its worker; carries the worker's traceback."""

    def __init__(self, type_name: str, message: str, stacktrace: str) -> None:
        self.task_error = f"{type_name}: {message}" if message else type_name
        super().__init__(self.task_error)
        self.task_stacktrace = stacktrace


class WorkerDiedError(RuntimeError):
    """The worker process running the task exited without answering."""

    def __init__(self, pid: int | None, exitcode: int | None, note: str = "") -> None:
        message = f"worker process {pid} died while running the task ({_describe_exit(exitcode)}){note}"
        super().__init__(message)
        self.task_error = f"WorkerDiedError: {message}"
        self.task_stacktrace = self.task_error + "\n"


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "exit status unknown"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


# -- the worker process ------------------------------------------------------------

Send = Callable[[tuple[Any, ...]], None]


class _ParentGone(BaseException):
    """The pipe to the parent broke: the worker exits. A BaseException, so task code
    catching ``Exception`` around ``task_log`` cannot keep an orphaned worker alive."""


class _PipeSink:
    """The ``task_log`` sink inside a worker: each line goes to the parent at once.

    Closed when the call ends: lines from threads the task left behind are dropped
    rather than attributed to the worker's next task.
    """

    __slots__ = ("closed", "send")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.closed = False

    def write_log(self, task: ActiveTask, message: str, level: str, extra: dict[str, Any]) -> None:
        if self.closed:
            return
        try:
            self.send(("log", str(message), level, extra))
        except Exception:  # extra fields that do not pickle reach the observers as their repr
            self.send(("log", str(message), level, {key: repr(value) for key, value in extra.items()}))


def _resolve(func: Any) -> Any:
    if isinstance(func, FunctionRef):
        target: Any = importlib.import_module(func.module)
        for part in func.qualname.split("."):
            target = getattr(target, part)
        return target
    return func


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _worker_traceback(exc: BaseException) -> str:
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return f"<unprintable {type(exc).__name__}>"


def _serve(data: bytes, send: Send) -> None:
    """Run one call and answer it. Only ``_ParentGone`` escapes (the worker then exits)."""
    sink = _PipeSink(send)
    token = None
    reply: tuple[Any, ...]
    try:
        call: ProcessCall = pickle.loads(data)
        func = _resolve(call.func)
        token = current_task.set(ActiveTask(call.task_id, call.func_name, call.attempt, call.tags, sink))
        send(("started", os.getpid()))
        result = func(*call.args, **call.kwargs)
        if inspect.isawaitable(result):
            asyncio.run(_awaited(result))
    except _ParentGone:
        raise
    except BaseException as exc:  # SystemExit and KeyboardInterrupt too: they fail the task, not the worker
        reply = ("error", type(exc).__name__, _safe_str(exc), _worker_traceback(exc))
    else:
        reply = ("ok",)
    finally:
        sink.closed = True
        if token is not None:
            current_task.reset(token)
    send(reply)


def _worker_main(conn: multiprocessing.connection.Connection) -> None:
    """The worker's loop: one call at a time until the parent says stop or goes away."""
    # Ctrl-C reaches the whole process group; the parent decides when workers stop.
    with contextlib.suppress(ValueError, OSError, AttributeError):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    lock = threading.Lock()

    def send(message: tuple[Any, ...]) -> None:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            with lock:  # task code may log from threads of its own
                conn.send_bytes(data)
        except OSError as exc:
            raise _ParentGone from exc

    try:
        while True:
            try:
                data = conn.recv_bytes()
            except (EOFError, OSError):  # the parent is gone
                return
            if data == _STOP:
                return
            _serve(data, send)
    except _ParentGone:
        return
    finally:
        conn.close()


# -- the parent side ----------------------------------------------------------------


class _Worker:
    __slots__ = ("conn", "process", "send_lock")

    def __init__(self, ctx: SpawnContext, number: int) -> None:
        parent_end, child_end = ctx.Pipe()
        self.process: SpawnProcess = ctx.Process(
            target=_worker_main, args=(child_end,), name=f"taskflow-process-{number}"
        )
        try:
            self.process.start()
        except BaseException:
            parent_end.close()
            raise
        finally:
            child_end.close()
        self.conn = parent_end
        self.send_lock = threading.Lock()

    def send(self, data: bytes) -> None:
        with self.send_lock:
            self.conn.send_bytes(data)

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.process.kill()

    def stop_when_idle(self) -> None:
        """Ask the worker to exit once its current call (if any) is answered; let go of the pipe."""
        with contextlib.suppress(Exception):
            self.send(_STOP)
        self.conn.close()

    def reap(self) -> int | None:
        """Wait for the (exiting or killed) process, close the pipe; the exit code."""
        self.process.join(5.0)
        if self.process.is_alive():
            self.kill()
            self.process.join()
        self.conn.close()
        return self.process.exitcode


class _Call:
    """One attempt in flight: shared by the awaiting coroutine and the pipe's reader thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, worker: _Worker, timeout: float | None) -> None:
        self.loop = loop
        self.worker = worker
        self.timeout = timeout
        self.done: asyncio.Future[None] = loop.create_future()
        self.lock = threading.Lock()
        self.outcome: tuple[Any, ...] | None = None
        self.killed = False
        self.timed_out = False
        self.timer: asyncio.TimerHandle | None = None

    # on the reader thread

    def post(self, callback: Callable[[], None]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self.loop.call_soon_threadsafe(callback)

    def settle(self, outcome: tuple[Any, ...]) -> None:
        with self.lock:
            self.outcome = outcome
            killed = self.killed
        if killed and outcome[0] != "died":
            self.worker.reap()  # killed while its answer was on the way
        self.post(self.wake)

    # on the loop thread

    def wake(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def arm(self) -> None:
        if self.timeout is not None and self.timer is None and not self.done.done():
            self.timer = self.loop.call_later(self.timeout, self.stop, True)

    def stop(self, timed_out: bool = False) -> None:
        """Kill the worker unless the call has already ended."""
        with self.lock:
            if self.outcome is None and not self.killed:
                self.killed = True
                self.timed_out = timed_out
                self.worker.kill()

    def disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()


def _converse(call: _Call, payload: bytes, on_log: LogCallback | None) -> None:
    """The reader thread of one call: send it, relay the worker's messages, settle the call."""
    worker = call.worker
    note = ""
    try:
        worker.send(payload)
        while True:
            message = pickle.loads(worker.conn.recv_bytes())
            kind = message[0]
            if kind == "log":
                if on_log is not None:
                    try:
                        on_log(message[1], message[2], message[3])
                    except Exception:
                        logger.exception("fastapi_taskflow: could not record a log line of a process task")
            elif kind == "started":
                call.post(call.arm)
            else:
                call.settle(message)
                return
    except (EOFError, OSError):
        pass
    except Exception as exc:  # a message that cannot be read: the worker cannot be trusted any more
        note = f"; its message could not be read ({type(exc).__name__}: {exc})"
        worker.kill()
    exitcode = worker.reap()
    call.settle(("died", exitcode, note))


class ProcessPool:
    """Spawned worker processes, at most ``max_workers`` (None: the CPU count), started on demand.

    Use it from one event loop at a time. ``shutdown`` lets busy workers finish their
    task for up to ``shutdown_timeout`` seconds, then kills them.
    """

    def __init__(self, max_workers: int | None = None, *, shutdown_timeout: float = 30.0) -> None:
        if max_workers is not None and max_workers < 1:
            raise ValueError(f"max_process_workers must be at least 1, got {max_workers!r}")
        self.max_workers = max_workers or os.cpu_count() or 1
        self.shutdown_timeout = shutdown_timeout
        self._ctx = multiprocessing.get_context("spawn")
        self._idle: list[_Worker] = []
        self._busy: set[_Worker] = set()
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._spawned = 0
        self._closed = False
        _register(self)

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the live workers (idle and busy)."""
        return [w.process.pid for w in (*self._idle, *self._busy) if w.process.pid is not None]

    async def run(self, payload: bytes, *, timeout: float | None = None, on_log: LogCallback | None = None) -> None:
        """Run one call made by ``encode_call`` in a worker.

        Raises ``ProcessTaskError`` (the task raised), ``TaskTimeoutError`` (it ran past
        ``timeout`` seconds after it started; its worker was killed) or ``WorkerDiedError``.
        Cancelling the awaiting task kills the worker running the call.
        """
        worker = await self._acquire()
        call = _Call(asyncio.get_running_loop(), worker, timeout)
        try:
            threading.Thread(
                target=_converse, args=(call, payload, on_log), name="taskflow-process-io", daemon=True
            ).start()
            await call.done
        except BaseException:
            call.stop()  # cancelled (API, shutdown): the attempt must not go on in its worker
            raise
        finally:
            call.disarm()
            outcome = call.outcome
            self._release(worker, reusable=not call.killed and outcome is not None and outcome[0] != "died")
        assert outcome is not None
        if outcome[0] == "ok":
            return
        if outcome[0] == "error":
            raise ProcessTaskError(outcome[1], outcome[2], outcome[3])
        if call.timed_out:
            raise TaskTimeoutError(
                f"attempt exceeded timeout={timeout!r}s; worker process {worker.process.pid} was killed"
            )
        raise WorkerDiedError(worker.process.pid, outcome[1], outcome[2])

    async def _acquire(self) -> _Worker:
        while True:
            if self._closed:
                raise RuntimeError("process tasks cannot start: the process pool is shut down")
            while self._idle:
                worker = self._idle.pop()
                if worker.process.is_alive():
                    self._busy.add(worker)
                    return worker
                worker.reap()  # died while idle
            if len(self._busy) < self.max_workers:
                self._spawned += 1
                worker = _Worker(self._ctx, self._spawned)
                self._busy.add(worker)
                return worker
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake_next()  # pass on the turn this task will not take
                else:
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(waiter)
                raise

    def _release(self, worker: _Worker, *, reusable: bool) -> None:
        self._busy.discard(worker)
        if reusable:
            if self._closed:
                worker.stop_when_idle()
            else:
                self._idle.append(worker)
        # Not reusable: killed or dead, and its reader thread reaps it.
        self._wake_next()

    def _wake_next(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def shutdown(self, timeout: float | None = None) -> None:
        """Stop the workers: idle ones now, busy ones after their task (within ``timeout``), then kill.

        Blocks for at most ``timeout`` seconds (default ``shutdown_timeout``) plus a
        moment to reap killed workers. Later calls to ``run`` raise ``RuntimeError``.
        """
        if self._closed:
            return
        self._closed = True
        _live_pools.discard(self)
        limit = self.shutdown_timeout if timeout is None else timeout
        idle, self._idle = self._idle, []
        workers = idle + list(self._busy)
        for worker in workers:
            with contextlib.suppress(Exception):
                worker.send(_STOP)  # queued behind the current call of a busy worker
        end = time.monotonic() + limit
        for worker in workers:
            worker.process.join(max(0.0, end - time.monotonic()))
        for worker in workers:
            if worker.process.is_alive():
                logger.warning(
                    "fastapi_taskflow: process worker %s did not finish within %ss of shutdown; killing it",
                    worker.process.pid,
                    limit,
                )
                worker.kill()
                worker.process.join(5.0)
        for worker in idle:
            worker.conn.close()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the waiting call sees the pool closed


_live_pools: weakref.WeakSet[ProcessPool] = weakref.WeakSet()
_exit_hook_registered = False


def _register(pool: ProcessPool) -> None:
    global _exit_hook_registered
    if not _exit_hook_registered:
        # Registered after multiprocessing's own exit hook, so it runs before it: that
        # hook joins every worker, which would wait forever for a worker nobody stops.
        atexit.register(_shutdown_all)
        _exit_hook_registered = True
    _live_pools.add(pool)


def _shutdown_all() -> None:
    for pool in list(_live_pools):
        pool.shutdown(timeout=1.0)
