"""Helpers shared by the core-level tests (a uniquely named module: tests/core is not a package)."""

from __future__ import annotations

import importlib
import json
import sqlite3
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from types import ModuleType
from typing import Any

import pytest

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
#: get_json(): the 16 keys, then the count of log lines dropped by the per-record bound and the id retried.
DETAIL_KEYS = [*RECORD_KEYS, "logs_dropped", "retry_of"]
GET_KEYS = [
    *RECORD_KEYS,
    "idempotency_key",
    "args_json",
    "kwargs_json",
    "encrypted_payload",
    "logs_dropped",
    "retry_of",
]
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


def require_cores(*names: str) -> list[Any]:
    """The named core modules; fails the test when one cannot be imported."""
    modules = [load_core(name) for name in names]
    for name, module in zip(names, modules, strict=True):
        if module is None:
            pytest.fail(f"the {name} core cannot be imported; build it with `maturin develop`")
    return modules


_RUN_SQL = """
import json, sqlite3, sys
conn = sqlite3.connect(sys.argv[1])
with conn:
    rows = [conn.execute(sql, params).fetchall() for sql, params in json.loads(sys.argv[2])]
conn.close()
print(json.dumps(rows[-1]))
"""


def run_sql(path: str, *statements: str | tuple[str, tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Run ``statements`` on a snapshot file in one transaction; return the rows of the last (JSON values only).

    In another process: this one may hold the file open through the Rust core, whose SQLite is a copy of
    its own. Two copies of SQLite in one process do not see each other's POSIX locks, so closing a
    connection here could checkpoint and delete the WAL that the Rust core is still writing to.
    """
    batch = [(s, ()) if isinstance(s, str) else s for s in statements]
    done = subprocess.run(
        [sys.executable, "-c", _RUN_SQL, path, json.dumps(batch)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return [tuple(row) for row in json.loads(done.stdout)]


def query(path: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` read straight from a snapshot file (see ``run_sql``)."""
    return run_sql(path, (sql, params))


def stored(path: str) -> dict[str, tuple[str, str | None]]:
    """``task_id -> (status, owner)`` of every row in a snapshot file."""
    return {
        task_id: (status, owner)
        for task_id, status, owner in query(path, "SELECT task_id, status, owner FROM task_history")
    }


def listed_form(detail: dict[str, Any]) -> dict[str, Any]:
    """A get_json() object as list pages carry it (the 16 keys)."""
    return {k: v for k, v in detail.items() if k in RECORD_KEYS}


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
    """Write history rows straight into a snapshot file (its schema must already exist, and no store of the
    Rust core may have it open: see ``run_sql``)."""
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
