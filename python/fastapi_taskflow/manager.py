"""``TaskManager``: the registry, the core store, the runner and their lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import os
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextvars import copy_context
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import fastapi.dependencies.utils as fastapi_dependency_utils
import orjson
from fastapi import BackgroundTasks, FastAPI

from ._selected import core as _core_module
from .audit import AuditLog
from .backends.base import SharedBackend
from .backends.sqlite import SqliteBackend
from .crypto import ArgumentCipher
from .durability import DurableAcceptance, journaled_task_accepted
from .errors import CorruptSnapshotError, SnapshotError
from .execution import Arguments, TaskRunner
from .loggers import FileLogger, LifecycleEvent, LoggerChain, TaskObserver
from .models import ExecutorName, QueueConfig, ScheduledOnce, TaskConfig, TaskRecord
from .observing import ObserverThread
from .persistence import SnapshotWriter
from .queues import QueueFullError, TaskQueue, check_priority
from .registry import TaskFunc, TaskRegistry, TaskSpec, validate_executor
from .schedule_store import FileSchedules, ScheduleStore
from .scheduling import RecurringSchedule, Scheduler
from .scheduling_once import LIST_WINDOW, require_file, save_once, scheduled_once, to_us
from .scheduling_triggers import make_trigger
from .shared import SharedMode
from .wrapper import ManagedBackgroundTasks, TrackedTask

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from ._core import TaskStore

__all__ = ["QueueFullError", "TaskManager"]

logger = logging.getLogger("fastapi_taskflow")

F = TypeVar("F", bound=Callable[..., Any])

#: Unregistered functions resolved so far; bounded because callers may pass fresh lambdas.
_UNREGISTERED_CACHE_SIZE = 1024

#: Unknown queue names warned about (once each); bounded in case names come from user input.
_WARNED_QUEUES_SIZE = 1024

#: The queue that holds priority tasks outside queue mode (never listed by ``queue_stats``).
_PRIORITY_QUEUE = "(priority)"

#: Metadata key of the queue limits changed at run time: JSON ``{name: {"concurrency", "max_size"}}``.
QUEUE_CONFIGS_KEY = "queue_configs"

#: One-off runs ``list_scheduled`` returns at most.
LIST_LIMIT = 10_000


def _not_yet(argument: str) -> NotImplementedError:
    return NotImplementedError(
        f"{argument} is not available yet in fastapi-taskflow-rs; see the README's 'Coming next' list"
    )


class TaskManager:
    """Owns the task registry, the core store and the runner of one application.

    Arguments of the fastapi_taskflow API that this release does not implement yet
    are accepted in the signature and refused with ``NotImplementedError`` when set,
    so that nothing silently behaves differently from what the caller asked for.
    """

    def __init__(
        self,
        *,
        snapshot_db: str | None = None,
        snapshot_backend: object | None = None,
        snapshot_interval: float = 60.0,
        requeue_pending: bool = False,
        merged_list_ttl: float = 5.0,
        retention_days: float | None = None,
        retry_replaces_original: bool = True,
        loggers: Sequence[TaskObserver] | None = None,
        log_file: str | None = None,
        log_file_max_bytes: int = 10_485_760,
        log_file_backup_count: int = 5,
        log_file_mode: str = "rotate",
        log_lifecycle: bool = False,
        encrypt_args_key: str | bytes | Sequence[str | bytes] | None = None,
        max_concurrent_tasks: int | None = None,
        max_sync_threads: int | None = None,
        max_process_workers: int | None = None,
        process_shutdown_timeout: float = 30.0,
        queues: Mapping[str, QueueConfig] | None = None,
        max_size: int | None = None,
        instance_url: str | None = None,
        instance_tasks_prefix: str = "",
        registry_ttl: int = 90,
        registry_heartbeat: int = 30,
        max_history: int = 10_000,
        idempotency_ttl: float | None = None,
        on_corrupt_snapshot: Literal["raise", "move_aside"] = "raise",
    ) -> None:
        if instance_url is not None:
            # Peers are not asked over HTTP: with a shared backend every instance reads it.
            raise _not_yet("TaskManager(instance_url=...); share a backend (snapshot_backend=) instead")
        shared_backend: SharedBackend | None = None
        if isinstance(snapshot_backend, SqliteBackend):
            snapshot_db = snapshot_backend.db_path
        elif isinstance(snapshot_backend, SharedBackend):
            shared_backend = snapshot_backend
            if snapshot_db is None:
                # The local journal (outbox) is required; without a path it lives for this process only.
                snapshot_db = os.path.join(tempfile.mkdtemp(prefix="taskflow-"), "journal.db")
        elif snapshot_backend is not None:
            raise TypeError(
                "snapshot_backend must be a SqliteBackend, RedisBackend, PostgresBackend or MySQLBackend, "
                f"got {type(snapshot_backend).__name__}"
            )
        if snapshot_interval <= 0:
            raise ValueError(f"snapshot_interval must be positive, got {snapshot_interval!r}")
        if on_corrupt_snapshot not in ("raise", "move_aside"):
            raise ValueError(f"on_corrupt_snapshot must be 'raise' or 'move_aside', got {on_corrupt_snapshot!r}")
        self.snapshot_interval = snapshot_interval
        self._requeue_pending = requeue_pending
        self.retry_replaces_original = retry_replaces_original
        self.registry = TaskRegistry()
        self.audit = AuditLog()
        self.core: TaskStore = _open_core(
            snapshot_db, on_corrupt_snapshot, max_history=max_history, idempotency_ttl=idempotency_ttl
        )
        self.writer = SnapshotWriter(self.core, interval=snapshot_interval) if snapshot_db is not None else None
        #: With a shared backend: replication, shared schedules and merged reads (see ``shared.py``).
        self.shared: SharedMode | None = None
        if shared_backend is not None:
            assert self.writer is not None  # a shared backend always has a local journal
            self.shared = SharedMode(
                self.core,
                shared_backend,
                self.writer,
                lease=float(registry_ttl),
                heartbeat=float(registry_heartbeat),
                idempotency_ttl=idempotency_ttl,
                adopt=self.run_stored,
            )
            self.writer.after_write = self.shared.replicator.soon
            # Accepted and started tasks must reach the backend, not only this file, before the
            # response leaves or the function runs: another instance may have to take them over.
            self.writer.durable_beyond = self.shared.replicator.pushed
            self.writer.retain_with = lambda cutoff: self.delete_history(datetime.fromtimestamp(cutoff, timezone.utc))
        #: Where schedule locks and one-off runs live: the shared backend, else the file, else nowhere.
        self.schedules: ScheduleStore | None = (
            self.shared.schedules if self.shared is not None else FileSchedules(self.core) if self.writer else None
        )
        self.set_retention_days(retention_days)
        observers = list(loggers or [])
        if log_file is not None:
            observers.append(
                FileLogger(
                    log_file,
                    max_bytes=log_file_max_bytes,
                    backup_count=log_file_backup_count,
                    mode=log_file_mode,
                    log_lifecycle=log_lifecycle,
                )
            )
        self.logger = LoggerChain(observers) if observers else None
        self.runner = TaskRunner(
            self.core,
            max_concurrent_tasks=max_concurrent_tasks,
            max_sync_threads=max_sync_threads,
            observers=ObserverThread(self.logger) if self.logger else None,
            cipher=ArgumentCipher(encrypt_args_key) if encrypt_args_key is not None else None,
            durable=self.writer.durable if self.writer is not None else None,
            shared=self.shared,
            max_process_workers=max_process_workers,
            process_shutdown_timeout=process_shutdown_timeout,
        )
        self._unregistered: dict[TaskFunc, TaskSpec] = {}
        #: Tasks this manager started itself (queued, eager, requeued and retried ones), for shutdown.
        self._dispatched: set[asyncio.Task[None]] = set()
        self._started = False
        self._apps: set[int] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Named queues by name; empty outside queue mode (``queues=`` or ``max_size=`` turn it on).
        self._queues: dict[str, TaskQueue] = _make_queues(queues, max_size, max_concurrent_tasks)
        #: Outside queue mode, priority tasks pass through this one queue (no limits) in priority order.
        self._priority_queue = TaskQueue(_PRIORITY_QUEUE)
        self._warned_queues: set[str] = set()
        self._warned_not_started = False
        #: Fires ``@schedule`` functions and, with a snapshot file, one-off runs.
        self.scheduler = Scheduler(self)
        if self.shared is not None and self.scheduler.one_offs is not None:
            # Other instances save runs too: read them every heartbeat, not every few minutes.
            self.scheduler.one_offs.refill_interval = float(registry_heartbeat)
        #: Serialises writes of the queue limits, so that the last write holds the latest limits.
        self._queue_configs_lock = threading.Lock()
        self._queue_config_writes: set[asyncio.Future[None]] = set()
        #: Whether a ``plain`` spec's task needs only its record here (see ``accept_if_plain``).
        #: Kept with the settings it depends on: queues, writer, shared backend and cipher are
        #: set at construction (a rotated key replaces one cipher with another), and
        #: ``requeue_pending``'s setter refreshes it.
        self._plain_tasks = self._takes_plain_tasks()

    @property
    def requeue_pending(self) -> bool:
        """Whether every task is journaled, so that unfinished ones run again at the next start."""
        return self._requeue_pending

    @requeue_pending.setter
    def requeue_pending(self, value: bool) -> None:
        self._requeue_pending = value
        self._plain_tasks = self._takes_plain_tasks()

    def _takes_plain_tasks(self) -> bool:
        return not self._queues and self.runner.cipher is None and self._writer_of_every_task() is None

    @property
    def queue_mode(self) -> bool:
        """Whether named queues are on (``queues=`` or ``max_size=`` was given)."""
        return bool(self._queues)

    # -- registration -------------------------------------------------------

    def task(
        self,
        *,
        executor: ExecutorName | None = None,
        retries: int = 0,
        delay: float = 0.0,
        backoff: float = 1.0,
        persist: bool = False,
        name: str | None = None,
        requeue_on_interrupt: bool = False,
        eager: bool = False,
        priority: int | None = None,
        queue: str | None = None,
        timeout: float | None = None,
        jitter: float = 0.0,
    ) -> Callable[[F], F]:
        """Register a function as a task; the function is returned unchanged."""
        check_priority(priority)
        if queue is not None and (not isinstance(queue, str) or not queue):
            raise ValueError(f"queue must be a non-empty queue name, got {queue!r}")
        if retries < 0 or delay < 0 or backoff < 0:
            raise ValueError("retries, delay and backoff must not be negative")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if not 0 <= jitter <= 1:
            raise ValueError(f"jitter must be between 0 and 1 (a fraction of the delay), got {jitter!r}")
        config = TaskConfig(
            retries=retries,
            delay=delay,
            backoff=backoff,
            persist=persist,
            name=name,
            requeue_on_interrupt=requeue_on_interrupt,
            eager=bool(eager),
            priority=priority,
            executor=executor,
            queue=queue,
            timeout=timeout,
            jitter=jitter,
        )

        def register(func: F) -> F:
            validate_executor(func, executor)
            self.registry.register(func, config)
            return func

        return register

    def schedule(
        self,
        *,
        every: float | None = None,
        cron: str | None = None,
        retries: int = 0,
        delay: float = 0.0,
        backoff: float = 1.0,
        name: str | None = None,
        run_on_startup: bool = False,
        timezone: str = "UTC",
        executor: ExecutorName | None = None,
        queue: str | None = None,
        timeout: float | None = None,
    ) -> Callable[[F], F]:
        """Register a function as a task (so ``add_task`` works too) that also runs on its own.

        Exactly one of ``every`` (seconds; ticks at the multiples of ``every`` since the
        epoch) and ``cron`` (5 fields, read in ``timezone``; needs croniter) is required,
        else ``ValueError``, raised here, as is ``ImportError`` when croniter is missing.
        ``run_on_startup`` also fires it once when the manager starts. The function is
        called without arguments.
        """
        trigger = make_trigger(every, cron, timezone)
        register_task = self.task(
            executor=executor, retries=retries, delay=delay, backoff=backoff, name=name, queue=queue, timeout=timeout
        )

        def register(func: F) -> F:
            _check_callable_without_arguments(func)
            register_task(func)
            spec = self.registry.spec(func)
            assert spec is not None
            self.scheduler.add(RecurringSchedule(spec, trigger, timezone, bool(run_on_startup)))
            return func

        return register

    # -- one-off runs -------------------------------------------------------------

    async def schedule_once(
        self,
        func: Callable[..., Any],
        *args: Any,
        run_at: datetime,
        run_key: str,
        idempotency_key: str | None = None,
        tags: dict[str, str] | None = None,
        priority: int | None = None,
        queue: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Run ``func(*args, **kwargs)`` once at ``run_at``, even after a restart; saving ``run_key`` again reschedules.

        Needs a snapshot file (``RuntimeError`` without one). A naive ``run_at`` is UTC;
        one already past fires promptly. The arguments are checked and encoded (encrypted
        when configured) now, as ``add_task`` does: ``TaskArgumentError`` or ``TypeError``
        here rather than when it fires. ``func`` must be registered (``ValueError``).
        With processes sharing the file, exactly one of them fires it.
        """
        fire_us = await save_once(
            self,
            func,
            args,
            kwargs,
            run_at=run_at,
            run_key=run_key,
            idempotency_key=idempotency_key,
            tags=tags,
            priority=priority,
            queue=queue,
        )
        one_offs = self.scheduler.one_offs
        assert one_offs is not None  # save_once refuses a manager without a file
        if one_offs.saved(run_key, fire_us, self.scheduler.now_us()):
            self.scheduler.wake()

    async def cancel_scheduled(self, run_key: str) -> bool:
        """Delete the one-off run ``run_key``; False when there is none (it fired, or never was)."""
        require_file(self, "cancel_scheduled")
        assert self.schedules is not None  # require_file
        deleted = await self.schedules.delete(run_key)
        if self.scheduler.one_offs is not None:
            self.scheduler.one_offs.cancelled(run_key)
        return deleted

    async def list_scheduled(self, before: datetime | None = None) -> list[ScheduledOnce]:
        """The one-off runs due before ``before`` (default: within 365 days), soonest first."""
        require_file(self, "list_scheduled")
        if before is None:
            before_us = self.scheduler.now_us() + round(LIST_WINDOW * 1_000_000)
        else:
            before_us = to_us(before, "before")
        assert self.schedules is not None  # require_file
        rows = await self.schedules.load_due(before_us, LIST_LIMIT)
        return [scheduled_once(row) for row in rows]

    async def schedules_overview(self) -> dict[str, Any]:
        """``{"recurring": [...], "one_off": [...]}``: what ``GET /tasks/schedules`` returns."""
        now_us = self.scheduler.now_us()
        recurring = [schedule.describe(now_us) for schedule in self.scheduler.recurring.values()]
        one_off = [once.to_dict() for once in await self.list_scheduled()] if self.schedules is not None else []
        return {"recurring": recurring, "one_off": one_off}

    def spec_for(self, func: TaskFunc) -> TaskSpec:
        """The registered spec of ``func``, or defaults for an unregistered function."""
        spec = self.registry.spec(func)
        if spec is not None:
            return spec
        spec = self._unregistered.get(func)
        if spec is None:
            if len(self._unregistered) >= _UNREGISTERED_CACHE_SIZE:
                self._unregistered.clear()
            spec = self._unregistered[func] = TaskSpec.resolve(func, TaskConfig())
        return spec

    def spec_named(self, func_name: str) -> TaskSpec | None:
        """The spec registered under ``func_name`` (the name records carry), if any."""
        return self.registry.spec_named(func_name)

    def journal_writer(self, spec: TaskSpec) -> SnapshotWriter | None:
        """The writer that journals ``spec``'s tasks, or None when they are not journaled.

        Journaled: with a snapshot file, tasks of ``persist=True`` functions, and all
        tasks with ``requeue_pending=True`` (``persist`` concerns its own function only);
        with a shared backend, every task (so that other instances see it and take it over).
        """
        if spec.config.persist:
            return self.writer
        return self._writer_of_every_task()

    def _writer_of_every_task(self) -> SnapshotWriter | None:
        """The writer when it journals every task, persistent or not (``requeue_pending``, a shared backend)."""
        return self.writer if self._requeue_pending or self.shared is not None else None

    def serialize_arguments(
        self,
        spec: TaskSpec,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        kind: str = "persistent task",
        remedy: str = "pass JSON-compatible values, or neither persist=True nor requeue_pending=True",
    ) -> tuple[bytes | None, bytes | None]:
        """JSON of the arguments of a task that is stored to run later (journaled, or a one-off run).

        Such a task must be restorable from disk, so arguments that JSON cannot hold
        are refused here, before anything is stored. The message names the argument,
        the ``kind`` of task and ends with ``remedy``.
        """
        try:
            return orjson.dumps(args), orjson.dumps(kwargs)
        except TypeError as exc:
            culprit = _unserializable_argument(args, kwargs)
            raise TypeError(f"{culprit} of {kind} {spec.name!r} cannot be stored as JSON ({exc}); {remedy}") from exc

    def encrypt_arguments(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any], bytes | None]:
        """``((), {}, ciphertext)`` with ``encrypt_args_key``, else the arguments as they are and None."""
        cipher = self.runner.cipher
        if cipher is None:
            return args, kwargs, None
        return (), {}, cipher.encrypt(args, kwargs)

    # -- actions on accepted tasks -----------------------------------------------

    def submit(
        self,
        spec: TaskSpec,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        payload: bytes | None = None,
        tags: dict[str, str] | None = None,
        priority: int | None = None,
        queue: str = "default",
        retry_of: str | None = None,
        source: str = "manual",
        refuse_when_full: bool = False,
    ) -> str:
        """Accept a task outside a request (a retry, a schedule's tick) and start it now; returns its id.

        ``payload`` is the ciphertext of encrypted arguments (``args``/``kwargs`` then
        empty). A full queue takes the task anyway unless ``refuse_when_full``: then the
        record becomes rejected and ``QueueFullError`` is raised, as by ``add_task``.
        Call it on the event loop thread.
        """
        check_priority(priority)
        queue = self.resolve_queue(queue)
        task_id, task = self.accept(
            spec,
            args,
            kwargs,
            payload=payload,
            tags=tags,
            priority=priority,
            queue=queue,
            retry_of=retry_of,
            source=source,
            context=contextvars.Context(),
        )
        assert task is not None  # no idempotency key: always created
        if self._queues:
            try:
                # A retry was accepted once already: a full queue does not refuse it again.
                self._queues[queue].push(task_id, task, priority, front=spec.config.eager, force=not refuse_when_full)
            except QueueFullError as exc:
                self.core.transition(task_id, "rejected", error=str(exc))
                raise
        else:
            self._start(task)
        return task_id

    def accept(
        self,
        spec: TaskSpec,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        payload: bytes | None = None,
        tags: dict[str, str] | None = None,
        priority: int | None = None,
        queue: str = "default",
        idempotency_key: str | None = None,
        retry_of: str | None = None,
        source: str = "manual",
        context: contextvars.Context | None = None,
    ) -> tuple[str, TrackedTask | None]:
        """Store a new task's record and build the task to run; ``(holder id, None)`` for a held key.

        The one place where arguments are encrypted (unless ``payload`` already is their
        ciphertext), serialised for persistent and journaled functions (refused here when
        JSON cannot hold them) and journaled. ``context`` defaults to a copy of the current one.
        """
        writer = self.journal_writer(spec)
        if payload is None:
            args, kwargs, payload = self.encrypt_arguments(args, kwargs)
        args_json, kwargs_json = self._arguments_json(spec, args, kwargs, payload, writer)
        task_id, created = self.core.create(
            spec.name,
            queue=queue,
            executor=spec.executor,
            priority=priority,
            source=source,
            tags=tags,
            idempotency_key=idempotency_key,
            args_json=args_json,
            kwargs_json=kwargs_json,
            encrypted_payload=payload if writer is not None else None,
            retry_of=retry_of,
            journal=writer is not None,
        )
        if not created:
            return task_id, None
        task = TrackedTask(self.runner, spec, task_id, args, kwargs, copy_context() if context is None else context)
        if tags:
            task.tags = tags
        if payload is not None:
            task.payload = payload
        if idempotency_key is not None:
            task.idempotency_key = idempotency_key
        if writer is not None:
            task.journaled = True
            journaled_task_accepted()
        return task_id, task

    def accept_if_plain(self, func: TaskFunc, args: tuple[Any, ...], kwargs: dict[str, Any]) -> TrackedTask | None:
        """``accept`` of the common task in its fewest steps, or None when the task needs more.

        For ``add_task`` called without key, tags, priority, eagerness or queue. The task
        then needs only its record when its spec is ``plain`` and this manager has no queues,
        no encryption and no journal of every task: nothing to encrypt, serialise, journal or
        dispatch, and no key that may be held. Otherwise None: the caller takes the full ``accept``.
        """
        if not self._plain_tasks:
            return None
        # The registry's own lookup first: spec_for is one Python call more per task.
        spec = self.registry.spec(func) or self.spec_for(func)
        if not spec.plain:
            return None
        task_id = self.core.create_plain(spec.name, spec.queue, spec.executor)
        return TrackedTask(self.runner, spec, task_id, args, kwargs, copy_context())

    def _arguments_json(
        self,
        spec: TaskSpec,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        payload: bytes | None,
        writer: SnapshotWriter | None,
    ) -> tuple[bytes | None, bytes | None]:
        if payload is not None or (writer is None and not spec.config.persist):
            return None, None  # the common case (neither persistent nor journaled): nothing to store
        if spec.config.persist or self.requeue_pending:
            return self.serialize_arguments(spec, args, kwargs)
        # Journaled only so that other instances see the task: arguments JSON cannot hold
        # are not stored, and an instance taking it over reports it interrupted, saying so.
        try:
            return orjson.dumps(args), orjson.dumps(kwargs)
        except TypeError:
            return None, None

    # -- dispatch -----------------------------------------------------------------

    def resolve_queue(self, name: str | None) -> str:
        """The queue a task asking for ``name`` goes to: ``name`` if known, else "default".

        Outside queue mode every name is kept as given. An unknown name is logged as a
        warning, once per name.
        """
        if name is None:
            return "default"
        if not self._queues or name in self._queues:
            return name
        if name not in self._warned_queues:
            if len(self._warned_queues) >= _WARNED_QUEUES_SIZE:
                self._warned_queues.clear()
            self._warned_queues.add(name)
            logger.warning(
                "fastapi_taskflow: unknown queue %r; its tasks go to queue 'default' (known queues: %s)",
                name,
                ", ".join(sorted(self._queues)),
            )
        return "default"

    def dispatch(self, task: TrackedTask, queue: str, priority: int | None, eager: bool) -> bool:
        """Hand an accepted task to its queue, the priority worker or the loop; callable from any thread.

        Returns False when nothing here takes it: the caller then runs it after the
        response. Raises ``QueueFullError`` when its queue is full (nothing is kept).
        """
        queues = self._queues
        if queues:
            queues[queue].push(task.task_id, task, priority, front=eager)
            if not self._started and not self._warned_not_started:
                self._warned_not_started = True
                logger.warning(
                    "fastapi_taskflow: tasks are waiting in their queues until the task manager starts; "
                    "TaskAdmin(app, task_manager) or task_manager.init_app(app) starts it with the app"
                )
            return True
        if eager:
            return self._start_now(task)
        if priority is not None and self._started:
            self._priority_queue.push(task.task_id, task, priority)
            return True
        return False

    def enqueue_priority(self, task_id: str, priority: int | None, wrapped: Callable[[], Awaitable[Any]]) -> None:
        """Run ``wrapped()`` (a zero-argument coroutine function) through the priority worker.

        Kept for code written against fastapi_taskflow; ``add_task(..., priority=)`` does this itself.
        """
        check_priority(priority)
        self._priority_queue.push(task_id, wrapped, priority)

    def _start_now(self, task: TrackedTask) -> bool:
        """Start an eager task on the loop now (from a worker thread: on its next turn)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            loop = self._loop
            if loop is None or not self._started:
                return False
            loop.call_soon_threadsafe(self._start_accepted, task)
            return True
        self._start(task)
        return True

    def _start_accepted(self, task: TrackedTask) -> None:
        if self._started:
            self._start(task)
        else:  # shut down between add_task and this turn of the loop
            self._interrupt_waiting(task.task_id, task, "eager")

    def _start(self, task: TrackedTask) -> asyncio.Task[None]:
        running = asyncio.get_running_loop().create_task(self.runner.run(task), name=f"taskflow-{task.task_id}")
        self._dispatched.add(running)
        running.add_done_callback(self._dispatched.discard)
        return running

    def _start_job(self, job: object) -> asyncio.Task[Any]:
        """The starter of the queues: a task of ours, or a coroutine function of ``enqueue_priority``."""
        if isinstance(job, TrackedTask):
            return self._start(job)
        running: asyncio.Task[Any] = asyncio.get_running_loop().create_task(job())  # type: ignore[operator]
        self._dispatched.add(running)
        running.add_done_callback(self._dispatched.discard)
        return running

    def _all_queues(self) -> list[TaskQueue]:
        return [*self._queues.values(), self._priority_queue]

    def _interrupt_waiting(self, task_id: str, job: object, where: str) -> None:
        """Mark a task that never started interrupted, because the manager is shutting down."""
        error = f"the server shut down before it started (it was waiting in queue {where!r}); retry it to run it"
        try:
            moved = self.core.transition(task_id, "interrupted", error=error)
        except KeyError:
            return
        observers = self.runner.observers
        if moved and observers is not None and isinstance(job, TrackedTask):
            now = datetime.now(timezone.utc)
            observers.emit(
                LifecycleEvent(task_id, job.spec.name, "interrupted", now, 0, 0, None, error, None, job.tags)
            )

    # -- queues ---------------------------------------------------------------------

    def queue_stats(self) -> list[dict[str, Any]]:
        """Per named queue, by name: ``name, concurrency, max_size, pending, running, finished, rejected``.

        ``pending`` waits in the queue, ``running`` was started by it and has not ended,
        ``finished`` ended (or was cancelled while waiting) and ``rejected`` was refused
        because the queue was full, since this manager was created. ``[]`` outside queue
        mode. Costs O(queues), never O(tasks).
        """
        return [self._queues[name].stats() for name in sorted(self._queues)]

    def get_queue_config(self, name: str) -> QueueConfig:
        """A copy of the current limits of queue ``name``; ``KeyError`` when there is none."""
        queue = self._queues.get(name)
        if queue is None:
            raise KeyError(f"no queue named {name!r}")
        return QueueConfig(concurrency=queue.config.concurrency, max_size=queue.config.max_size)

    def update_queue_config(self, name: str, concurrency: int | None, max_size: int | None) -> dict[str, Any]:
        """Set queue ``name``'s limits now (None = unlimited); returns ``{name, concurrency, max_size, pending}``.

        Raising ``concurrency`` starts waiting tasks at once. Lowering it stops nothing
        that runs, but no task of the queue starts until fewer than the new limit run.
        Lowering ``max_size`` keeps what waits and rejects new tasks until fewer wait.
        ``KeyError`` for an unknown queue, ``ValueError`` for a limit that is not a
        whole number >= 1 or None. With a snapshot file the limits of every queue are
        saved there (in the background), and a later start applies them.
        """
        queue = self._queues.get(name)
        if queue is None:
            raise KeyError(f"no queue named {name!r}")
        queue.set_limits(concurrency, max_size)
        self._save_queue_configs()
        return {
            "name": name,
            "concurrency": queue.config.concurrency,
            "max_size": queue.config.max_size,
            "pending": queue.pending,
        }

    def _save_queue_configs(self) -> None:
        """Save the limits of every queue to the snapshot file, off the event loop; failures are logged."""
        if self.writer is None:
            return

        def save() -> None:
            # Read under the lock: whichever write runs last saves the latest limits.
            with self._queue_configs_lock:
                limits = {
                    name: {"concurrency": queue.config.concurrency, "max_size": queue.config.max_size}
                    for name, queue in self._queues.items()
                }
                try:
                    self.core.save_metadata(QUEUE_CONFIGS_KEY, orjson.dumps(limits).decode())
                except SnapshotError as exc:
                    logger.error(
                        "fastapi_taskflow: could not save the queue limits; a restart will not keep them: %s", exc
                    )

        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called outside the event loop: this thread may block
            save()
            return
        write = loop.run_in_executor(None, save)
        self._queue_config_writes.add(write)
        write.add_done_callback(self._queue_config_writes.discard)

    async def _apply_saved_queue_configs(self) -> None:
        """Apply the queue limits saved by ``update_queue_config`` (of queues this manager has)."""
        if self.writer is None or not self._queues:
            return
        try:
            saved = await asyncio.to_thread(self.core.load_metadata, QUEUE_CONFIGS_KEY)
        except SnapshotError as exc:
            logger.error("fastapi_taskflow: could not read the saved queue limits; using the configured ones: %s", exc)
            return
        try:
            limits = orjson.loads(saved) if saved is not None else {}
            items = list(limits.items())
        except (orjson.JSONDecodeError, AttributeError):
            logger.warning("fastapi_taskflow: ignoring unreadable saved queue limits %r", saved)
            return
        for name, limit in items:
            queue = self._queues.get(name)
            if queue is None:
                continue  # a queue this version of the app no longer has
            try:
                queue.set_limits(limit.get("concurrency"), limit.get("max_size"))
            except (ValueError, AttributeError):
                logger.warning("fastapi_taskflow: ignoring unreadable saved limits %r of queue %r", limit, name)

    def arguments_of(self, task: Mapping[str, Any]) -> Arguments | None:
        """The arguments to run a finished task again, or None when they are gone.

        Kept in memory for failed and interrupted tasks; read from the file for
        journaled ones. A task that was neither, once out of memory, cannot be re-run.
        """
        kept = self.runner.retained_arguments(str(task["task_id"]))
        if kept is not None:
            return kept
        payload = task.get("encrypted_payload")
        if isinstance(payload, bytes):
            return (), {}, payload
        args_json, kwargs_json = task.get("args_json"), task.get("kwargs_json")
        if isinstance(args_json, bytes) and isinstance(kwargs_json, bytes):
            return tuple(orjson.loads(args_json)), orjson.loads(kwargs_json), None
        return None

    def cancel(self, task_id: str) -> bool:
        """Cancel a pending task (it never runs) or a running one; False when neither."""
        cancelled = self.runner.cancel(task_id)
        if cancelled:
            for queue in self._all_queues():
                if queue.remove(task_id):
                    break
        return cancelled

    def set_retention_days(self, days: float | None) -> None:
        """Delete finished tasks older than ``days`` from memory and the file, every 6 hours.

        Only with a snapshot file (without one, ``max_history`` already bounds the history).
        """
        if days is not None and days <= 0:
            raise ValueError(f"retention_days must be positive, got {days!r}")
        if self.writer is not None:
            self.writer.set_retention_days(days)

    async def delete_history(self, end_before: datetime) -> tuple[int, int]:
        """Delete finished tasks that ended before ``end_before``: ``(from memory, from the file)``."""
        if self.shared is not None:
            await self.shared.delete_finished_before(end_before)
        if self.writer is not None:
            return await self.writer.delete_finished_before(end_before.timestamp())
        return self.core.delete_finished_before(int(end_before.timestamp() * 1_000_000))

    # -- reads ----------------------------------------------------------------

    def get_task(self, task_id: str) -> TaskRecord | None:
        """The record of ``task_id`` from memory or the snapshot file."""
        data = self.core.get(task_id)
        return None if data is None else TaskRecord.from_dict(data)

    # -- FastAPI integration --------------------------------------------------

    def get_tasks(self, background_tasks: BackgroundTasks) -> ManagedBackgroundTasks:
        """Dependency: a ``ManagedBackgroundTasks`` sharing the request's task list."""
        if isinstance(background_tasks, ManagedBackgroundTasks) and background_tasks.task_manager is self:
            return background_tasks
        return ManagedBackgroundTasks(self, background_tasks)

    @property
    def background_tasks(self) -> Callable[[BackgroundTasks], ManagedBackgroundTasks]:
        return self.get_tasks

    def install(self, app: FastAPI | None = None) -> None:
        """Make every ``BackgroundTasks`` parameter a ``ManagedBackgroundTasks`` of this manager.

        Process-wide: FastAPI builds the instance it injects from a module global,
        which this replaces with a subclass bound to this manager.
        """
        manager = self

        class InstalledBackgroundTasks(ManagedBackgroundTasks):
            def __init__(self, tasks: object = None) -> None:
                super().__init__(manager)

        fastapi_dependency_utils.BackgroundTasks = InstalledBackgroundTasks  # type: ignore[attr-defined,assignment]

    def init_app(self, app: FastAPI) -> None:
        """Run ``startup``/``shutdown`` around the app's lifespan, with or without ``lifespan=``."""
        if id(app) in self._apps:
            return
        self._apps.add(id(app))
        if self.writer is not None:
            app.add_middleware(DurableAcceptance, writer=self.writer)
        inner = app.router.lifespan_context

        @contextlib.asynccontextmanager
        async def lifespan(application: Any) -> AsyncIterator[Any]:
            await self.startup()
            try:
                async with inner(application) as state:
                    yield state
            finally:
                await self.shutdown()

        app.router.lifespan_context = lifespan

    # -- lifecycle ------------------------------------------------------------

    async def startup(self) -> None:
        """Start the observers and the snapshot writer, and run what a previous process left.

        Journaled tasks that a stopped or crashed process did not finish are claimed
        (so that two processes sharing the file never both take one) and run again:
        pending ones, and running ones of ``requeue_on_interrupt`` functions; other
        running ones are marked interrupted, as they may have had effects already.
        Queue limits saved by ``update_queue_config`` apply before any queue starts;
        the scheduler starts last (with ``@schedule`` functions or a snapshot file).
        """
        if self._started:
            return
        self._started = True
        self._loop = asyncio.get_running_loop()
        if self.runner.observers is not None:
            self.runner.observers.start()
        await self._apply_saved_queue_configs()
        for queue in self._all_queues():
            queue.start(self._start_job)
        if self.writer is not None:
            self.writer.start()
            if self.shared is not None:
                # Unfinished tasks of stopped instances (an earlier run of this one included)
                # are handed out by the backend, once their lease has run out.
                await self.shared.replicator.start()
            else:
                await self._resume_orphans()
        self.scheduler.start()

    async def _resume_orphans(self) -> None:
        try:
            orphans = await asyncio.to_thread(self.core.claim_orphans)
        except SnapshotError as exc:
            logger.error("fastapi_taskflow: cannot take over unfinished tasks of earlier runs now: %s", exc)
            return
        for record in orphans:
            self.run_stored(record)
        if orphans:
            logger.info("fastapi_taskflow: took over %d unfinished tasks of an earlier run", len(orphans))

    def run_stored(self, record: Mapping[str, Any]) -> None:
        """Run a journaled record from its stored arguments (an orphan taken over, a one-off run fired).

        Into its queue, never refused there: it was accepted when it was stored.
        """
        task_id, func_name = str(record["task_id"]), str(record["func_name"])
        spec = self.spec_named(func_name)
        if spec is None:
            logger.warning(
                "fastapi_taskflow: task %s of unregistered function %r marked interrupted", task_id, func_name
            )
            self.core.transition(task_id, "interrupted", error=f"function {func_name!r} is not registered here")
            return
        if record["status"] == "running":
            if not spec.config.requeue_on_interrupt:
                self.core.transition(
                    task_id, "interrupted", error="the process running it stopped (requeue_on_interrupt is off)"
                )
                return
            self.core.transition(task_id, "pending")
        arguments = self.arguments_of(record)
        if arguments is None:
            self.core.transition(task_id, "interrupted", error="its arguments were not stored")
            return
        args, kwargs, payload = arguments
        tags = record.get("tags")
        task = TrackedTask(self.runner, spec, task_id, args, kwargs, contextvars.Context())
        if isinstance(tags, dict) and tags:
            task.tags = dict(tags)
        task.payload = payload
        task.journaled = True
        task.idempotency_key = key if isinstance(key := record.get("idempotency_key"), str) else None
        if self._queues:
            priority = record.get("priority")
            queue = record.get("queue")
            self._queues[self.resolve_queue(queue if isinstance(queue, str) else None)].push(
                task_id, task, priority if isinstance(priority, int) else None, force=True
            )
        else:
            self._start(task)

    async def shutdown(self) -> None:
        """Stop what this manager started, write what is left, release the thread pool.

        Tasks still running are cancelled: ``requeue_on_interrupt`` ones go back to
        pending (journaled, the next start runs them), the others become interrupted.
        Of the tasks waiting in queues, journaled ones stay pending in the journal (a
        later start runs them) and the others become interrupted, saying so.
        """
        if not self._started:
            return
        # First, so that no schedule fires into queues that no longer start anything.
        await self.scheduler.stop()
        self._started = False
        queues = self._all_queues()
        for queue in queues:
            await queue.stop()
        dispatched = list(self._dispatched)
        for task in dispatched:
            task.cancel()
        await asyncio.gather(*dispatched, return_exceptions=True)
        for queue in queues:
            for task_id, job in queue.take_waiting(_not_journaled):
                self._interrupt_waiting(task_id, job, queue.name)
        self._loop = None
        await asyncio.gather(*self._queue_config_writes, return_exceptions=True)
        if self.writer is not None:
            await self.writer.stop()
        if self.shared is not None:
            await self.shared.replicator.stop()
        self.runner.shutdown()
        if self.runner.observers is not None:
            await asyncio.to_thread(self.runner.observers.stop)

    async def flush(self) -> int:
        """Write what is unwritten now; the number of records written (0 without a file).

        A failed write is logged and retried by the writer; nothing is dropped.
        """
        if self.writer is None:
            return 0
        return await self.writer.write_now() or 0


def _check_callable_without_arguments(func: Callable[..., Any]) -> None:
    """A schedule calls its function without arguments: refuse one that needs some, now."""
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):  # no signature to read (some builtins): let it try
        return
    try:
        signature.bind()
    except TypeError as exc:
        name = getattr(func, "__qualname__", repr(func))
        raise ValueError(f"a schedule calls its function without arguments, but {name} needs some ({exc})") from exc


def _not_journaled(job: object) -> bool:
    return not (isinstance(job, TrackedTask) and job.journaled)


def _make_queues(
    queues: Mapping[str, QueueConfig] | None, max_size: int | None, max_concurrent_tasks: int | None
) -> dict[str, TaskQueue]:
    """The named queues of queue mode (``{}`` outside it), "default" added when absent."""
    if queues is None and max_size is None:
        return {}
    configs = dict(queues or {})
    for name, config in configs.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"queue names must be non-empty strings, got {name!r}")
        if not isinstance(config, QueueConfig):
            raise TypeError(f"queue {name!r}: expected a QueueConfig, got {type(config).__name__}")
    if "default" not in configs:
        configs["default"] = QueueConfig(concurrency=max_concurrent_tasks, max_size=max_size)
    # Copies: limits changed at run time must not leak into a QueueConfig the caller shares.
    return {name: TaskQueue(name, config.concurrency, config.max_size) for name, config in configs.items()}


def _open_core(db_path: str | None, on_corrupt: str, *, max_history: int, idempotency_ttl: float | None) -> TaskStore:
    """Open the core store, moving a corrupt snapshot file aside when asked to."""

    def open_store() -> TaskStore:
        store: TaskStore = _core_module.TaskStore(db_path, max_history=max_history, idempotency_ttl=idempotency_ttl)
        return store

    try:
        return open_store()
    except CorruptSnapshotError:
        if on_corrupt != "move_aside" or db_path is None:
            raise
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(db_path + suffix):
            os.replace(db_path + suffix, f"{db_path}.corrupt-{stamp}{suffix}")
    logger.error(
        "fastapi_taskflow: %s is corrupt; moved it aside to %s.corrupt-%s and started with an empty history",
        db_path,
        db_path,
        stamp,
    )
    return open_store()


def _unserializable_argument(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """Name the first argument that JSON cannot hold, for the error message."""
    named = [(f"positional argument {i}", v) for i, v in enumerate(args)] + [
        (f"argument {k!r}", v) for k, v in kwargs.items()
    ]
    for what, value in named:
        try:
            orjson.dumps(value)
        except TypeError:
            return f"{what} ({type(value).__name__})"
    return "an argument"
