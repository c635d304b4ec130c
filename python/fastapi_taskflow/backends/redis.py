"""Redis shared backend on ``redis.asyncio`` (redis-py >= 5; Redis server >= 6.2).

Rows are hashes; the page indexes are sorted sets kept in step with the rows by Lua
scripts (see ``_redis_lua`` for the key layout). Idempotency keys and locks are
``SET NX PX`` strings that Redis expires by itself; leases are a sorted set of
instance -> expiry on the server's clock; orphan and one-off claims are scripts.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final, cast

from . import _redis_lua as lua
from ._rows import (
    check_limit,
    check_page,
    check_seconds,
    latest_rows,
    missing_driver,
    oldest_first,
    tag_digest,
    tags_of,
)
from .base import (
    CONNECT_TIMEOUT,
    FINISHED,
    SCHEDULED_COLUMNS,
    STATUSES,
    TASK_COLUMNS,
    ScheduledRow,
    SharedBackend,
    TaskRow,
)

try:
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError
except ImportError as exc:  # the extra is not installed: the constructor says how to install it
    _MISSING: ImportError | None = exc
else:
    _MISSING = None

if TYPE_CHECKING:
    from redis.commands.core import AsyncScript
    from redis.typing import EncodableT

#: Columns stored as decimal text, and as raw bytes; the others are UTF-8 text.
_INTS: Final = frozenset({"created_us", "start_us", "end_us", "retries_used", "logs_dropped", "priority", "fire_us"})
_BYTES: Final = frozenset({"args_json", "kwargs_json", "encrypted_payload"})
#: A batch may end with a purge of expired rows (``ttl``); at most this many per call.
_PURGE_BATCH: Final = 1_000


def _lex(us: int) -> str:
    """``us`` as text whose byte order is numeric order, negative ``us`` included."""
    return f"{us + (1 << 63):020d}"


def _member(us: int, name: str) -> str:
    """An index member: byte order is ``(us, name)`` order."""
    return f"{_lex(us)}:{name}"


def _fields(row: object, columns: Sequence[str]) -> list[EncodableT]:
    """``field, value, ...`` of the columns that are not None (a hash has no None)."""
    values = cast("dict[str, EncodableT | None]", row)
    fields: list[EncodableT] = []
    for column in columns:
        value = values[column]
        if value is not None:
            fields += (column, value)
    return fields


def _decode(fields: dict[bytes, bytes], columns: Sequence[str]) -> dict[str, object]:
    row: dict[str, object] = dict.fromkeys(columns)
    for name_bytes, value in fields.items():
        name = name_bytes.decode()
        if name in _BYTES:
            row[name] = value
        elif name in _INTS:
            row[name] = int(value)
        elif name in row:  # skips the internal _m and _idx
            row[name] = value.decode()
    return row


def _pairs(reply: Sequence[bytes]) -> dict[bytes, bytes]:
    """A Lua ``HGETALL`` reply (a flat array) as a dict."""
    return dict(zip(reply[::2], reply[1::2], strict=True))


def _task_row(fields: dict[bytes, bytes]) -> TaskRow:
    return cast("TaskRow", _decode(fields, TASK_COLUMNS))


def _scheduled_row(fields: dict[bytes, bytes]) -> ScheduledRow:
    return cast("ScheduledRow", _decode(fields, SCHEDULED_COLUMNS))


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class RedisBackend(SharedBackend):
    """Shared state in Redis under ``prefix``.

    ``client_kwargs`` go to ``redis.asyncio.from_url`` (``decode_responses`` must stay
    off: rows hold bytes). ``ttl``: seconds a finished row is kept after it ended;
    expired rows are removed, a thousand at most per call, by the next ``upsert``.
    """

    kind = "redis"

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        prefix: str = "fbtm:snapshots",
        ttl: float | None = None,
        **client_kwargs: Any,
    ) -> None:
        if _MISSING is not None:
            raise missing_driver("RedisBackend", "redis", _MISSING)
        if client_kwargs.get("decode_responses"):
            raise ValueError("RedisBackend stores bytes; decode_responses must be False")
        super().__init__(url, (RedisError, OSError), prefix)
        self._client_kwargs = client_kwargs
        self._ttl_us = None if ttl is None else round(ttl * 1_000_000)
        self._client: aioredis.Redis | None = None
        self._scripts: dict[str, AsyncScript] = {}
        p = prefix
        self._task = f"{p}:task:"
        self._all = f"{p}:idx:all"
        self._status = f"{p}:idx:status:"
        self._name = f"{p}:idx:name:"
        self._tag = f"{p}:idx:tag:"
        self._ended = f"{p}:idx:ended"
        self._owned = f"{p}:idx:owner:"
        self._owners = f"{p}:owners"
        self._leases = f"{p}:leases"
        self._idem = f"{p}:idem:"
        self._lock = f"{p}:lock:"
        self._sched = f"{p}:sched:row:"
        self._due = f"{p}:sched:due"
        self._meta = f"{p}:meta:"

    # Life cycle.

    async def open(self) -> None:
        if self._client is not None:
            return
        client = aioredis.from_url(self._url, **{"socket_connect_timeout": CONNECT_TIMEOUT, **self._client_kwargs})
        scripts = {name: client.register_script(source) for name, source in lua.SCRIPTS.items()}
        try:
            with self._failing("connect"):
                await client.ping()
        except BaseException:
            await client.aclose()
            raise
        self._scripts = scripts
        self._client = client

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def _redis(self, doing: str) -> aioredis.Redis:
        if self._client is None:
            raise self._not_open(doing)
        return self._client

    async def _run(self, doing: str, script: str, keys: Sequence[str], args: Sequence[EncodableT]) -> Any:
        client = self._redis(doing)
        with self._failing(doing):
            return await self._scripts[script](keys=list(keys), args=list(args), client=client)

    def _row_keys(self) -> list[str]:
        """The first keys of every task script (see ``_redis_lua``)."""
        return [self._ended, self._owners]

    def _row_args(self) -> list[EncodableT]:
        return [self._task, self._owned]

    async def ping(self) -> None:
        client = self._redis("ping the server")
        with self._failing("ping the server"):
            await client.ping()

    # Task history.

    def _indexes(self, row: TaskRow) -> list[str]:
        tags = [self._tag + tag_digest(key, value).hex() for key, value in tags_of(row["tags_json"])]
        return [self._all, self._status + row["status"], self._name + row["func_name"], *tags]

    async def upsert(self, rows: Sequence[TaskRow]) -> None:
        batch = latest_rows(rows)
        if not batch:
            return
        client = self._redis("write task rows")
        with self._failing("write task rows"):
            # One script call per row (each row and its indexes change atomically), all in one
            # pipeline: one round trip for the batch.
            async with client.pipeline(transaction=False) as pipe:
                upsert = self._scripts["UPSERT"]
                for row in batch:
                    end_us = row["end_us"]
                    # Only finished rows are in the retention index.
                    ended: EncodableT = end_us if end_us is not None and row["status"] in FINISHED else ""
                    args: list[EncodableT] = [
                        *self._row_args(),
                        row["task_id"],
                        _member(row["created_us"], row["task_id"]),
                        ended,
                        row["owner"] or "",
                        *_fields(row, TASK_COLUMNS),
                    ]
                    await upsert(keys=[*self._row_keys(), *self._indexes(row)], args=args, client=pipe)
                if self._ttl_us is not None:
                    cutoff = int(time.time() * 1_000_000) - self._ttl_us
                    args = [*self._row_args(), cutoff, _PURGE_BATCH]
                    await self._scripts["PURGE"](keys=self._row_keys(), args=args, client=pipe)
                await pipe.execute()

    async def get(self, task_id: str) -> TaskRow | None:
        client = self._redis("read a task row")
        with self._failing("read a task row"):
            fields = await client.hgetall(self._task + task_id)
        return _task_row(cast("dict[bytes, bytes]", fields)) if fields else None

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
        indexes = [
            *([self._status + status] if status is not None else []),
            *([self._name + func_name] if func_name is not None else []),
            *([self._tag + tag_digest(*tag).hex()] if tag is not None else []),
        ] or [self._all]
        upper = "+" if before is None else "(" + _member(*before)
        replies = await self._run("read a page of task rows", "PAGE", indexes, [self._task, upper, limit])
        return [_task_row(_pairs(reply)) for reply in replies if reply]

    async def count_by_status(self) -> dict[str, int]:
        client = self._redis("count task rows")
        with self._failing("count task rows"):
            async with client.pipeline(transaction=False) as pipe:
                for status in STATUSES:
                    pipe.zcard(self._status + status)
                counts = await pipe.execute()
        return dict(zip(STATUSES, counts, strict=True))

    async def delete(self, task_ids: Sequence[str]) -> int:
        if not task_ids:
            return 0
        return int(await self._run("delete task rows", "DELETE", self._row_keys(), [*self._row_args(), *task_ids]))

    async def delete_finished_before(self, end_before_us: int) -> int:
        # Batches: one script that deleted millions of rows would block the server meanwhile.
        deleted = 0
        while True:
            args = [*self._row_args(), end_before_us, _PURGE_BATCH]
            count = int(await self._run("delete old task rows", "PURGE", self._row_keys(), args))
            deleted += count
            if count < _PURGE_BATCH:
                return deleted

    # Idempotency keys.

    async def claim_idempotency_key(self, key: str, task_id: str, ttl: float | None) -> str:
        if ttl is not None:
            check_seconds("ttl", ttl)
        px = "" if ttl is None else _ms(ttl)
        holder = await self._run("claim an idempotency key", "CLAIM_KEY", [self._idem + key], [task_id, px])
        return cast("bytes", holder).decode()

    async def release_idempotency_key(self, key: str, task_id: str) -> None:
        await self._run("release an idempotency key", "RELEASE_KEY", [self._idem + key], [task_id])

    # Instances and orphaned journal rows.

    async def heartbeat(self, instance_id: str, lease: float) -> None:
        check_seconds("lease", lease)
        await self._run("renew a lease", "HEARTBEAT", [self._leases], [instance_id, round(lease * 1_000_000)])

    async def retire(self, instance_id: str) -> None:
        client = self._redis("end a lease")
        with self._failing("end a lease"):
            await client.zrem(self._leases, instance_id)

    async def claim_orphans(self, instance_id: str, limit: int = 1000) -> list[TaskRow]:
        check_limit(limit)
        keys = [*self._row_keys(), self._leases]
        replies = await self._run(
            "claim orphaned task rows", "CLAIM_ORPHANS", keys, [*self._row_args(), instance_id, limit]
        )
        return oldest_first([_task_row(_pairs(reply)) for reply in replies])

    # Schedules.

    async def acquire_lock(self, key: str, ttl: float) -> bool:
        check_seconds("ttl", ttl)
        client = self._redis("acquire a lock")
        with self._failing("acquire a lock"):
            return bool(await client.set(self._lock + key, b"1", nx=True, px=_ms(ttl)))

    async def save_scheduled(self, row: ScheduledRow) -> None:
        args = [_member(row["fire_us"], row["run_key"]), *_fields(row, SCHEDULED_COLUMNS)]
        await self._run("save a scheduled run", "SAVE_SCHEDULED", [self._sched + row["run_key"], self._due], args)

    async def load_due(self, before_us: int, limit: int = 1000) -> list[ScheduledRow]:
        check_limit(limit)
        # The member of every run due at or before before_us sorts below the bare number before_us + 1.
        upper = "(" + _lex(before_us + 1)
        replies = await self._run("read due runs", "LOAD_DUE", [self._due], [self._sched, upper, limit])
        return [_scheduled_row(_pairs(reply)) for reply in replies if reply]

    async def _take_scheduled(self, doing: str, run_key: str) -> ScheduledRow | None:
        reply = await self._run(doing, "TAKE_SCHEDULED", [self._sched + run_key, self._due], [])
        return _scheduled_row(_pairs(reply)) if reply else None

    async def delete_scheduled(self, run_key: str) -> bool:
        return await self._take_scheduled("delete a scheduled run", run_key) is not None

    async def claim_scheduled(self, run_key: str) -> ScheduledRow | None:
        return await self._take_scheduled("claim a scheduled run", run_key)

    # Metadata.

    async def save_metadata(self, key: str, value: str) -> None:
        client = self._redis("save metadata")
        with self._failing("save metadata"):
            await client.set(self._meta + key, value)

    async def load_metadata(self, key: str) -> str | None:
        client = self._redis("read metadata")
        with self._failing("read metadata"):
            value = await client.get(self._meta + key)
        return None if value is None else cast("bytes", value).decode()
