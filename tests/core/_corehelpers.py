"""Helpers shared by the core-level tests (a uniquely named module: tests/core is not a package)."""

from __future__ import annotations

import importlib
import json
import sqlite3
import time
import warnings
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from types import ModuleType
from typing import Any

#: ``make_store(db_path=None, **options)``, the fixture of conftest.py.
StoreFactory = Callable[..., Any]

MODULES = {"rust": "fastapi_taskflow._core", "python": "fastapi_taskflow._pycore"}

RECORD_KEYS = [
    "task_id",
    "func_name",
    "status",
    "created_at",
    "start_time",
    "end_time",
    "duration",
    "retries_used",
    "error",
    "logs",
    "stacktrace",
    "tags",
    "source",
    "priority",
    "executor",
    "queue",
]
#: get_json(): the 16 keys, then the count of log lines dropped by the per-record bound.
DETAIL_KEYS = [*RECORD_KEYS, "logs_dropped"]
GET_KEYS = [*RECORD_KEYS, "idempotency_key", "args_json", "kwargs_json", "logs_dropped"]
EVENT_TASK_KEYS = [k for k in RECORD_KEYS if k != "logs"]
COUNT_KEYS = ["total", "pending", "running", "success", "failed", "interrupted", "cancelled", "rejected"]
AGG_KEYS = [*COUNT_KEYS, "success_rate", "avg_duration_seconds", "p50_seconds", "p95_seconds", "p99_seconds"]
STATUSES = ("pending", "running", "success", "failed", "interrupted", "cancelled", "rejected")
FINISHED = STATUSES[2:]

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def load_core(name: str) -> ModuleType | None:
    """The core module, or None when it cannot be imported."""
    # Importing either core runs the package's __init__, which warns when it falls back
    # to the Python core; that is the selection logic's business, not these tests'.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            return importlib.import_module(MODULES[name])
        except ImportError:
            return None


def listed_form(detail: dict[str, Any]) -> dict[str, Any]:
    """A get_json() object as list pages carry it (without ``logs_dropped``)."""
    return {k: v for k, v in detail.items() if k != "logs_dropped"}


def loads(data: bytes) -> Any:
    """Parsed JSON; objects keep their key order (dicts preserve insertion order)."""
    assert isinstance(data, bytes)
    return json.loads(data)


def iso_to_us(text: str) -> int:
    return (datetime.fromisoformat(text) - _EPOCH) // timedelta(microseconds=1)


def created_us(store: Any, task_id: str) -> int:
    record = store.get(task_id)
    assert record is not None
    return iso_to_us(record["created_at"])


def wait_for_next_microsecond() -> None:
    """Make the next record's created_us strictly larger than every earlier one (orders ties deterministically)."""
    now = time.time_ns() // 1000
    while time.time_ns() // 1000 <= now:
        pass


def drive(store: Any, task_id: str, status: str) -> None:
    """Bring a fresh pending record to ``status`` along an allowed path."""
    path = {
        "pending": [],
        "running": ["running"],
        "success": ["running", "success"],
        "failed": ["running", "failed"],
        "interrupted": ["running", "interrupted"],
        "cancelled": ["cancelled"],
        "rejected": ["rejected"],
    }[status]
    for step in path:
        assert store.transition(task_id, step) is True


def all_pages(store: Any, limit: int, **filters: Any) -> list[dict[str, Any]]:
    """Every record the store lists, following cursors until the last page."""
    out: list[dict[str, Any]] = []
    cursor = None
    for _ in range(10_000):
        body, cursor = store.page_json(limit=limit, cursor=cursor, **filters)
        page = loads(body)
        assert len(page) <= limit
        if cursor is not None:
            assert len(page) == limit
            assert cursor == f"{iso_to_us(page[-1]['created_at'])}:{page[-1]['task_id']}"
        out.extend(page)
        if cursor is None:
            return out
    raise AssertionError("paging did not terminate")


def sort_key(record: dict[str, Any]) -> tuple[int, str]:
    return iso_to_us(record["created_at"]), record["task_id"]


def insert_rows(path: str, rows: list[dict[str, Any]]) -> None:
    """Write history rows straight into a snapshot file (its schema must already exist)."""
    defaults: dict[str, Any] = {
        "start_us": None,
        "end_us": None,
        "retries_used": 0,
        "error": None,
        "stacktrace": None,
        "logs_json": "[]",
        "tags_json": "{}",
        "source": "manual",
        "priority": None,
        "executor": None,
        "queue": "default",
        "idempotency_key": None,
        "args_json": None,
        "kwargs_json": None,
    }
    conn = sqlite3.connect(path)
    try:
        with conn:
            for row in rows:
                full = {**defaults, **row}
                cols = ", ".join(full)
                marks = ", ".join("?" for _ in full)
                conn.execute(f"INSERT INTO task_history ({cols}) VALUES ({marks})", tuple(full.values()))
    finally:
        conn.close()
