"""Rows for the backend tests."""

from __future__ import annotations

from typing import Any

from fastapi_taskflow.backends import ScheduledRow, TaskRow


def task_row(task_id: str, **fields: Any) -> TaskRow:
    """A pending row of ``job`` with no optional field set; ``fields`` override."""
    row: TaskRow = {
        "task_id": task_id,
        "func_name": "job",
        "status": "pending",
        "created_us": 1_700_000_000_000_000,
        "start_us": None,
        "end_us": None,
        "retries_used": 0,
        "error": None,
        "stacktrace": None,
        "logs_json": "[]",
        "logs_dropped": 0,
        "tags_json": "{}",
        "source": "manual",
        "priority": None,
        "executor": None,
        "queue": "default",
        "idempotency_key": None,
        "args_json": None,
        "kwargs_json": None,
        "encrypted_payload": None,
        "retry_of": None,
        "owner": None,
    }
    row.update(fields)  # type: ignore[typeddict-item]
    return row


def finished(task_id: str, status: str = "success", *, end_us: int, **fields: Any) -> TaskRow:
    return task_row(task_id, status=status, start_us=end_us - 10, end_us=end_us, **fields)


def scheduled_row(run_key: str, fire_us: int, **fields: Any) -> ScheduledRow:
    row: ScheduledRow = {
        "run_key": run_key,
        "func_name": "job",
        "fire_us": fire_us,
        "created_us": 1_700_000_000_000_000,
        "args_json": None,
        "kwargs_json": None,
        "encrypted_payload": None,
        "queue": "default",
        "priority": None,
        "idempotency_key": None,
        "tags_json": "{}",
    }
    row.update(fields)  # type: ignore[typeddict-item]
    return row


def ids(rows: list[TaskRow]) -> list[str]:
    return [row["task_id"] for row in rows]
