"""MySQL / MariaDB shared backend on aiomysql (a connection pool).

Needs ``FOR UPDATE SKIP LOCKED``: MariaDB >= 10.6 or MySQL >= 8.0. Every session runs
in READ COMMITTED (no gap locks, so concurrent upserts and claims do not block on
rows they do not touch) with strict SQL mode and UTC.

Strings that are compared, ordered or used as keys are ``VARBINARY``: byte equality
and byte order (the order of the other backends), where MySQL's ``_bin`` collations
would ignore trailing spaces. Limits that follow: task ids, instance ids and owners up
to 255 bytes, function names up to 512, keys (idempotency, lock, run, metadata) up to 767.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final

from ._mysql_url import pool_arguments
from ._rows import (
    as_scheduled_row,
    as_task_row,
    check_limit,
    check_seconds,
    latest_rows,
    missing_driver,
    oldest_first,
    row_values,
)
from ._sql import DELETE_BATCH, FINISHED_SQL, SqlBackend, tag_rows
from .base import CONNECT_TIMEOUT, SCHEDULED_COLUMNS, STATUSES, TASK_COLUMNS, ScheduledRow, TaskRow

try:
    import aiomysql  # type: ignore[import-untyped]
    import pymysql  # type: ignore[import-untyped]

    from ._aiomysql import Cursor
except ImportError as exc:  # the extra is not installed: the constructor says how to install it
    _MISSING: ImportError | None = exc
else:
    _MISSING = None

#: The server's clock in µs (sessions run in UTC, so NOW() converts back without DST ambiguity).
_NOW_US: Final[str] = "CAST(UNIX_TIMESTAMP(NOW(6)) * 1000000 AS SIGNED)"

#: Run on every new connection (aiomysql drains the second statement's result before the next query).
_SESSION: Final[str] = (
    "SET SESSION time_zone = '+00:00', SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION',"
    " SESSION sql_notes = 0; SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED"
)

_TABLE_OPTIONS: Final[str] = "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"

#: Indexes are part of each CREATE TABLE, so that a table never exists without them.
_SCHEMA: Final[tuple[str, ...]] = (
    "CREATE TABLE IF NOT EXISTS taskflow_history (task_id VARBINARY(255) NOT NULL PRIMARY KEY,"
    " func_name VARBINARY(512) NOT NULL, status VARBINARY(16) NOT NULL, created_us BIGINT NOT NULL,"
    " start_us BIGINT NULL, end_us BIGINT NULL, retries_used INT NOT NULL, error LONGTEXT NULL,"
    " stacktrace LONGTEXT NULL, logs_json LONGTEXT NOT NULL, logs_dropped INT NOT NULL, tags_json LONGTEXT NOT NULL,"
    " source TEXT NOT NULL, priority BIGINT NULL, executor TEXT NULL, queue TEXT NOT NULL,"
    " idempotency_key TEXT NULL, args_json LONGBLOB NULL, kwargs_json LONGBLOB NULL, encrypted_payload LONGBLOB NULL,"
    " retry_of TEXT NULL, owner VARBINARY(255) NULL,"
    " KEY taskflow_history_created (created_us, task_id), KEY taskflow_history_status (status, created_us, task_id),"
    " KEY taskflow_history_name (func_name, created_us, task_id), KEY taskflow_history_owner (owner),"
    f" KEY taskflow_history_end (end_us)) {_TABLE_OPTIONS}",
    "CREATE TABLE IF NOT EXISTS taskflow_tags (digest BINARY(32) NOT NULL, created_us BIGINT NOT NULL,"
    " task_id VARBINARY(255) NOT NULL, PRIMARY KEY (digest, created_us, task_id),"
    f" KEY taskflow_tags_task (task_id)) {_TABLE_OPTIONS}",
    "CREATE TABLE IF NOT EXISTS taskflow_instances (instance_id VARBINARY(255) NOT NULL PRIMARY KEY,"
    f" expires_us BIGINT NOT NULL) {_TABLE_OPTIONS}",
    "CREATE TABLE IF NOT EXISTS taskflow_idempotency (idem_key VARBINARY(767) NOT NULL PRIMARY KEY,"
    " task_id VARBINARY(255) NOT NULL, expires_us BIGINT NULL,"
    f" KEY taskflow_idempotency_expires (expires_us)) {_TABLE_OPTIONS}",
    "CREATE TABLE IF NOT EXISTS taskflow_locks (lock_key VARBINARY(767) NOT NULL PRIMARY KEY,"
    f" expires_us BIGINT NOT NULL) {_TABLE_OPTIONS}",
    "CREATE TABLE IF NOT EXISTS taskflow_scheduled (run_key VARBINARY(767) NOT NULL PRIMARY KEY,"
    " func_name TEXT NOT NULL, fire_us BIGINT NOT NULL, created_us BIGINT NOT NULL, args_json LONGBLOB NULL,"
    " kwargs_json LONGBLOB NULL, encrypted_payload LONGBLOB NULL, queue TEXT NOT NULL, priority BIGINT NULL,"
    " idempotency_key TEXT NULL, tags_json LONGTEXT NOT NULL,"
    f" KEY taskflow_scheduled_fire (fire_us, run_key)) {_TABLE_OPTIONS}",
    "CREATE TABLE IF NOT EXISTS taskflow_metadata (meta_key VARBINARY(767) NOT NULL PRIMARY KEY,"
    f" value LONGTEXT NOT NULL) {_TABLE_OPTIONS}",
)

_COLUMNS: Final[str] = ", ".join(TASK_COLUMNS)
_SCHEDULED: Final[str] = ", ".join(SCHEDULED_COLUMNS)
#: Positions of the VARBINARY columns that hold text, decoded on the way out.
_TEXT_KEYS: Final[tuple[int, ...]] = tuple(TASK_COLUMNS.index(c) for c in ("task_id", "func_name", "status", "owner"))
_RUN_KEY: Final[int] = SCHEDULED_COLUMNS.index("run_key")

# VALUES(column) in ON DUPLICATE KEY UPDATE is what MariaDB and MySQL both accept (MySQL 8.0.20+
# deprecates it in favour of a row alias MariaDB lacks).
_UPSERT: Final[str] = (
    f"INSERT INTO taskflow_history ({_COLUMNS}) VALUES ({', '.join(['%s'] * len(TASK_COLUMNS))})"
    f" ON DUPLICATE KEY UPDATE {', '.join(f'{c} = VALUES({c})' for c in TASK_COLUMNS[1:])}"
)
_SAVE_SCHEDULED: Final[str] = (
    f"INSERT INTO taskflow_scheduled ({_SCHEDULED}) VALUES ({', '.join(['%s'] * len(SCHEDULED_COLUMNS))})"
    f" ON DUPLICATE KEY UPDATE {', '.join(f'{c} = VALUES({c})' for c in SCHEDULED_COLUMNS[1:])}"
)


def _decoded(row: Sequence[Any], positions: Sequence[int]) -> list[Any]:
    values = list(row)
    for position in positions:
        if isinstance(values[position], bytes):
            values[position] = values[position].decode()
    return values


def _in(values: Sequence[object]) -> str:
    """An ``IN`` list of placeholders for ``values`` (PyMySQL >= 1.2 no longer expands a list parameter)."""
    return "(" + ", ".join(["%s"] * len(values)) + ")"


def _us(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1_000_000)


class MySQLBackend(SqlBackend):
    """Shared state in MySQL/MariaDB tables ``taskflow_*`` of the URL's database (created on ``open()``).

    ``url`` is ``mysql://user:pass@host:port/db?opts``: the options go to the driver
    (``connect_timeout``, ``unix_socket``, ``minsize``, ``pool_recycle`` ...),
    ``ssl-mode`` other than ``DISABLED`` turns TLS on (``VERIFY_CA`` and
    ``VERIFY_IDENTITY`` check the certificate), other hyphenated options raise
    ``ValueError``. ``max_workers`` is the most connections the pool opens.
    """

    kind = "mysql"

    def __init__(self, url: str, *, max_workers: int = 4) -> None:
        if _MISSING is not None:
            raise missing_driver("MySQLBackend", "mysql", _MISSING)
        super().__init__(url, (pymysql.err.MySQLError, OSError))
        self._arguments: dict[str, Any] = {"minsize": 1, "pool_recycle": 3600, **pool_arguments(url)}
        self._max_workers = max_workers
        self._history = "taskflow_history"
        self._tags = "taskflow_tags"
        self._pool: Any = None

    @staticmethod
    def _key_below(alias: str, before: tuple[int, str]) -> tuple[str, list[object]]:
        # MariaDB does not turn a row comparison into an index range; the expanded form it does.
        condition = f"({alias}.created_us < %s OR ({alias}.created_us = %s AND {alias}.task_id < %s))"
        return condition, [before[0], before[0], before[1]]

    def _task_row(self, row: Sequence[Any]) -> TaskRow:
        return as_task_row(_decoded(row, _TEXT_KEYS))

    # Life cycle.

    async def open(self) -> None:
        if self._pool is not None:
            return
        with self._failing("connect"):
            pool = await aiomysql.create_pool(
                maxsize=self._max_workers,
                charset="utf8mb4",
                autocommit=True,
                init_command=_SESSION,
                cursorclass=Cursor,
                # A bounded connect unless the URL sets one: a call fails in seconds when the server is down.
                **{"connect_timeout": CONNECT_TIMEOUT, **self._arguments},
            )
            try:
                async with pool.acquire() as conn, conn.cursor() as cursor:
                    # CREATE TABLE IF NOT EXISTS is safe concurrently: the table name's metadata lock
                    # serialises the sessions, and the later ones find the table made.
                    for statement in _SCHEMA:
                        await cursor.execute(statement)
            except BaseException:
                pool.close()
                await pool.wait_closed()
                raise
        self._pool = pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
            await pool.wait_closed()

    @asynccontextmanager
    async def _cursor(self, doing: str, *, transaction: bool = False) -> AsyncIterator[Any]:
        """A pooled connection's cursor; with ``transaction``, the block is one transaction."""
        if self._pool is None:
            raise self._not_open(doing)
        with self._failing(doing):
            async with self._pool.acquire() as conn:
                try:
                    async with conn.cursor() as cursor:
                        if transaction:
                            await conn.begin()
                        yield cursor
                        if transaction:
                            await conn.commit()
                except BaseException:
                    # A failed or cancelled exchange may leave the connection inside a transaction or
                    # half way through a reply: closed, the pool drops it and the server rolls back.
                    conn.close()
                    raise

    async def _fetch(self, doing: str, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        async with self._cursor(doing) as cursor:
            await cursor.execute(sql, params)
            return list(await cursor.fetchall())

    async def _execute(self, doing: str, sql: str, params: Sequence[object] = ()) -> int:
        """Run one statement; the number of rows it changed."""
        async with self._cursor(doing) as cursor:
            return int(await cursor.execute(sql, params))

    # Task history.

    async def upsert(self, rows: Sequence[TaskRow]) -> None:
        batch = latest_rows(rows)
        if not batch:
            return
        tags = tag_rows(batch)
        async with self._cursor("write task rows", transaction=True) as cursor:
            # aiomysql sends an executemany of INSERT ... VALUES as one multi-row statement.
            await cursor.executemany(_UPSERT, [row_values(row, TASK_COLUMNS) for row in batch])
            # Last write wins for the tags too: drop the rows' old tag entries, insert the new ones.
            ids = [row["task_id"] for row in batch]
            await cursor.execute(f"DELETE FROM taskflow_tags WHERE task_id IN {_in(ids)}", ids)
            if tags:
                await cursor.executemany(
                    "INSERT INTO taskflow_tags (digest, created_us, task_id) VALUES (%s, %s, %s)", tags
                )

    async def count_by_status(self) -> dict[str, int]:
        counts = dict.fromkeys(STATUSES, 0)
        rows = await self._fetch("count task rows", "SELECT status, COUNT(*) FROM taskflow_history GROUP BY status")
        counts.update((status.decode(), int(count)) for status, count in rows)
        return counts

    async def _delete_selected(self, doing: str, selection: str, params: Sequence[object]) -> int:
        """Delete, with their tags, the history rows that ``selection`` (a locking WHERE ...) selects."""
        async with self._cursor(doing, transaction=True) as cursor:
            await cursor.execute(f"SELECT task_id FROM taskflow_history WHERE {selection}", params)
            ids = [task_id for (task_id,) in await cursor.fetchall()]
            if ids:
                await cursor.execute(f"DELETE FROM taskflow_tags WHERE task_id IN {_in(ids)}", ids)
                await cursor.execute(f"DELETE FROM taskflow_history WHERE task_id IN {_in(ids)}", ids)
            return len(ids)

    async def delete(self, task_ids: Sequence[str]) -> int:
        if not task_ids:
            return 0
        ids = sorted(task_ids)  # locked in primary key order, as upserts lock them: no deadlock
        selection = f"task_id IN {_in(ids)} AND status IN {FINISHED_SQL} FOR UPDATE"
        return await self._delete_selected("delete task rows", selection, ids)

    async def delete_finished_before(self, end_before_us: int) -> int:
        # Batches, each its own transaction: one huge DELETE would hold its locks until the end.
        # SKIP LOCKED: rows being written now are left for the next pass, rather than locked in
        # end_us order against writers that lock in task_id order (a deadlock).
        selection = f"end_us < %s AND status IN {FINISHED_SQL} LIMIT %s FOR UPDATE SKIP LOCKED"
        deleted = 0
        while True:
            count = await self._delete_selected("delete old task rows", selection, (end_before_us, DELETE_BATCH))
            deleted += count
            if count < DELETE_BATCH:
                break
        async with self._cursor("delete expired keys, locks and leases") as cursor:
            for table in ("taskflow_idempotency", "taskflow_locks", "taskflow_instances"):
                await cursor.execute(f"DELETE FROM {table} WHERE expires_us <= {_NOW_US}")
        return deleted

    # Idempotency keys.

    async def claim_idempotency_key(self, key: str, task_id: str, ttl: float | None) -> str:
        if ttl is not None:
            check_seconds("ttl", ttl)
        # The upsert takes the key when it is free or expired, and otherwise leaves it as it is but
        # still locks its row, so that the SELECT after it names the holder nobody can change meanwhile.
        # expires_us is assigned last: the task_id assignment must see the old expiry.
        expired = f"expires_us <= {_NOW_US}"
        async with self._cursor("claim an idempotency key", transaction=True) as cursor:
            await cursor.execute(
                f"INSERT INTO taskflow_idempotency (idem_key, task_id, expires_us) VALUES (%s, %s, {_NOW_US} + %s)"
                f" ON DUPLICATE KEY UPDATE task_id = IF({expired}, VALUES(task_id), task_id),"
                f" expires_us = IF({expired}, VALUES(expires_us), expires_us)",
                (key, task_id, _us(ttl)),
            )
            await cursor.execute("SELECT task_id FROM taskflow_idempotency WHERE idem_key = %s", (key,))
            (holder,) = await cursor.fetchone()
        return str(holder.decode())

    async def release_idempotency_key(self, key: str, task_id: str) -> None:
        sql = "DELETE FROM taskflow_idempotency WHERE idem_key = %s AND task_id = %s"
        await self._execute("release an idempotency key", sql, (key, task_id))

    # Instances and orphaned journal rows.

    async def heartbeat(self, instance_id: str, lease: float) -> None:
        check_seconds("lease", lease)
        sql = (
            f"INSERT INTO taskflow_instances (instance_id, expires_us) VALUES (%s, {_NOW_US} + %s)"
            " ON DUPLICATE KEY UPDATE expires_us = VALUES(expires_us)"
        )
        await self._execute("renew a lease", sql, (instance_id, _us(lease)))

    async def retire(self, instance_id: str) -> None:
        await self._execute("end a lease", "DELETE FROM taskflow_instances WHERE instance_id = %s", (instance_id,))

    async def claim_orphans(self, instance_id: str, limit: int = 1000) -> list[TaskRow]:
        check_limit(limit)
        async with self._cursor("claim orphaned task rows", transaction=True) as cursor:
            # The live instances first, by a plain read: inside the locking SELECT the lease rows
            # would be locked too, and SKIP LOCKED would then skip a live lease being renewed,
            # making its owner look dead.
            await cursor.execute(f"SELECT instance_id FROM taskflow_instances WHERE expires_us > {_NOW_US}")
            live = [instance_id, *(owner for (owner,) in await cursor.fetchall())]
            # SKIP LOCKED: concurrent claimants each lock a disjoint set of rows instead of waiting
            # for one another; no row is taken twice. No ORDER BY: sorting would lock every candidate.
            await cursor.execute(
                f"SELECT {_COLUMNS} FROM taskflow_history WHERE owner IS NOT NULL AND owner NOT IN {_in(live)}"
                " LIMIT %s FOR UPDATE SKIP LOCKED",
                [*live, limit],
            )
            rows = [self._task_row(row) for row in await cursor.fetchall()]
            if rows:
                # Read the leases again now that the rows are ours: an instance that started and
                # claimed some of them after the first read is alive, and keeps what it took.
                await cursor.execute(f"SELECT instance_id FROM taskflow_instances WHERE expires_us > {_NOW_US}")
                alive = {instance_id, *(owner for (owner,) in await cursor.fetchall())}
                rows = [row for row in rows if row["owner"] not in alive]
            if rows:
                ids = [row["task_id"] for row in rows]
                await cursor.execute(
                    f"UPDATE taskflow_history SET owner = %s WHERE task_id IN {_in(ids)}", [instance_id, *ids]
                )
        for row in rows:
            row["owner"] = instance_id
        return oldest_first(rows)

    # Schedules.

    async def acquire_lock(self, key: str, ttl: float) -> bool:
        check_seconds("ttl", ttl)
        # Affected rows: 1 inserted, 2 an expired lock taken over, 0 a live lock left alone.
        sql = (
            f"INSERT INTO taskflow_locks (lock_key, expires_us) VALUES (%s, {_NOW_US} + %s)"
            f" ON DUPLICATE KEY UPDATE expires_us = IF(expires_us <= {_NOW_US}, VALUES(expires_us), expires_us)"
        )
        return await self._execute("acquire a lock", sql, (key, _us(ttl))) > 0

    async def save_scheduled(self, row: ScheduledRow) -> None:
        await self._execute("save a scheduled run", _SAVE_SCHEDULED, row_values(row, SCHEDULED_COLUMNS))

    async def load_due(self, before_us: int, limit: int = 1000) -> list[ScheduledRow]:
        check_limit(limit)
        sql = f"SELECT {_SCHEDULED} FROM taskflow_scheduled WHERE fire_us <= %s ORDER BY fire_us, run_key LIMIT %s"
        rows = await self._fetch("read due runs", sql, (before_us, limit))
        return [as_scheduled_row(_decoded(row, (_RUN_KEY,))) for row in rows]

    async def delete_scheduled(self, run_key: str) -> bool:
        sql = "DELETE FROM taskflow_scheduled WHERE run_key = %s"
        return await self._execute("delete a scheduled run", sql, (run_key,)) > 0

    async def claim_scheduled(self, run_key: str) -> ScheduledRow | None:
        # The locking read makes a second claimant wait, then find the row gone: one winner.
        async with self._cursor("claim a scheduled run", transaction=True) as cursor:
            await cursor.execute(
                f"SELECT {_SCHEDULED} FROM taskflow_scheduled WHERE run_key = %s FOR UPDATE", (run_key,)
            )
            row = await cursor.fetchone()
            if row is None:
                return None
            await cursor.execute("DELETE FROM taskflow_scheduled WHERE run_key = %s", (run_key,))
        return as_scheduled_row(_decoded(row, (_RUN_KEY,)))

    # Metadata.

    async def save_metadata(self, key: str, value: str) -> None:
        sql = (
            "INSERT INTO taskflow_metadata (meta_key, value) VALUES (%s, %s)"
            " ON DUPLICATE KEY UPDATE value = VALUES(value)"
        )
        await self._execute("save metadata", sql, (key, value))

    async def load_metadata(self, key: str) -> str | None:
        rows = await self._fetch("read metadata", "SELECT value FROM taskflow_metadata WHERE meta_key = %s", (key,))
        return str(rows[0][0]) if rows else None
