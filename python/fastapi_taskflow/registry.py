"""Registered task functions and the per-function facts the hot path needs."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .models import ExecutorName, TaskConfig

TaskFunc = Callable[..., Any]


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """What ``add_task`` needs to know about a function, resolved once."""

    func: TaskFunc
    config: TaskConfig
    name: str
    executor: ExecutorName
    is_async: bool
    #: Its tasks need only a record and a place in the request's list, unless the call or
    #: the manager asks for more: not run in a process (arguments checked per call), no
    #: default priority, not eager, not persistent. Like ``name``, read from the config once.
    plain: bool
    #: The queue its tasks ask for when the call names none.
    queue: str

    @classmethod
    def resolve(cls, func: TaskFunc, config: TaskConfig) -> TaskSpec:
        target = _unwrap_partial(func)
        is_async = inspect.iscoroutinefunction(target) or (
            not inspect.isroutine(target) and inspect.iscoroutinefunction(type(target).__call__)
        )
        executor: ExecutorName = config.executor or ("async" if is_async else "thread")
        name = config.name or getattr(target, "__name__", None) or type(target).__name__
        plain = executor != "process" and config.priority is None and not config.eager and not config.persist
        return cls(
            func=func,
            config=config,
            name=name,
            executor=executor,
            is_async=is_async,
            plain=plain,
            queue=config.queue or "default",
        )


def _unwrap_partial(func: TaskFunc) -> TaskFunc:
    while isinstance(func, functools.partial):
        func = func.func
    return func


def validate_executor(func: TaskFunc, executor: ExecutorName | None) -> None:
    """Refuse an explicit executor that cannot run ``func``, at decoration time.

    "process" takes plain and coroutine functions alike; without cloudpickle it refuses
    nested functions and lambdas, which a worker process cannot import by name.
    """
    if executor is None:
        return
    is_async = inspect.iscoroutinefunction(func)
    if executor == "async" and not is_async:
        raise ValueError(f"executor='async' needs a coroutine function; {func.__qualname__} is a plain function")
    if executor == "thread" and is_async:
        raise ValueError(f"executor='thread' needs a plain function; {func.__qualname__} is a coroutine function")
    if executor == "process":
        from .process_executor import check_process_function

        check_process_function(func)
        return
    if executor not in ("async", "thread"):
        raise ValueError(f"unknown executor {executor!r}; expected 'async', 'thread' or 'process'")


class TaskRegistry:
    """Functions registered with ``@task_manager.task``, by object and by name."""

    def __init__(self) -> None:
        self._by_func: dict[TaskFunc, TaskSpec] = {}
        self._by_name: dict[str, TaskSpec] = {}
        #: The spec of a registered function, else None; the dict's own lookup, as ``add_task`` asks per task.
        self.spec: Callable[[TaskFunc], TaskSpec | None] = self._by_func.get

    def register(self, func: TaskFunc, config: TaskConfig) -> TaskSpec:
        spec = TaskSpec.resolve(func, config)
        self._by_func[func] = spec
        self._by_name[spec.name] = spec
        return spec

    def get_config(self, func: TaskFunc) -> TaskConfig | None:
        spec = self._by_func.get(func)
        return spec.config if spec else None

    def get_by_name(self, name: str) -> tuple[TaskFunc, TaskConfig] | None:
        spec = self._by_name.get(name)
        return (spec.func, spec.config) if spec else None

    def spec_named(self, name: str) -> TaskSpec | None:
        return self._by_name.get(name)

    def is_registered(self, func: TaskFunc) -> bool:
        return func in self._by_func

    def specs(self) -> list[TaskSpec]:
        return list(self._by_name.values())
