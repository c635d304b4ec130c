"""SQL that PostgreSQL and MySQL/MariaDB share word for word (both drivers use ``%s`` placeholders).

Tags live in a table of ``(digest, created_us, task_id)`` whose primary key is also the
page order, so a tag filter walks one index range newest first, exactly like an
unfiltered page walks ``(created_us, task_id)``.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, Final

from ._rows import as_task_row, check_page, tag_digest, tags_of
from .base import FINISHED, TASK_COLUMNS, SharedBackend, TaskRow

#: ``IN`` list of the finished statuses.
FINISHED_SQL: Final[str] = "(" + ", ".join(f"'{status}'" for status in FINISHED) + ")"

#: Rows a retention pass deletes per transaction: long transactions would hold their locks.
DELETE_BATCH: Final[int] = 1_000

#: ``(alias, before) -> (condition, params)``: rows of ``alias`` whose ``(created_us, task_id)`` is below ``before``.
#: The dialects differ: PostgreSQL walks an index range for a row comparison, MariaDB only for the expanded form.
KeyBelow = Callable[[str, tuple[int, str]], tuple[str, list[object]]]

_COLUMNS: Final[str] = ", ".join(TASK_COLUMNS)
_H_COLUMNS: Final[str] = ", ".join(f"h.{column}" for column in TASK_COLUMNS)


def tag_rows(rows: Sequence[TaskRow]) -> list[tuple[bytes, int, str]]:
    """The tag table rows ``(digest, created_us, task_id)`` of ``rows``."""
    return [
        (tag_digest(key, value), row["created_us"], row["task_id"])
        for row in rows
        for key, value in tags_of(row["tags_json"])
    ]


def page_query(
    history: str,
    tags: str,
    key_below: KeyBelow,
    *,
    status: str | None,
    func_name: str | None,
    tag: tuple[str, str] | None,
    limit: int,
    before: tuple[int, str] | None,
) -> tuple[str, list[object]]:
    """The SELECT of ``SharedBackend.page`` and its parameters.

    With a tag the walk goes down the tag table's primary key (same order, same cursor),
    joined to history; otherwise down history's ``(created_us, task_id)`` index, or the
    ``(status | func_name, created_us, task_id)`` one when filtered.
    """
    where: list[str] = []
    params: list[object] = []
    if tag is not None:
        sql = f"SELECT {_H_COLUMNS} FROM {tags} AS t JOIN {history} AS h ON h.task_id = t.task_id"
        walk = "t"
        where.append("t.digest = %s")
        params.append(tag_digest(*tag))
    else:
        sql = f"SELECT {_H_COLUMNS} FROM {history} AS h"
        walk = "h"
    if before is not None:
        condition, key_params = key_below(walk, before)
        where.append(condition)
        params += key_params
    if status is not None:
        where.append("h.status = %s")
        params.append(status)
    if func_name is not None:
        where.append("h.func_name = %s")
        params.append(func_name)
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY {walk}.created_us DESC, {walk}.task_id DESC LIMIT %s"
    params.append(limit)
    return sql, params


class SqlBackend(SharedBackend):
    """The reads of task rows that the SQL backends run word for word.

    A dialect names its two task tables (``_history``, ``_tags``), says how a key condition
    is written (``_key_below``), turns a driver row into a ``TaskRow`` (``_task_row``) and
    runs a query (``_fetch``).
    """

    _history: str
    _tags: str

    @staticmethod
    @abstractmethod
    def _key_below(alias: str, before: tuple[int, str]) -> tuple[str, list[object]]: ...

    @abstractmethod
    async def _fetch(self, doing: str, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]: ...

    def _task_row(self, row: Sequence[Any]) -> TaskRow:
        return as_task_row(row)

    async def ping(self) -> None:
        await self._fetch("ping the server", "SELECT 1")

    async def get(self, task_id: str) -> TaskRow | None:
        sql = f"SELECT {_COLUMNS} FROM {self._history} WHERE task_id = %s"
        rows = await self._fetch("read a task row", sql, (task_id,))
        return self._task_row(rows[0]) if rows else None

    def _page_query(
        self,
        *,
        status: str | None = None,
        func_name: str | None = None,
        tag: tuple[str, str] | None = None,
        limit: int = 100,
        before: tuple[int, str] | None = None,
    ) -> tuple[str, list[object]]:
        return page_query(
            self._history,
            self._tags,
            self._key_below,
            status=status,
            func_name=func_name,
            tag=tag,
            limit=limit,
            before=before,
        )

    async def page(
        self,
        *,
        status: str | None = None,
        func_name: str | None = None,
        tag: tuple[str, str] | None = None,
        limit: int = 100,
        before: tuple[int, str] | None = None,
    ) -> list[TaskRow]:
        check_page(status, limit)
        sql, params = self._page_query(status=status, func_name=func_name, tag=tag, limit=limit, before=before)
        return [self._task_row(row) for row in await self._fetch("read a page of task rows", sql, params)]
