"""The only places where the comparison workload touches more than the shared public API.

The workload (``workload.py``) runs unchanged against ``fastapi-taskflow`` 0.12.1 and against
this package. Two things cannot be said through the shared API, so each package gets a small
adapter here, and ``compare.md`` lists them:

1. **Keeping N finished tasks in memory.** 0.12.1 keeps every record forever; ours bounds the
   finished records in memory by ``max_history`` (an argument 0.12.1 does not have), so ours is
   given ``max_history=N`` where a scenario needs N finished tasks in memory.
2. **Filling the store with N finished tasks quickly.** Running 1M no-op tasks through
   ``add_task`` takes minutes on 0.12.1, so the read scenarios fill the store below the public
   API: 0.12.1 through ``TaskStore.restore(TaskRecord)`` (what its snapshot loader does), ours
   through ``core.create`` / ``core.transition`` (what the task runner does). Each record is a
   finished task of one of four names, 1 in 10 failed, each holding an idempotency key.
"""

from __future__ import annotations

import os
import uuid
from datetime import datetime, timedelta, timezone
from importlib import metadata
from typing import Any

#: Task names of the filled records: metrics that are kept per name should see more than one.
NAMES = ("send_email", "resize_image", "sync_crm", "noop")
#: One record in FAILED_EVERY is a failure.
FAILED_EVERY = 10


def package() -> str:
    """``upstream`` (fastapi-taskflow 0.12.1), ``rust`` or ``python`` (our two cores)."""
    try:
        metadata.version("fastapi-taskflow-rs")
    except metadata.PackageNotFoundError:
        return "upstream"
    from fastapi_taskflow._selected import CORE_NAME

    return CORE_NAME


def describe() -> dict[str, str]:
    import fastapi

    import fastapi_taskflow

    name = package()
    dist = "fastapi-taskflow" if name == "upstream" else "fastapi-taskflow-rs"
    return {
        "variant": name,
        "distribution": f"{dist} {metadata.version(dist)}",
        "fastapi": fastapi.__version__,
        "module": os.path.dirname(fastapi_taskflow.__file__),
    }


def manager_kwargs(keep_in_memory: int | None) -> dict[str, Any]:
    """Extra ``TaskManager`` arguments so that ``keep_in_memory`` finished tasks stay in memory."""
    if keep_in_memory is None or package() == "upstream":
        return {}
    return {"max_history": max(keep_in_memory, 1)}


def fill_finished(manager: Any, n: int, *, key_prefix: str = "hist") -> None:
    """Add ``n`` finished tasks (see the module doc) to ``manager``'s store."""
    if package() == "upstream":
        _fill_upstream(manager, n, key_prefix)
    else:
        _fill_ours(manager, n, key_prefix)


def _fill_ours(manager: Any, n: int, key_prefix: str) -> None:
    core = manager.core
    create, transition = core.create, core.transition
    for i in range(n):
        task_id, _ = create(NAMES[i % len(NAMES)], executor="async", idempotency_key=f"{key_prefix}-{i}")
        transition(task_id, "running")
        if i % FAILED_EVERY == FAILED_EVERY - 1:
            transition(task_id, "failed", error="boom")
        else:
            transition(task_id, "success")


def _fill_upstream(manager: Any, n: int, key_prefix: str) -> None:
    from fastapi_taskflow import TaskRecord, TaskStatus

    restore = manager.store.restore
    step = timedelta(microseconds=150)
    for i in range(n):
        created = datetime.now(timezone.utc)
        failed = i % FAILED_EVERY == FAILED_EVERY - 1
        restore(
            TaskRecord(
                task_id=str(uuid.uuid4()),
                func_name=NAMES[i % len(NAMES)],
                status=TaskStatus.FAILED if failed else TaskStatus.SUCCESS,
                created_at=created,
                start_time=created,
                end_time=created + step,
                error="boom" if failed else None,
                idempotency_key=f"{key_prefix}-{i}",
                executor="async",
            )
        )
