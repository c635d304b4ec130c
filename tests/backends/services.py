"""The real servers the backend tests run against, and one isolated namespace per test.

Used by the fixtures and by ``worker.py`` (in other processes), so it imports nothing
from the test package. A namespace is a key prefix in Redis, a schema in PostgreSQL
and a database in MySQL; it is dropped after its test.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from fastapi_taskflow.backends import MySQLBackend, PostgresBackend, RedisBackend, SharedBackend

KINDS: Final = ("redis", "postgres", "mysql")
ENV_VARS: Final = {"redis": "TASKFLOW_REDIS_URL", "postgres": "TASKFLOW_POSTGRES_URL", "mysql": "TASKFLOW_MYSQL_URL"}
DEFAULT_URLS: Final = {
    "redis": "redis://127.0.0.1:6379/0",
    "postgres": "postgresql://root@127.0.0.1:5432/test",
    "mysql": "mysql://root@127.0.0.1:3306/test",
}
#: Set to 1 (as CI does) to make an unreachable server fail the tests instead of skipping them.
REQUIRE_VAR: Final = "TASKFLOW_REQUIRE_SERVICES"


def server_url(kind: str) -> str:
    return os.environ.get(ENV_VARS[kind]) or DEFAULT_URLS[kind]


def _mysql_url(url: str, database: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + database))


async def unreachable(kind: str) -> str | None:
    """Why the server of ``kind`` cannot be used, or None when it answers."""
    url = server_url(kind)
    try:
        if kind == "redis":
            import redis.asyncio as aioredis

            client = aioredis.from_url(url, socket_connect_timeout=3)
            try:
                await client.ping()
            finally:
                await client.aclose()
        elif kind == "postgres":
            import psycopg

            async with await psycopg.AsyncConnection.connect(url, connect_timeout=3) as conn:
                await conn.execute("SELECT 1")
        else:
            await _mysql_admin(url, "SELECT 1")
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


async def _mysql_admin(url: str, sql: str) -> None:
    import aiomysql

    from fastapi_taskflow.backends._mysql_url import pool_arguments

    arguments: dict[str, Any] = pool_arguments(url)
    for pool_only in ("minsize", "pool_recycle"):
        arguments.pop(pool_only, None)
    # No notes: DROP DATABASE IF EXISTS of a missing database would become a Python warning.
    conn = await aiomysql.connect(connect_timeout=3, autocommit=True, init_command="SET sql_notes = 0", **arguments)
    try:
        async with conn.cursor() as cursor:
            await cursor.execute(sql)
    finally:
        conn.close()


@dataclass(frozen=True)
class Namespace:
    """One test's share of a server."""

    kind: str
    url: str
    name: str

    @classmethod
    def fresh(cls, kind: str) -> Namespace:
        return cls(kind, server_url(kind), "tf_" + uuid.uuid4().hex[:12])

    def backend(self, **options: Any) -> SharedBackend:
        if self.kind == "redis":
            return RedisBackend(self.url, prefix=f"taskflow-test:{self.name}", **options)
        if self.kind == "postgres":
            return PostgresBackend(self.url, schema=self.name, **options)
        return MySQLBackend(_mysql_url(self.url, self.name), **options)

    async def create(self) -> None:
        """Make what the backend cannot make itself (a MySQL database; schemas and keys need nothing)."""
        if self.kind == "mysql":
            await _mysql_admin(self.url, f"CREATE DATABASE {self.name}")

    async def drop(self) -> None:
        if self.kind == "redis":
            import redis.asyncio as aioredis

            client = aioredis.from_url(self.url)
            try:
                keys = [key async for key in client.scan_iter(match=f"taskflow-test:{self.name}:*", count=1000)]
                if keys:
                    await client.delete(*keys)
            finally:
                await client.aclose()
        elif self.kind == "postgres":
            import psycopg

            async with await psycopg.AsyncConnection.connect(self.url) as conn:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{self.name}" CASCADE')
        else:
            await _mysql_admin(self.url, f"DROP DATABASE IF EXISTS {self.name}")
