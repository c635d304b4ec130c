"""What one backend does beyond the shared contract."""

from __future__ import annotations

import time

import pytest
from psycopg_pool import AsyncConnectionPool

from fastapi_taskflow.backends import PostgresBackend, RedisBackend

from .conftest import isolated
from .rows import finished, ids, task_row

pytestmark = pytest.mark.anyio


async def test_postgres_uses_a_given_pool_and_leaves_it_open() -> None:
    async with isolated("postgres") as space:
        pool: AsyncConnectionPool = AsyncConnectionPool(space.url, min_size=1, max_size=2, open=False)
        await pool.open()
        try:
            async with PostgresBackend(pool=pool, schema=space.name, max_workers=8) as backend:
                await backend.upsert([task_row("a")])
                assert ids(await backend.page()) == ["a"]
            assert not pool.closed
            async with pool.connection() as conn:
                cursor = await conn.execute(f'SELECT count(*) FROM "{space.name}".taskflow_history')
                assert await cursor.fetchone() == (1,)
        finally:
            await pool.close()


async def test_redis_drops_finished_rows_older_than_its_ttl() -> None:
    async with isolated("redis") as space:
        now_us = int(time.time() * 1_000_000)
        async with RedisBackend(space.url, prefix=f"taskflow-test:{space.name}", ttl=60) as backend:
            await backend.upsert(
                [
                    finished("old", end_us=now_us - 120_000_000, created_us=1, tags_json='{"k": "v"}'),
                    finished("recent", end_us=now_us, created_us=2),
                    task_row("running", status="running", created_us=0, start_us=0),
                ]
            )
            assert await backend.get("old") is None
            assert ids(await backend.page()) == ["recent", "running"]
            assert ids(await backend.page(tag=("k", "v"))) == []
            assert (await backend.count_by_status())["success"] == 1
