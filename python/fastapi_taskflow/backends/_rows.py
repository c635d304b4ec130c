"""Row handling every backend shares: batch de-duplication, tag keys, argument checks, driver hints."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import cast

from .base import SCHEDULED_COLUMNS, STATUSES, TASK_COLUMNS, ScheduledRow, TaskRow


def latest_rows(rows: Sequence[TaskRow]) -> list[TaskRow]:
    """The last row of each task id, sorted by task id.

    One row per id lets a batch be one statement; a fixed order makes concurrent batches
    lock rows in the same order, so that overlapping batches wait for each other instead
    of deadlocking.
    """
    return sorted({row["task_id"]: row for row in rows}.values(), key=lambda row: row["task_id"])


def tags_of(tags_json: str) -> list[tuple[str, str]]:
    """The ``(key, value)`` pairs of a row's tags that ``page(tag=...)`` can find.

    As the local journal reads them: only string values of a JSON object; anything
    unreadable has no tags (a bad row must not fail its batch).
    """
    try:
        tags = json.loads(tags_json)
    except ValueError:
        return []
    if not isinstance(tags, dict):
        return []
    return [(key, value) for key, value in tags.items() if isinstance(value, str)]


def tag_digest(key: str, value: str) -> bytes:
    """A fixed-size index key for one tag.

    Tag keys and values have no length limit, but index entries do (MySQL ~3 KB, a
    PostgreSQL B-tree ~2.7 KB); a SHA-256 of the pair fits any index and collides never
    in practice. JSON makes the pair unambiguous and ASCII (even for lone surrogates).
    """
    return hashlib.sha256(json.dumps([key, value]).encode()).digest()


def check_limit(limit: int) -> None:
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")


def check_page(status: str | None, limit: int) -> None:
    if status is not None and status not in STATUSES:
        raise ValueError(f"unknown status {status!r}; expected one of {', '.join(STATUSES)}")
    check_limit(limit)


def check_seconds(what: str, seconds: float) -> None:
    """A ttl or lease must be positive and finite (as the local store requires of its locks)."""
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ValueError(f"{what} must be a positive number of seconds, got {seconds!r}")


def missing_driver(what: str, extra: str, cause: ImportError) -> ImportError:
    """The error for a backend whose driver is not installed, naming the extra that installs it."""
    error = ImportError(
        f"{what} needs its driver ({cause}); install it with: pip install 'fastapi-taskflow-rs[{extra}]'"
    )
    error.__cause__ = cause
    return error


def row_values(row: Mapping[str, object], columns: Sequence[str]) -> tuple[object, ...]:
    return tuple(row[column] for column in columns)


def as_task_row(values: Sequence[object]) -> TaskRow:
    """A row read in ``TASK_COLUMNS`` order."""
    return cast("TaskRow", dict(zip(TASK_COLUMNS, values, strict=True)))


def as_scheduled_row(values: Sequence[object]) -> ScheduledRow:
    """A row read in ``SCHEDULED_COLUMNS`` order."""
    return cast("ScheduledRow", dict(zip(SCHEDULED_COLUMNS, values, strict=True)))


def oldest_first(rows: list[TaskRow]) -> list[TaskRow]:
    rows.sort(key=lambda row: (row["created_us"], row["task_id"]))
    return rows
