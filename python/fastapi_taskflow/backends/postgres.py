"""PostgreSQL shared backend: psycopg 3 with its async connection pool.

Atomicity comes from single statements wherever possible: ``INSERT ... ON CONFLICT``
for idempotency keys, locks and leases, ``DELETE ... RETURNING`` for one-off claims,
and one ``UPDATE`` over a ``FOR UPDATE SKIP LOCKED`` subquery for orphan claims.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Final

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
    import psycopg
    from psycopg_pool import AsyncConnectionPool
except ImportError as exc:  # the extra is not installed: the constructor says how to install it
    _MISSING: ImportError | None = exc
else:
    _MISSING = None

if TYPE_CHECKING:
    Connection = psycopg.AsyncConnection[tuple[Any, ...]]
    Pool = AsyncConnectionPool[Connection]

#: The server's clock in µs. ``statement_timestamp()`` is one value for the whole statement, so
#: the two halves of an expiry check in one statement agree.
_NOW_US: Final[str] = "(extract(epoch FROM statement_timestamp()) * 1000000)::bigint"

#: Serialises schema creation across instances (``CREATE ... IF NOT EXISTS`` is not safe when
#: two sessions run it at once: the loser fails on a unique index of the catalog).
_SCHEMA_LOCK: Final[int] = int.from_bytes(b"taskflow", "big")


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _schema(s: str) -> list[str]:
    """DDL for schema ``s`` (quoted). Identifiers compared or ordered use the "C" collation: byte order,
    the same order as the other backends and Python's."""
    return [
        f"CREATE SCHEMA IF NOT EXISTS {s}",
        f'CREATE TABLE IF NOT EXISTS {s}.taskflow_history (task_id TEXT COLLATE "C" PRIMARY KEY,'
        ' func_name TEXT COLLATE "C" NOT NULL, status TEXT COLLATE "C" NOT NULL, created_us BIGINT NOT NULL,'
        " start_us BIGINT, end_us BIGINT, retries_used INTEGER NOT NULL DEFAULT 0, error TEXT, stacktrace TEXT,"
        " logs_json TEXT NOT NULL DEFAULT '[]', logs_dropped INTEGER NOT NULL DEFAULT 0,"
        " tags_json TEXT NOT NULL DEFAULT '{}', source TEXT NOT NULL DEFAULT 'manual', priority BIGINT,"
        " executor TEXT, queue TEXT NOT NULL DEFAULT 'default', idempotency_key TEXT, args_json BYTEA,"
        ' kwargs_json BYTEA, encrypted_payload BYTEA, retry_of TEXT, owner TEXT COLLATE "C")',
        f"CREATE INDEX IF NOT EXISTS taskflow_history_created ON {s}.taskflow_history (created_us, task_id)",
        f"CREATE INDEX IF NOT EXISTS taskflow_history_status ON {s}.taskflow_history (status, created_us, task_id)",
        f"CREATE INDEX IF NOT EXISTS taskflow_history_name ON {s}.taskflow_history (func_name, created_us, task_id)",
        # Partial: only unfinished journal rows have an owner, and only finished rows an end.
        f"CREATE INDEX IF NOT EXISTS taskflow_history_owner ON {s}.taskflow_history (owner) WHERE owner IS NOT NULL",
        f"CREATE INDEX IF NOT EXISTS taskflow_history_end ON {s}.taskflow_history (end_us) WHERE end_us IS NOT NULL",
        f"CREATE TABLE IF NOT EXISTS {s}.taskflow_tags (digest BYTEA NOT NULL, created_us BIGINT NOT NULL,"
        ' task_id TEXT COLLATE "C" NOT NULL, PRIMARY KEY (digest, created_us, task_id))',
        f"CREATE INDEX IF NOT EXISTS taskflow_tags_task ON {s}.taskflow_tags (task_id)",
        f"CREATE TABLE IF NOT EXISTS {s}.taskflow_instances (instance_id TEXT PRIMARY KEY, expires_us BIGINT NOT NULL)",
        f"CREATE TABLE IF NOT EXISTS {s}.taskflow_idempotency (idem_key TEXT PRIMARY KEY, task_id TEXT NOT NULL,"
        " expires_us BIGINT)",
        f"CREATE INDEX IF NOT EXISTS taskflow_idempotency_expires ON {s}.taskflow_idempotency (expires_us)"
        " WHERE expires_us IS NOT NULL",
        f"CREATE TABLE IF NOT EXISTS {s}.taskflow_locks (lock_key TEXT PRIMARY KEY, expires_us BIGINT NOT NULL)",
        f'CREATE TABLE IF NOT EXISTS {s}.taskflow_scheduled (run_key TEXT COLLATE "C" PRIMARY KEY,'
        " func_name TEXT NOT NULL, fire_us BIGINT NOT NULL, created_us BIGINT NOT NULL, args_json BYTEA,"
        " kwargs_json BYTEA, encrypted_payload BYTEA, queue TEXT NOT NULL DEFAULT 'default', priority BIGINT,"
        " idempotency_key TEXT, tags_json TEXT NOT NULL DEFAULT '{}')",
        f"CREATE INDEX IF NOT EXISTS taskflow_scheduled_fire ON {s}.taskflow_scheduled (fire_us, run_key)",
        f"CREATE TABLE IF NOT EXISTS {s}.taskflow_metadata (meta_key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    ]


def _us(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1_000_000)


class PostgresBackend(SqlBackend):
    """Shared state in PostgreSQL tables ``taskflow_*`` of ``schema`` (created on ``open()``).

    ``url`` is a libpq URL or conninfo string; alternatively pass an open
    ``psycopg_pool.AsyncConnectionPool`` as ``pool``, which this backend uses but never
    closes. ``min_conn``/``max_conn`` size the pool made from ``url``. ``max_workers``
    is accepted for compatibility with fastapi-taskflow 0.12.1 (whose backend ran
    blocking psycopg2 calls on a thread pool) and is unused: psycopg 3 is async.
    """

    kind = "postgres"

    def __init__(
        self,
        url: str | None = None,
        *,
        pool: Pool | None = None,
        min_conn: int = 1,
        max_conn: int = 5,
        max_workers: int = 4,
        schema: str = "public",
    ) -> None:
        if _MISSING is not None:
            raise missing_driver("PostgresBackend", "postgres", _MISSING)
        if url is None:
            if pool is None:
                raise ValueError("PostgresBackend needs a url or a pool")
            # What errors name: the pool's conninfo, unless it is a function that makes one.
            url = pool.conninfo if isinstance(pool.conninfo, str) else f"pool {pool.name}"
        super().__init__(url, (psycopg.Error, OSError), schema)
        self._given_pool = pool
        self._pool: Pool | None = None
        self._min_conn = min_conn
        self._max_conn = max_conn
        self._schema = _quote(schema)
        s = self._schema
        self._history = f"{s}.taskflow_history"
        self._tags = f"{s}.taskflow_tags"
        self._instances = f"{s}.taskflow_instances"
        self._idempotency = f"{s}.taskflow_idempotency"
        self._locks = f"{s}.taskflow_locks"
        self._scheduled = f"{s}.taskflow_scheduled"
        self._metadata = f"{s}.taskflow_metadata"
        self._columns = ", ".join(TASK_COLUMNS)
        self._scheduled_columns = ", ".join(SCHEDULED_COLUMNS)

    @staticmethod
    def _key_below(alias: str, before: tuple[int, str]) -> tuple[str, list[object]]:
        # A row comparison is an index range condition in PostgreSQL.
        return f"({alias}.created_us, {alias}.task_id) < (%s, %s)", [before[0], before[1]]

    # Life cycle.

    async def open(self) -> None:
        if self._pool is not None:
            return
        with self._failing("connect"):
            if self._given_pool is not None:
                async with self._given_pool.connection() as conn:
                    await self._create_schema(conn)
                self._pool = self._given_pool
                return
            # One direct connection first: an unreachable server fails here at once, where a
            # pool would keep retrying in the background until its timeout.
            async with await psycopg.AsyncConnection.connect(self._url) as conn:
                await self._create_schema(conn)
            # A bounded wait for a connection: with the server down, a call fails in seconds
            # (and the caller serves what it has) instead of psycopg_pool's default 30 s.
            pool: Pool = AsyncConnectionPool(
                self._url, min_size=self._min_conn, max_size=self._max_conn, open=False, timeout=CONNECT_TIMEOUT
            )
            await pool.open()
            self._pool = pool

    async def _create_schema(self, conn: Connection) -> None:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            for statement in _schema(self._schema):
                await conn.execute(statement)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None and pool is not self._given_pool:
            await pool.close()

    @asynccontextmanager
    async def _connection(self, doing: str) -> AsyncIterator[Connection]:
        """A pooled connection; its transaction commits when the block ends (rolls back on error)."""
        if self._pool is None:
            raise self._not_open(doing)
        with self._failing(doing):
            async with self._pool.connection() as conn:
                yield conn

    async def _fetch(self, doing: str, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        async with self._connection(doing) as conn:
            cursor = await conn.execute(sql, params)
            return await cursor.fetchall()

    # Task history.

    async def upsert(self, rows: Sequence[TaskRow]) -> None:
        batch = latest_rows(rows)
        if not batch:
            return
        updates = ", ".join(f"{column} = EXCLUDED.{column}" for column in TASK_COLUMNS[1:])
        upsert = (
            f"INSERT INTO {self._history} ({self._columns}) VALUES ({', '.join(['%s'] * len(TASK_COLUMNS))})"
            f" ON CONFLICT (task_id) DO UPDATE SET {updates}"
        )
        tags = tag_rows(batch)
        # A pipeline sends the three statements together: one round trip for the batch.
        async with self._connection("write task rows") as conn, conn.pipeline(), conn.cursor() as cursor:
            await cursor.executemany(upsert, [row_values(row, TASK_COLUMNS) for row in batch])
            # Last write wins for the tags too: drop the rows' old tag entries, insert the new ones.
            await cursor.execute(f"DELETE FROM {self._tags} WHERE task_id = ANY(%s)", ([r["task_id"] for r in batch],))
            if tags:
                await cursor.executemany(
                    f"INSERT INTO {self._tags} (digest, created_us, task_id) VALUES (%s, %s, %s)", tags
                )

    async def count_by_status(self) -> dict[str, int]:
        counts = dict.fromkeys(STATUSES, 0)
        sql = f"SELECT status, count(*) FROM {self._history} GROUP BY status"
        counts.update(await self._fetch("count task rows", sql))
        return counts

    def _delete_rows(self, where: str) -> str:
        """Delete the history rows matching ``where`` and their tags in one statement; selects the count."""
        return (
            f"WITH gone AS (DELETE FROM {self._history} WHERE {where} RETURNING task_id),"
            f" untagged AS (DELETE FROM {self._tags} WHERE task_id IN (SELECT task_id FROM gone))"
            " SELECT count(*) FROM gone"
        )

    async def delete(self, task_ids: Sequence[str]) -> int:
        if not task_ids:
            return 0
        sql = self._delete_rows(f"task_id = ANY(%s) AND status IN {FINISHED_SQL}")
        rows = await self._fetch("delete task rows", sql, (sorted(task_ids),))
        return int(rows[0][0])

    async def delete_finished_before(self, end_before_us: int) -> int:
        # Batches, each its own transaction. SKIP LOCKED: rows being written now (or deleted by
        # another instance's retention) are left for the next pass instead of waited for, and never
        # locked in end_us order against writers that lock in task_id order (a deadlock).
        sql = self._delete_rows(
            f"task_id IN (SELECT task_id FROM {self._history} WHERE end_us < %s AND status IN {FINISHED_SQL}"
            " LIMIT %s FOR UPDATE SKIP LOCKED)"
        )
        deleted = 0
        while True:
            rows = await self._fetch("delete old task rows", sql, (end_before_us, DELETE_BATCH))
            deleted += int(rows[0][0])
            if rows[0][0] < DELETE_BATCH:
                break
        async with self._connection("delete expired keys, locks and leases") as conn:
            for table in (self._idempotency, self._locks, self._instances):
                await conn.execute(f"DELETE FROM {table} WHERE expires_us <= {_NOW_US}")
        return deleted

    # Idempotency keys.

    async def claim_idempotency_key(self, key: str, task_id: str, ttl: float | None) -> str:
        if ttl is not None:
            check_seconds("ttl", ttl)
        # One statement: the conflicting row is locked and rewritten (to itself unless expired), so
        # RETURNING always names the holder, even when another session inserted it a moment ago.
        expired = f"held.expires_us <= {_NOW_US}"
        sql = (
            f"INSERT INTO {self._idempotency} AS held (idem_key, task_id, expires_us) VALUES (%s, %s, {_NOW_US} + %s)"
            f" ON CONFLICT (idem_key) DO UPDATE SET"
            f" task_id = CASE WHEN {expired} THEN EXCLUDED.task_id ELSE held.task_id END,"
            f" expires_us = CASE WHEN {expired} THEN EXCLUDED.expires_us ELSE held.expires_us END"
            " RETURNING task_id"
        )
        rows = await self._fetch("claim an idempotency key", sql, (key, task_id, _us(ttl)))
        return str(rows[0][0])

    async def release_idempotency_key(self, key: str, task_id: str) -> None:
        async with self._connection("release an idempotency key") as conn:
            await conn.execute(f"DELETE FROM {self._idempotency} WHERE idem_key = %s AND task_id = %s", (key, task_id))

    # Instances and orphaned journal rows.

    async def heartbeat(self, instance_id: str, lease: float) -> None:
        check_seconds("lease", lease)
        sql = (
            f"INSERT INTO {self._instances} (instance_id, expires_us) VALUES (%s, {_NOW_US} + %s)"
            " ON CONFLICT (instance_id) DO UPDATE SET expires_us = EXCLUDED.expires_us"
        )
        async with self._connection("renew a lease") as conn:
            await conn.execute(sql, (instance_id, _us(lease)))

    async def retire(self, instance_id: str) -> None:
        async with self._connection("end a lease") as conn:
            await conn.execute(f"DELETE FROM {self._instances} WHERE instance_id = %s", (instance_id,))

    async def claim_orphans(self, instance_id: str, limit: int = 1000) -> list[TaskRow]:
        check_limit(limit)
        orphaned = (
            "owner IS NOT NULL AND owner <> %s AND NOT EXISTS (SELECT 1 FROM"
            f" {self._instances} AS i WHERE i.instance_id = owner AND i.expires_us > {_NOW_US})"
        )
        # SKIP LOCKED: concurrent claimants each lock a disjoint set of rows instead of waiting
        # for one another.
        lock = f"SELECT task_id FROM {self._history} WHERE {orphaned} LIMIT %s FOR UPDATE SKIP LOCKED"
        # Then, the rows being ours, the same test again in a statement of its own (a fresh
        # snapshot): an instance whose lease and claim both committed after the first statement
        # began would otherwise look dead to it, and its rows be taken a second time.
        take = (
            f"UPDATE {self._history} SET owner = %s WHERE task_id = ANY(%s) AND {orphaned}"
            f" RETURNING {', '.join(TASK_COLUMNS)}"
        )
        async with self._connection("claim orphaned task rows") as conn:
            cursor = await conn.execute(lock, (instance_id, limit))
            locked = [task_id for (task_id,) in await cursor.fetchall()]
            if not locked:
                return []
            cursor = await conn.execute(take, (instance_id, locked, instance_id))
            rows = await cursor.fetchall()
        return oldest_first([as_task_row(row) for row in rows])

    # Schedules.

    async def acquire_lock(self, key: str, ttl: float) -> bool:
        check_seconds("ttl", ttl)
        sql = (
            f"INSERT INTO {self._locks} AS held (lock_key, expires_us) VALUES (%s, {_NOW_US} + %s)"
            f" ON CONFLICT (lock_key) DO UPDATE SET expires_us = EXCLUDED.expires_us"
            f" WHERE held.expires_us <= {_NOW_US} RETURNING lock_key"
        )
        return bool(await self._fetch("acquire a lock", sql, (key, _us(ttl))))

    async def save_scheduled(self, row: ScheduledRow) -> None:
        updates = ", ".join(f"{column} = EXCLUDED.{column}" for column in SCHEDULED_COLUMNS[1:])
        sql = (
            f"INSERT INTO {self._scheduled} ({self._scheduled_columns})"
            f" VALUES ({', '.join(['%s'] * len(SCHEDULED_COLUMNS))})"
            f" ON CONFLICT (run_key) DO UPDATE SET {updates}"
        )
        async with self._connection("save a scheduled run") as conn:
            await conn.execute(sql, row_values(row, SCHEDULED_COLUMNS))

    async def load_due(self, before_us: int, limit: int = 1000) -> list[ScheduledRow]:
        check_limit(limit)
        sql = (
            f"SELECT {self._scheduled_columns} FROM {self._scheduled} WHERE fire_us <= %s"
            " ORDER BY fire_us, run_key LIMIT %s"
        )
        return [as_scheduled_row(row) for row in await self._fetch("read due runs", sql, (before_us, limit))]

    async def delete_scheduled(self, run_key: str) -> bool:
        async with self._connection("delete a scheduled run") as conn:
            cursor = await conn.execute(f"DELETE FROM {self._scheduled} WHERE run_key = %s", (run_key,))
            return cursor.rowcount > 0

    async def claim_scheduled(self, run_key: str) -> ScheduledRow | None:
        # DELETE ... RETURNING: the one statement that finds the row is also the one that removes it.
        sql = f"DELETE FROM {self._scheduled} WHERE run_key = %s RETURNING {self._scheduled_columns}"
        rows = await self._fetch("claim a scheduled run", sql, (run_key,))
        return as_scheduled_row(rows[0]) if rows else None

    # Metadata.

    async def save_metadata(self, key: str, value: str) -> None:
        sql = (
            f"INSERT INTO {self._metadata} (meta_key, value) VALUES (%s, %s)"
            " ON CONFLICT (meta_key) DO UPDATE SET value = EXCLUDED.value"
        )
        async with self._connection("save metadata") as conn:
            await conn.execute(sql, (key, value))

    async def load_metadata(self, key: str) -> str | None:
        rows = await self._fetch("read metadata", f"SELECT value FROM {self._metadata} WHERE meta_key = %s", (key,))
        return str(rows[0][0]) if rows else None
