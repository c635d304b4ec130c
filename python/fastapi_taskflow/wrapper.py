"""``ManagedBackgroundTasks``: FastAPI's ``BackgroundTasks`` with tracked, retried tasks."""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from starlette.background import BackgroundTask, BackgroundTasks

from .process_executor import validate_process_args
from .queues import QueueFullError, check_priority
from .registry import TaskSpec

if TYPE_CHECKING:
    from .execution import TaskRunner
    from .manager import TaskManager


class TrackedTask(BackgroundTask):
    """One accepted task in the response's background list; calling it runs every attempt.

    It holds the live arguments (or, with encryption, only their ciphertext) and the
    context captured when the task was accepted. ``journaled`` tasks are in the
    snapshot file's journal, so a restart after a crash runs them again.
    """

    # Most tasks have none of these: the class holds their values and a task that has
    # one sets it after construction, so that add_task's common task sets fewer attributes.
    payload: bytes | None = None
    journaled: bool = False
    idempotency_key: str | None = None
    is_async = True
    _tags: dict[str, str] | None = None

    def __init__(
        self,
        runner: TaskRunner,
        spec: TaskSpec,
        task_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        context: contextvars.Context,
    ) -> None:
        # BackgroundTask.__init__ is skipped on purpose: it inspects the function on
        # every call, and our spec already knows how the function runs.
        self.func = spec.func
        self.args = args  # type: ignore[assignment]
        self.kwargs = kwargs  # type: ignore[assignment]
        self.task_id = task_id
        self.spec = spec
        self.context = context
        self._runner = runner

    @property
    def tags(self) -> dict[str, str]:
        """The tags given to ``add_task``; for a task without any, an empty dict made when first read.

        Not made at ``add_task``: every object a task holds from then until it runs is one
        more for the garbage collector to count and promote while the request goes on.
        """
        tags = self._tags
        if tags is None:
            tags = self._tags = {}
        return tags

    @tags.setter
    def tags(self, tags: dict[str, str]) -> None:
        self._tags = tags

    async def __call__(self) -> None:
        await self._runner.run(self)


class ManagedBackgroundTasks(BackgroundTasks):
    """Background tasks whose ``add_task`` returns a task id and tracks the task.

    Given FastAPI's own instance, it shares that instance's task list, so the tasks
    run after the response like any background task.
    """

    def __init__(self, task_manager: TaskManager, background_tasks: BackgroundTasks | None = None) -> None:
        super().__init__()
        if background_tasks is not None:
            self.tasks = background_tasks.tasks
        self.task_manager = task_manager

    def add_task(  # type: ignore[override]
        self,
        func: Callable[..., Any],
        *args: Any,
        idempotency_key: str | None = None,
        tags: dict[str, str] | None = None,
        eager: bool | None = None,
        priority: int | None = None,
        queue: str | None = None,
        **kwargs: Any,
    ) -> str:
        """Accept ``func(*args, **kwargs)`` and return its task id.

        With an ``idempotency_key`` held by a pending, running or succeeded task,
        nothing new is accepted and that task's id is returned. ``priority``, ``eager``
        and ``queue`` default to the function's registered settings. In queue mode a
        full queue raises ``QueueFullError``, after the task's record became rejected.
        """
        manager = self.task_manager
        # Most calls pass none of the five options: their task may need nothing but its record.
        if idempotency_key is None and tags is None and eager is None and priority is None and queue is None:
            task = manager.accept_if_plain(func, args, kwargs)
            if task is not None:
                self.tasks.append(task)
                return task.task_id
        spec = manager.spec_for(func)
        config = spec.config
        if spec.executor == "process":
            validate_process_args(spec, args, kwargs)
        if priority is None:
            priority = config.priority
        else:
            check_priority(priority)
        if eager is None:
            eager = config.eager
        queue_name = manager.resolve_queue(queue or config.queue)
        task_id, task = manager.accept(
            spec, args, kwargs, tags=tags, priority=priority, queue=queue_name, idempotency_key=idempotency_key
        )
        if task is not None:
            if eager or priority is not None or manager.queue_mode:
                try:
                    dispatched = manager.dispatch(task, queue_name, priority, eager)
                except QueueFullError as exc:
                    # Nothing half-accepted: the record says rejected and frees its idempotency key.
                    manager.core.transition(task_id, "rejected", error=str(exc))
                    raise
                if not dispatched:
                    self.tasks.append(task)
            else:
                self.tasks.append(task)
        return task_id
