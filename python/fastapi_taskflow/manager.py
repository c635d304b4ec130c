"""``TaskManager``: the registry, the core store, the runner and their lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import fastapi.dependencies.utils as fastapi_dependency_utils
import orjson
from fastapi import BackgroundTasks, FastAPI

from ._selected import core as _core_module
from .crypto import ArgumentCipher
from .errors import SnapshotError
from .execution import TaskRunner
from .loggers import FileLogger, LoggerChain, TaskObserver
from .models import ExecutorName, QueueConfig, TaskConfig, TaskRecord
from .observing import ObserverThread
from .registry import TaskFunc, TaskRegistry, TaskSpec, validate_executor
from .wrapper import ManagedBackgroundTasks

if TYPE_CHECKING:
    from ._core import TaskStore

logger = logging.getLogger("fastapi_taskflow")

F = TypeVar("F", bound=Callable[..., Any])

#: Seconds the snapshot writer waits after a completion, so that completions close in time share a write.
FLUSH_BATCH_WINDOW = 0.05

#: Unregistered functions resolved so far; bounded because callers may pass fresh lambdas.
_UNREGISTERED_CACHE_SIZE = 1024


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
    ) -> None:
        unavailable = {
            "snapshot_backend": snapshot_backend is not None,
            "requeue_pending": requeue_pending,
            "retention_days": retention_days is not None,
            "max_process_workers": max_process_workers is not None,
            "queues": queues is not None,
            "max_size": max_size is not None,
            "instance_url": instance_url is not None,
        }
        for argument, is_set in unavailable.items():
            if is_set:
                raise _not_yet(f"TaskManager({argument}=...)")
        if snapshot_interval <= 0:
            raise ValueError(f"snapshot_interval must be positive, got {snapshot_interval!r}")
        self.snapshot_interval = snapshot_interval
        self.retry_replaces_original = retry_replaces_original
        self.registry = TaskRegistry()
        self.core: TaskStore = _core_module.TaskStore(snapshot_db, max_history=max_history)
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
            on_finished=self._flush_soon if snapshot_db is not None else None,
        )
        self._unregistered: dict[TaskFunc, TaskSpec] = {}
        self._flush_task: asyncio.Task[None] | None = None
        self._flush_wanted: asyncio.Event | None = None
        self._started = False
        self._apps: set[int] = set()

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
    ) -> Callable[[F], F]:
        """Register a function as a task; the function is returned unchanged."""
        if requeue_on_interrupt:
            raise _not_yet("task(requeue_on_interrupt=True)")
        if eager or priority is not None or queue is not None:
            raise _not_yet("task(eager=, priority=, queue=)")
        if retries < 0 or delay < 0 or backoff < 0:
            raise ValueError("retries, delay and backoff must not be negative")
        config = TaskConfig(
            retries=retries,
            delay=delay,
            backoff=backoff,
            persist=persist,
            name=name,
            executor=executor,
        )

        def register(func: F) -> F:
            validate_executor(func, executor)
            self.registry.register(func, config)
            return func

        return register

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

    def serialize_arguments(
        self, spec: TaskSpec, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[bytes | None, bytes | None]:
        """JSON of a persistent task's arguments (``(None, None)`` when they are encrypted).

        A persistent task must be restorable from disk, so arguments that JSON cannot
        hold are refused here, before anything is stored.
        """
        if self.runner.cipher is not None:
            # Encrypted arguments are never stored in clear; the ciphertext stays with the task.
            return None, None
        try:
            return orjson.dumps(args), orjson.dumps(kwargs)
        except TypeError as exc:
            culprit = _unserializable_argument(args, kwargs)
            raise TypeError(
                f"{culprit} of persistent task {spec.name!r} cannot be stored as JSON ({exc}); "
                "pass JSON-compatible values or drop persist=True"
            ) from exc

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
        """Start the observers and the snapshot writer (when a snapshot file is set)."""
        if self._started:
            return
        self._started = True
        if self.runner.observers is not None:
            self.runner.observers.start()
        if self.core.db_path is not None:
            self._flush_wanted = asyncio.Event()
            self._flush_task = asyncio.create_task(self._write_snapshots(self._flush_wanted), name="taskflow-snapshot")

    async def shutdown(self) -> None:
        """Stop the snapshot loop, write what finished, release the thread pool."""
        if not self._started:
            return
        self._started = False
        if self._flush_task is not None:
            self._flush_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flush_task
            self._flush_task = None
            self._flush_wanted = None
        await self.flush()
        self.runner.shutdown()
        if self.runner.observers is not None:
            await asyncio.to_thread(self.runner.observers.stop)

    async def flush(self) -> int:
        """Write finished tasks changed since the last flush; 0 without a snapshot file.

        A failed write is logged and retried on the next flush; nothing is dropped.
        """
        if self.core.db_path is None:
            return 0
        try:
            return await asyncio.to_thread(self.core.flush)
        except SnapshotError as exc:
            logger.error("fastapi_taskflow: snapshot failed, will retry: %s", exc)
            return 0

    def _flush_soon(self) -> None:
        """Called as each task finishes: wake the snapshot writer (cheap when already awake)."""
        if self._flush_wanted is not None:
            self._flush_wanted.set()

    async def _write_snapshots(self, wanted: asyncio.Event) -> None:
        # Finished tasks reach the file within about FLUSH_BATCH_WINDOW of finishing; every
        # completion in that window shares one transaction. snapshot_interval bounds the
        # wait when nothing wakes the writer.
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wanted.wait(), self.snapshot_interval)
            await asyncio.sleep(FLUSH_BATCH_WINDOW)
            wanted.clear()
            await self.flush()


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
