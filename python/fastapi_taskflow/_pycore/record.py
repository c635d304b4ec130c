"""One task record and its JSON, dict and database-row forms."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from .isotime import iso_from_us
from .jsonenc import dumps, loads

if TYPE_CHECKING:
    from .metrics import Aggregate

#: (created_us, task_id): the ordering key, newest first when read backwards.
Key = tuple[int, str]

#: Columns of ``task_history`` in the order of ``Record.to_row`` (see ``snapshot.py``).
Row = tuple[
    str, str, str, int, int | None, int | None, int, str | None, str | None, str, str, str,
    int | None, str | None, str, str | None, bytes | None, bytes | None, int, str | None, bytes | None, str | None,
]  # fmt: skip


def _iso(us: int | None) -> str | None:
    return None if us is None else iso_from_us(us)


def _duration(start_us: int | None, end_us: int | None) -> float | None:
    return None if start_us is None or end_us is None else (end_us - start_us) / 1e6


#: A ``Row`` with ``logs`` and ``tags`` not yet encoded as JSON: what ``Record.row_parts`` copies under the
#: store's lock, for ``Record.to_row`` outside it.
RowParts = tuple[
    str, str, str, int, int | None, int | None, int, str | None, str | None, tuple[str, ...], "dict[str, str] | None",
    str, int | None, str | None, str, str | None, bytes | None, bytes | None, int, str | None, bytes | None, str | None,
]  # fmt: skip


class Record:
    """A task record. Everything but the status fields, ``logs`` and the bookkeeping slots is fixed at creation."""

    __slots__ = (
        "agg",
        "args_json",
        "cache",
        "created_us",
        "encrypted_payload",
        "end_us",
        "error",
        "executor",
        "func_name",
        "idempotency_key",
        "journal",
        "key",
        "kwargs_json",
        "logs",
        "logs_dropped",
        "priority",
        "queue",
        "retries_used",
        "retry_of",
        "source",
        "stacktrace",
        "start_us",
        "status",
        "tags",
        "task_id",
    )

    agg: Aggregate | None
    cache: bytes | None
    logs: deque[str] | None
    tags: dict[str, str] | None

    def __init__(
        self,
        task_id: str,
        func_name: str,
        status: str,
        created_us: int,
        queue: str,
        executor: str | None,
        priority: int | None,
        source: str,
        tags: dict[str, str] | None,
        idempotency_key: str | None,
        args_json: bytes | None,
        kwargs_json: bytes | None,
        encrypted_payload: bytes | None,
        retry_of: str | None,
    ) -> None:
        self.task_id = task_id
        self.func_name = func_name
        self.status = status
        self.created_us = created_us
        self.key: Key = (created_us, task_id)
        self.start_us: int | None = None
        self.end_us: int | None = None
        self.retries_used = 0
        self.error: str | None = None
        self.stacktrace: str | None = None
        self.logs = None
        #: Log lines dropped by the per-record bound (the oldest go first).
        self.logs_dropped = 0
        self.tags = tags
        self.source = source
        self.priority = priority
        self.executor = executor
        self.queue = queue
        self.idempotency_key = idempotency_key
        self.args_json = args_json
        self.kwargs_json = kwargs_json
        self.encrypted_payload = encrypted_payload
        self.retry_of = retry_of
        #: In the journal: written unfinished, with this store as owner (see ``_core.pyi``).
        self.journal = False
        self.agg = None
        self.cache = None

    def to_obj(self, *, copy: bool = True) -> dict[str, object]:
        """The 16-key JSON object, timestamps as ISO strings; ``copy=False`` shares ``tags`` (to serialise at once)."""
        tags = self.tags
        return {
            "task_id": self.task_id,
            "func_name": self.func_name,
            "status": self.status,
            "created_at": iso_from_us(self.created_us),
            "start_time": _iso(self.start_us),
            "end_time": _iso(self.end_us),
            "duration": _duration(self.start_us, self.end_us),
            "retries_used": self.retries_used,
            "error": self.error,
            "logs": [] if self.logs is None else list(self.logs),
            "stacktrace": self.stacktrace,
            "tags": {} if tags is None else dict(tags) if copy else tags,
            "source": self.source,
            "priority": self.priority,
            "executor": self.executor,
            "queue": self.queue,
        }

    def to_json(self) -> bytes:
        """The JSON object, memoised until the record changes (callers reset ``cache``)."""
        data = self.cache
        if data is None:
            data = self.cache = dumps(self.to_obj(copy=False))
        return data

    def detail_json(self) -> bytes:
        """The detail JSON: the 16-key object followed by ``"logs_dropped"`` and ``"retry_of"``."""
        return (
            self.to_json()[:-1]
            + b',"logs_dropped":'
            + str(self.logs_dropped).encode()
            + b',"retry_of":'
            + dumps(self.retry_of)
            + b"}"
        )

    def to_dict(self) -> dict[str, object]:
        obj = self.to_obj()
        obj["idempotency_key"] = self.idempotency_key
        obj["args_json"] = self.args_json
        obj["kwargs_json"] = self.kwargs_json
        obj["encrypted_payload"] = self.encrypted_payload
        obj["logs_dropped"] = self.logs_dropped
        obj["retry_of"] = self.retry_of
        return obj

    def row_parts(self, owner: str | None) -> RowParts:
        """The row, copied while the store's lock is held (a journaled record's status and any logs keep changing)."""
        return (
            self.task_id,
            self.func_name,
            self.status,
            self.created_us,
            self.start_us,
            self.end_us,
            self.retries_used,
            self.error,
            self.stacktrace,
            () if self.logs is None else tuple(self.logs),
            self.tags,
            self.source,
            self.priority,
            self.executor,
            self.queue,
            self.idempotency_key,
            self.args_json,
            self.kwargs_json,
            self.logs_dropped,
            owner,
            self.encrypted_payload,
            self.retry_of,
        )

    @staticmethod
    def to_row(parts: RowParts) -> Row:
        """The row with logs and tags encoded (done outside the store's lock: it is the costly part)."""
        return (*parts[:9], dumps(parts[9]).decode(), dumps(parts[10] or {}).decode(), *parts[11:])

    @classmethod
    def from_row(cls, row: Row) -> Record:
        """A detached record read from the snapshot file (no indexes, no metrics, not journaled)."""
        rec = cls(
            row[0], row[1], row[2], row[3], row[14], row[13], row[12], row[11], None, row[15], row[16], row[17],
            row[20], row[21],
        )  # fmt: skip
        rec.start_us = row[4]
        rec.end_us = row[5]
        rec.retries_used = row[6]
        rec.error = row[7]
        rec.stacktrace = row[8]
        logs = loads(row[9])
        rec.logs = deque(logs) if logs else None
        rec.tags = loads(row[10]) or None
        rec.logs_dropped = row[18]
        return rec


def event_task_obj(
    rec: Record,
    status: str,
    start_us: int | None,
    end_us: int | None,
    retries_used: int,
    error: str | None,
    stacktrace: str | None,
) -> dict[str, object]:
    """The record as it was when an event was emitted, without ``logs``."""
    return {
        "task_id": rec.task_id,
        "func_name": rec.func_name,
        "status": status,
        "created_at": iso_from_us(rec.created_us),
        "start_time": _iso(start_us),
        "end_time": _iso(end_us),
        "duration": _duration(start_us, end_us),
        "retries_used": retries_used,
        "error": error,
        "stacktrace": stacktrace,
        "tags": {} if rec.tags is None else rec.tags,
        "source": rec.source,
        "priority": rec.priority,
        "executor": rec.executor,
        "queue": rec.queue,
    }
