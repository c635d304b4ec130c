"""TaskStore: records, their indexes, idempotency keys, retention, metrics, events and the snapshot file,
with the file's schedule locks, one-off schedules and metadata.

Lock order: the keyed-create lock, then the snapshot lock, then the state lock; no disk I/O
under the state lock.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from time import time_ns
from typing import Any, Final, cast

from .events import Event, event_json
from .health import SnapshotHealth
from .ids import new_task_id
from .index import FinishedQueue, KeyIndex
from .jsonenc import dumps, loads
from .metrics import Metrics
from .owners import OwnerLock, owner_alive, remove_owner_files
from .prometheus import render as render_prometheus
from .record import Key, Record, Row, RowParts
from .ring import EventRing
from .snapshot import COLUMNS, TASK_ROW_KEYS, DeletedRow, ScheduledRow, SnapshotDb, SnapshotError
from .statuses import ALLOWED, FINISHED_SET, FREES_KEY, KNOWN, STATUSES

logger = logging.getLogger("fastapi_taskflow")

#: What a change that left a record unwritten must do once the lock is released (see ``_unwritten_signal``).
_Signal = tuple[Callable[[], object] | None, bool]

_I64_MAX = 2**63 - 1
#: The idempotency cutoff without a ttl: every record is recent enough to hold its key.
_NO_CUTOFF = -(2**63)
#: Paths SQLite opens as a private database, which no other store can share.
_PRIVATE_PATHS = ("", ":memory:")


def _parse_cursor(cursor: str) -> Key:
    created, sep, task_id = cursor.partition(":")
    if not sep or not task_id or not (created.isascii() and created.isdigit()) or int(created) > _I64_MAX:
        raise ValueError(f"malformed cursor {cursor!r}: expected '<created_us>:<task_id>' from a previous page")
    return int(created), task_id


def _parse_tag(tag: str) -> tuple[str, str]:
    """Split a ``"key=value"`` tag filter at its first ``=``."""
    key, sep, value = tag.partition("=")
    if not sep:
        raise ValueError(f'tag must be "key=value", got {tag!r}')
    return key, value


def _cursor(key: Key) -> str:
    return f"{key[0]}:{key[1]}"


def _positive(name: str, value: int) -> int:
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    return value


#: Why the schedule and metadata methods refuse a store without a file. Twin of ``NO_FILE`` in ``store.rs``.
_NO_FILE = (
    "this TaskStore has no snapshot file (db_path is None); schedule locks, one-off schedules, metadata and the"
    " rows to replicate live in one: pass a db_path"
)

#: What ``adopt`` requires of each key of a row, in ``TASK_ROW_KEYS`` order.
_ROW_KINDS: Final[dict[str, str]] = {
    "task_id": "str",
    "func_name": "str",
    "status": "str",
    "created_us": "int",
    "start_us": "int?",
    "end_us": "int?",
    "retries_used": "int",
    "error": "str?",
    "stacktrace": "str?",
    "logs_json": "str",
    "logs_dropped": "int",
    "tags_json": "str",
    "source": "str",
    "priority": "int?",
    "executor": "str?",
    "queue": "str",
    "idempotency_key": "str?",
    "args_json": "bytes?",
    "kwargs_json": "bytes?",
    "encrypted_payload": "bytes?",
    "retry_of": "str?",
    "owner": "str?",
}
_EXPECTED: Final[dict[str, str]] = {
    "str": "a str",
    "str?": "a str or None",
    "int": "a 64-bit int",
    "int?": "a 64-bit int or None",
    "bytes?": "bytes or None",
}
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _task_row_values(index: int, row: dict[str, Any]) -> dict[str, Any]:
    """``rows[index]`` of ``adopt``, its keys checked in ``TASK_ROW_KEYS`` order: ``ValueError`` naming the row and
    the key for a missing key or a value of another type. Twin of ``task_row_from`` in ``py/store.rs`` (same
    order, same messages)."""
    if not isinstance(row, dict):
        raise TypeError(f"adopt: row {index} must be a dict, not {type(row).__name__}")
    subject = f"row {index}"
    for key, kind in _ROW_KINDS.items():
        if key not in row:
            raise ValueError(f"adopt: {subject} has no field '{key}'")
        value = row[key]
        if value is None and kind.endswith("?"):
            continue
        base = kind.rstrip("?")
        if base == "int":
            # bool is an int subclass, but never a number of a row.
            fits = isinstance(value, int) and not isinstance(value, bool)
            if fits and not -(2**63) <= value <= _I64_MAX:
                raise ValueError(f"adopt: {subject}: field '{key}' must be {_EXPECTED[kind]}, got {value!r}")
        else:
            fits = isinstance(value, str if base == "str" else bytes)
        if not fits:
            raise ValueError(f"adopt: {subject}: field '{key}' must be {_EXPECTED[kind]}, not {type(value).__name__}")
        if key == "task_id":
            subject = f"task '{value}'"
    return row


def _json_or_none(text: str) -> object:
    try:
        return loads(text)
    except ValueError:
        return None


def _adoptable(row: dict[str, Any]) -> Record:
    """A row ``adopt`` may take (unfinished, a canonical UUID, its logs and tags readable) as a detached record.
    Twin of ``adoptable`` in ``store.rs`` (same checks, same order, same messages)."""
    task_id = row["task_id"]

    def bad(field: str, what: str) -> ValueError:
        return ValueError(f"adopt: task '{task_id}': field '{field}' {what}")

    if _CANONICAL_UUID.fullmatch(task_id) is None:
        raise bad("task_id", "is not a UUID in canonical form (lowercase, hyphenated)")
    if row["status"] not in ("pending", "running"):
        raise bad("status", f"is '{row['status']}'; only pending and running rows can be adopted")
    if row["retries_used"] < 0:
        raise bad("retries_used", f"must be at least 0, got {row['retries_used']}")
    # Read strictly here: the file reads them leniently, and what memory then holds must be what the row says.
    logs = _json_or_none(row["logs_json"])
    if not (isinstance(logs, list) and all(isinstance(line, str) for line in logs)):
        raise bad("logs_json", "must be a JSON array of strings")
    if row["logs_dropped"] < 0:
        raise bad("logs_dropped", f"must be at least 0, got {row['logs_dropped']}")
    tags = _json_or_none(row["tags_json"])
    if not (isinstance(tags, dict) and all(isinstance(value, str) for value in tags.values())):
        raise bad("tags_json", "must be a JSON object of strings")
    return Record.from_row(cast("Row", tuple(row[column] for column in COLUMNS)))


def _ttl_micros(ttl: float) -> int:
    """A schedule lock's ttl in whole microseconds, rounded up (as ``ttl_micros`` in ``store.rs``)."""
    if not (math.isfinite(ttl) and ttl > 0):
        raise ValueError(f"ttl must be a positive finite number of seconds, got {ttl!r}")
    return math.ceil(ttl * 1e6)


def _check_tags(tags: dict[str, str] | None) -> dict[str, str] | None:
    """A copy of non-empty tags, None for none; ``TypeError`` unless they map str to str."""
    if not tags:
        return None
    if not all(type(k) is str and type(v) is str for k, v in tags.items()):
        raise TypeError("tags must map str to str")
    return dict(tags)


def _pending_record(
    func_name: str,
    queue: str,
    executor: str | None,
    priority: int | None = None,
    source: str = "manual",
    tags: dict[str, str] | None = None,
    idempotency_key: str | None = None,
    args_json: bytes | None = None,
    kwargs_json: bytes | None = None,
    encrypted_payload: bytes | None = None,
    retry_of: str | None = None,
) -> Record:
    """A new PENDING record with a fresh id, not held by any store yet."""
    # The time is taken before the store's lock, as in the Rust core: a record that loses a race
    # for the lock lands a little out of key order, which the indexes allow.
    return Record(
        new_task_id(),
        func_name,
        "pending",
        time_ns() // 1000,
        queue,
        executor,
        priority,
        source,
        tags,
        idempotency_key,
        args_json,
        kwargs_json,
        encrypted_payload,
        retry_of,
    )


def _check_bytes(*values: bytes | None) -> None:
    if any(v is not None and type(v) is not bytes for v in values):
        raise TypeError("args_json, kwargs_json and encrypted_payload must be bytes or None")


def _stored_tags(tags_json: str) -> dict[str, str]:
    """Tags of a stored one-off, read leniently as ``snapshot.rs`` reads them: unreadable JSON is no tags, and a
    value that is not a string becomes its JSON text."""
    try:
        tags = loads(tags_json)
    except ValueError:
        return {}
    if not isinstance(tags, dict):
        return {}
    return {k: v if isinstance(v, str) else dumps(v).decode() for k, v in tags.items()}


def _scheduled_dict(row: ScheduledRow) -> dict[str, object]:
    return {
        "run_key": row[0],
        "func_name": row[1],
        "fire_us": row[2],
        "created_us": row[3],
        "args_json": row[4],
        "kwargs_json": row[5],
        "encrypted_payload": row[6],
        "queue": row[7],
        "priority": row[8],
        "idempotency_key": row[9],
        "tags": _stored_tags(row[10]),
    }


def _closed(path: str | None) -> SnapshotError:
    return SnapshotError(f"{path}: the snapshot file is closed; create a new TaskStore to reopen it")


def _lock_owner(directory: str, instance_id: str, db_path: str) -> OwnerLock:
    try:
        return OwnerLock(directory, instance_id)
    except OSError as exc:
        raise SnapshotError(
            f"{db_path}: cannot take this store's owner lock in {directory} ({exc}); make the file's"
            " directory writable, or pass another db_path"
        ) from exc


class TaskStore:
    """Task records, their indexes, metrics, the event ring and the snapshot file. Thread-safe."""

    __module__ = "fastapi_taskflow._pycore"

    __slots__ = (
        "__weakref__",
        "_all",
        "_by_name",
        "_by_status",
        "_db",
        "_db_path",
        "_dirty",
        "_finished",
        "_health",
        "_idem",
        "_idem_ttl_us",
        "_in_status",
        "_instance_id",
        "_keyed",
        "_lock",
        "_max_history",
        "_max_log_lines",
        "_metrics",
        "_owner_lock",
        "_owners",
        "_persist",
        "_queue_pending",
        "_records",
        "_ring",
        "_wake",
        "_write_behind_at",
        "_writing_behind",
    )

    def __init__(
        self,
        db_path: str | None = None,
        *,
        max_history: int = 10_000,
        ring_capacity: int = 65_536,
        max_log_lines: int = 1_000,
        idempotency_ttl: float | None = None,
    ) -> None:
        self._max_history = _positive("max_history", max_history)
        self._max_log_lines = _positive("max_log_lines", max_log_lines)
        self._ring: EventRing[Event] = EventRing(_positive("ring_capacity", ring_capacity))
        if idempotency_ttl is not None and not idempotency_ttl > 0:
            raise ValueError(f"idempotency_ttl must be a positive number of seconds or None, got {idempotency_ttl!r}")
        self._idem_ttl_us = None if idempotency_ttl is None else idempotency_ttl * 1e6
        self._instance_id = new_task_id()
        self._lock = threading.Lock()
        # Keyed creates take turns: the check (memory, then the file, read without the state
        # lock) and the creation must be one step.
        self._keyed = threading.Lock()
        self._records: dict[str, Record] = {}
        self._all = KeyIndex()
        self._by_status: dict[str, KeyIndex] = {s: KeyIndex() for s in STATUSES}
        self._in_status = {s: self._in_status_check(s) for s in STATUSES}
        self._by_name: dict[str, KeyIndex] = {}
        self._finished = FinishedQueue()
        self._idem: dict[str, str] = {}
        self._metrics = Metrics()
        # Pending records in memory per queue name (the queue-depth gauge), kept per event.
        self._queue_pending: dict[str, int] = {}
        # Ids of records whose row is out of date: finished records changed since the last flush,
        # and journaled ones whose status or retries changed (only kept when there is a file).
        self._dirty: set[str] = set()
        self._health = SnapshotHealth()
        # What a change that leaves records unwritten does (see write_behind and on_unwritten):
        # start a flush from this many, holding _writing_behind while it runs; and call _wake once.
        self._write_behind_at: int | None = None
        self._writing_behind = threading.Lock()
        self._wake: Callable[[], object] | None = None
        self._db_path = db_path
        # Whether finished records must reach the file before they may leave memory; False
        # without a file and once it is closed.
        self._persist = db_path is not None
        self._db: SnapshotDb | None = None
        # The directory of the owner lock files; None without a file shared on disk.
        self._owners: str | None = None
        self._owner_lock: OwnerLock | None = None
        if db_path is not None:
            db = SnapshotDb(db_path)
            try:
                rows = db.metric_rows()
                if db_path not in _PRIVATE_PATHS:
                    self._owners = db_path + ".owners"
                    self._owner_lock = _lock_owner(self._owners, self._instance_id, db_path)
            except SnapshotError:
                db.close()
                raise
            for func_name, status, start_us, end_us in rows:
                self._metrics.load(func_name, status, start_us, end_us)
            self._db = db

    @property
    def db_path(self) -> str | None:
        return self._db_path

    @property
    def instance_id(self) -> str:
        return self._instance_id

    @property
    def last_seq(self) -> int:
        return self._ring.last_seq

    # -- writes (the hot path) -------------------------------------------------------------

    def create(
        self,
        func_name: str,
        *,
        queue: str = "default",
        executor: str | None = None,
        priority: int | None = None,
        source: str = "manual",
        tags: dict[str, str] | None = None,
        idempotency_key: str | None = None,
        args_json: bytes | None = None,
        kwargs_json: bytes | None = None,
        encrypted_payload: bytes | None = None,
        retry_of: str | None = None,
        journal: bool = False,
    ) -> tuple[str, bool]:
        tags = _check_tags(tags)
        _check_bytes(args_json, kwargs_json, encrypted_payload)
        rec = _pending_record(
            func_name,
            queue,
            executor,
            priority,
            source,
            tags,
            idempotency_key,
            args_json,
            kwargs_json,
            encrypted_payload,
            retry_of,
        )
        if idempotency_key is None:
            self._add(rec, journal)
            return rec.task_id, True
        with self._keyed:
            holder = self._key_holder(idempotency_key)
            if holder is not None:
                return holder, False
            self._add(rec, journal)
        return rec.task_id, True

    def create_plain(self, func_name: str, queue: str, executor: str, /) -> str:
        rec = _pending_record(func_name, queue, executor)
        self._add(rec, False)
        return rec.task_id

    def _key_cutoff(self, now_us: int) -> float:
        """Creation times after which a record still holds its idempotency key, at ``now_us``."""
        ttl_us = self._idem_ttl_us
        return _NO_CUTOFF if ttl_us is None else now_us - ttl_us

    def _key_holder(self, key: str) -> str | None:
        """The record holding idempotency ``key``: in memory, else in the file. The caller holds ``_keyed``."""
        cutoff = self._key_cutoff(time_ns() // 1000)
        holder = self._memory_holder(key, cutoff)
        if holder is not None:
            return holder
        db = self._db
        if db is None:
            return None
        on_disk = db.key_holders(key, cutoff)
        return self._disk_holder(on_disk) if on_disk else None

    def _memory_holder(self, key: str, cutoff: float) -> str | None:
        with self._lock:
            holder = self._idem.get(key)
            if holder is not None and self._records[holder].created_us > cutoff:
                return holder
        return None

    def _disk_holder(self, on_disk: list[str]) -> str | None:
        """The newest of the stored holders ``on_disk`` that memory does not know to have let the key go (as
        ``disk_row_holds`` in ``store.rs``)."""
        with self._lock:
            # A record in memory is newer than its row. It may hold the key without being the one ``_idem`` names:
            # claimed or adopted records are loaded with whatever keys they carry.
            records = self._records
            return next(
                (
                    task_id
                    for task_id in on_disk
                    if (rec := records.get(task_id)) is None or rec.status not in FREES_KEY
                ),
                None,
            )

    def _add(self, rec: Record, journal: bool, *, written: bool = False) -> None:
        """Add a new record to memory, indexes, metrics and ring. ``written``: its journal row is in the file
        already, so no flush needs to write it."""
        task_id = rec.task_id
        with self._lock:
            if rec.idempotency_key is not None:
                self._idem[rec.idempotency_key] = task_id
            rec.agg = self._metrics.created(rec.func_name)
            self._queue_pending[rec.queue] = self._queue_pending.get(rec.queue, 0) + 1
            self._records[task_id] = rec
            self._index(rec)
            signal = None
            if journal and self._persist:
                rec.journal = True
                if not written:
                    self._dirty.add(task_id)
                    signal = self._unwritten_signal()
            self._ring.push(("created", rec, "pending", None, None, 0, None, None))
        if signal is not None:
            self._left_unwritten(signal)

    def transition(
        self,
        task_id: str,
        status: str,
        *,
        error: str | None = None,
        stacktrace: str | None = None,
        retries_used: int | None = None,
    ) -> bool:
        if status not in KNOWN:
            raise ValueError(f"unknown status {status!r}; expected one of {', '.join(STATUSES)}")
        if retries_used is not None and retries_used < 0:
            raise ValueError(f"retries_used must be at least 0, got {retries_used}")
        with self._lock:
            rec = self._records.get(task_id)
            if rec is None:
                raise KeyError(task_id)
            old = rec.status
            allowed = ALLOWED.get(old)
            if allowed is None or status not in allowed:
                return False
            # A journaled record's row is rewritten when its status or retries change.
            row_changed = old != status or (retries_used is not None and retries_used != rec.retries_used)
            if old != status:
                rec.status = status
                self._by_status[status].add(rec.key)
                self._retire_status(old, 1)
                assert rec.agg is not None
                self._metrics.moved(rec.agg, old, status)
                if old == "pending":
                    self._queue_pending[rec.queue] = max(0, self._queue_pending[rec.queue] - 1)
                elif status == "pending":
                    # A running record loaded from the file (claimed, adopted) may be the first of its queue here.
                    self._queue_pending[rec.queue] = self._queue_pending.get(rec.queue, 0) + 1
            finished = status in FINISHED_SET
            if status == "running":
                if rec.start_us is None:
                    rec.start_us = time_ns() // 1000
            elif finished:
                rec.end_us = end_us = time_ns() // 1000
                if rec.start_us is not None:
                    assert rec.agg is not None
                    self._metrics.finished_after(rec.agg, (end_us - rec.start_us) / 1e6)
            if error is not None:
                rec.error = error
            if stacktrace is not None:
                rec.stacktrace = stacktrace
            if retries_used is not None:
                rec.retries_used = retries_used
            rec.cache = None
            if (
                status in FREES_KEY
                and rec.idempotency_key is not None
                and self._idem.get(rec.idempotency_key) == task_id
            ):
                del self._idem[rec.idempotency_key]
            self._ring.push(
                ("status", rec, status, rec.start_us, rec.end_us, rec.retries_used, rec.error, rec.stacktrace)
            )
            signal = None
            if finished:
                self._finished.add(rec.key)
                if self._persist:
                    self._dirty.add(task_id)
                    signal = self._unwritten_signal()
                elif len(self._finished) > self._max_history:
                    self._evict([self._records[self._finished.pop_oldest()[1]]])
            elif rec.journal and row_changed and self._persist:
                self._dirty.add(task_id)
                signal = self._unwritten_signal()
        if signal is not None:
            self._left_unwritten(signal)
        return True

    def append_log(self, task_id: str, line: str) -> None:
        if type(line) is not str:
            raise TypeError(f"a log line must be a str, not {type(line).__name__}")
        with self._lock:
            rec = self._records.get(task_id)
            if rec is None:
                raise KeyError(task_id)
            logs = rec.logs
            if logs is None:
                logs = rec.logs = deque(maxlen=self._max_log_lines)
            if len(logs) == logs.maxlen:
                rec.logs_dropped += 1
            logs.append(line)
            rec.cache = None
            signal = None
            if self._persist and rec.status in FINISHED_SET:
                self._dirty.add(task_id)
                signal = self._unwritten_signal()
            self._ring.push(("log", task_id, line))
        if signal is not None:
            self._left_unwritten(signal)

    # -- index upkeep ----------------------------------------------------------------------

    def _index(self, rec: Record) -> None:
        key = rec.key
        self._all.add(key)
        self._by_status[rec.status].add(key)
        by_name = self._by_name.get(rec.func_name)
        if by_name is None:
            by_name = self._by_name[rec.func_name] = KeyIndex()
        by_name.add(key)

    def _retire_status(self, status: str, count: int) -> None:
        self._by_status[status].retire(count, self._in_status[status])

    def _in_status_check(self, status: str) -> Callable[[Key], bool]:
        records = self._records

        def is_live(key: Key) -> bool:
            rec = records.get(key[1])
            return rec is not None and rec.key == key and rec.status == status

        return is_live

    def _present(self, key: Key) -> bool:
        # The whole key: a deleted record's id may come back (adopted) with another creation time.
        rec = self._records.get(key[1])
        return rec is not None and rec.key == key

    def _evict(self, victims: list[Record]) -> None:
        """Drop finished records from memory, with their idempotency keys; their index entries go stale.

        The caller has already taken them out of ``_finished``.
        """
        records, idem = self._records, self._idem
        if len(victims) == 1:  # the common case: one record leaves as another finishes
            rec = victims[0]
            del records[rec.task_id]
            key = rec.idempotency_key
            if key is not None and idem.get(key) == rec.task_id:
                del idem[key]
            self._dirty.discard(rec.task_id)
            self._all.retire(1, self._present)
            self._by_status[rec.status].retire(1, self._in_status[rec.status])
            by_name = self._by_name[rec.func_name]
            by_name.retire(1, self._present)
            if by_name.live() == 0:
                del self._by_name[rec.func_name]
            return
        statuses: dict[str, int] = {}
        names: dict[str, int] = {}
        for rec in victims:
            del records[rec.task_id]
            key = rec.idempotency_key
            if key is not None and idem.get(key) == rec.task_id:
                del idem[key]
            self._dirty.discard(rec.task_id)
            statuses[rec.status] = statuses.get(rec.status, 0) + 1
            names[rec.func_name] = names.get(rec.func_name, 0) + 1
        self._all.retire(len(victims), self._present)
        for status, count in statuses.items():
            self._retire_status(status, count)
        for name, count in names.items():
            by_name = self._by_name[name]
            by_name.retire(count, self._present)
            if by_name.live() == 0:
                del self._by_name[name]

    def _evict_flushed(self) -> None:
        """The oldest finished records beyond ``max_history`` that are on disk and unchanged leave memory.

        A finished record is dirty from the moment it finishes until a flush writes it, so "not dirty"
        means "on disk, as in memory".
        """
        excess = len(self._finished) - self._max_history
        if excess <= 0:
            return
        records, dirty = self._records, self._dirty
        victims: list[Record] = []
        for _, task_id in self._finished.oldest():
            rec = records[task_id]
            if task_id not in dirty:
                victims.append(rec)
                if len(victims) == excess:
                    break
        self._finished.remove({rec.task_id for rec in victims})
        self._evict(victims)

    # -- the snapshot file -----------------------------------------------------------------

    @contextmanager
    def _file_change(self) -> Iterator[SnapshotDb | None]:
        """The open file (None without one) with its lock held, for a change that writes it.

        Holding the snapshot lock throughout keeps flushes, claims and deletions from interleaving.
        Raises ``SnapshotError`` once the file is closed.
        """
        db = self._db
        if db is None:
            if self._db_path is not None:
                raise _closed(self._db_path)
            yield None
            return
        with db.lock:
            if db.closed:
                raise _closed(self._db_path)
            yield db

    def flush(self) -> int:
        with self._file_change() as db:
            if db is None:
                return 0
            with self._lock:
                dirty, self._dirty = self._dirty, set()
                me, records = self._instance_id, self._records
                parts = [
                    rec.row_parts(me if rec.journal and rec.status not in FINISHED_SET else None)
                    for rec in map(records.__getitem__, dirty)
                ]
            try:
                if parts:
                    db.write_locked(parts)
            except BaseException as exc:
                with self._lock:
                    self._dirty |= dirty
                    self._health.failed(str(exc))
                raise
            with self._lock:
                self._health.succeeded(time_ns() // 1000)
                self._evict_flushed()
        return len(parts)

    def write_behind(self, threshold: int | None, /) -> None:
        if threshold is not None and threshold < 1:
            raise ValueError(f"threshold must be at least 1, got {threshold}")
        self._write_behind_at = threshold

    def on_unwritten(self, wake: Callable[[], object] | None, /) -> None:
        if wake is not None and not callable(wake):
            raise TypeError(f"on_unwritten() wants a callable or None, got {type(wake).__name__}")
        with self._lock:
            self._wake = wake

    def _unwritten_signal(self) -> _Signal:
        """Under the lock, after a change left a record unwritten: the wake (taken) and whether a write is due."""
        wake, self._wake = self._wake, None
        return wake, self._write_behind_due()

    def _left_unwritten(self, signal: _Signal) -> None:
        """Out of the lock, after ``_unwritten_signal``: wake the owner, and start a flush if one is due."""
        wake, due = signal
        if wake is not None:
            try:
                wake()
            except Exception:  # the change is made: the caller must not see it fail
                logger.exception("fastapi_taskflow: the on_unwritten callable %r raised", wake)
        if due and self._writing_behind.acquire(blocking=False):
            threading.Thread(target=self._write_behind, name="taskflow-flush", daemon=True).start()

    def _write_behind_due(self) -> bool:
        """Under the lock: whether enough records wait for a flush of write_behind's (none while writes fail)."""
        at = self._write_behind_at
        return at is not None and self._db is not None and self._health.ok and len(self._dirty) >= at

    def _write_behind(self) -> None:
        """Flush while enough records wait; holds ``_writing_behind`` from its caller."""
        while True:
            try:
                # A failed write is counted in the health by flush(); its records wait for the next.
                with suppress(SnapshotError):
                    self.flush()
            finally:
                self._writing_behind.release()
            with self._lock:
                due = self._write_behind_due()
            if not (due and self._writing_behind.acquire(blocking=False)):
                return

    def claim_orphans(self) -> list[dict[str, object]]:
        owners = self._owners
        alive: dict[str, bool] = {}

        def take(row: Row) -> bool:
            owner = row[19]
            if owner is not None:
                if owner not in alive:
                    alive[owner] = owners is not None and owner_alive(owners, owner)
                if alive[owner]:
                    return False
            with self._lock:
                return row[0] not in self._records

        with self._file_change() as db:
            if db is None:
                return []
            rows = db.claim_locked(self._instance_id, take)
            with self._lock:
                claimed = [self._load_journaled(Record.from_row(row)) for row in rows]
        if owners is not None:
            remove_owner_files(owners, [owner for owner, is_alive in alive.items() if not is_alive])
        return claimed

    def adopt(self, rows: list[dict[str, object]]) -> list[dict[str, object]]:
        # Every row is checked before anything is written: one bad row adopts nothing.
        checked = [_task_row_values(index, row) for index, row in enumerate(rows)]
        records = [_adoptable(row) for row in checked]
        with self._file_change() as db:
            if db is None:
                raise SnapshotError(_NO_FILE)
            fresh: dict[str, Record] = {}
            with self._lock:
                for rec in records:
                    if rec.task_id not in self._records:
                        fresh.setdefault(rec.task_id, rec)
            written = db.adopt_locked(list(fresh.values()), self._instance_id)
            with self._lock:
                # A row taken over was in the file, which open counted, as a claimed row.
                return [self._load_journaled(rec, counted=taken_over, announce=True) for rec, taken_over in written]

    def _load_journaled(self, rec: Record, *, counted: bool = True, announce: bool = False) -> dict[str, object]:
        """Hold a record read from the file as a journaled one of this store. ``counted``: the metrics hold it
        already (open counted its row), else it is counted as created here; ``announce``: a ``created`` event
        carries it. Twin of ``load_journaled`` in ``store.rs``."""
        logs = rec.logs
        if logs is not None:
            rec.logs_dropped += max(0, len(logs) - self._max_log_lines)
            rec.logs = deque(logs, maxlen=self._max_log_lines)
        rec.journal = True
        if not counted:
            self._metrics.load(rec.func_name, rec.status, None, None)
        rec.agg = self._metrics.aggregate(rec.func_name)
        self._records[rec.task_id] = rec
        self._index(rec)
        if rec.status == "pending":
            self._queue_pending[rec.queue] = self._queue_pending.get(rec.queue, 0) + 1
        if rec.idempotency_key is not None:
            self._idem.setdefault(rec.idempotency_key, rec.task_id)
        if announce:
            self._ring.push(
                ("created", rec, rec.status, rec.start_us, rec.end_us, rec.retries_used, rec.error, rec.stacktrace)
            )
        return rec.to_dict()

    def delete_finished_before(self, end_before_us: int) -> tuple[int, int]:
        with self._file_change() as db:
            with self._lock:
                records = self._records
                ids = [
                    task_id
                    for _, task_id in self._finished.oldest()
                    if (end_us := records[task_id].end_us) is not None and end_us < end_before_us
                ]
            # A memory victim's own row goes too, whatever it says (a journal row not yet rewritten).
            rows = [] if db is None else db.delete_locked(ids, ended_before=end_before_us)
            with self._lock:
                deleted = self._forget(ids, rows)
        return deleted, len(rows)

    def delete(self, task_id: str) -> bool:
        with self._file_change() as db:
            with self._lock:
                rec = self._records.get(task_id)
            if rec is not None and rec.status not in FINISHED_SET:
                return False
            rows = [] if db is None else db.delete_locked([task_id], finished_only=rec is None)
            with self._lock:
                deleted = self._forget([] if rec is None else [task_id], rows)
        return deleted > 0 or bool(rows)

    def _forget(self, ids: list[str], rows: list[DeletedRow]) -> int:
        """Drop the deleted finished records ``ids`` from memory, and make the metrics forget them and the
        deleted ``rows`` of records not in memory; returns how many left memory."""
        records, metrics = self._records, self._metrics
        # Without a file, a record may have left memory since it was picked (retention).
        victims = [rec for rec in map(records.get, ids) if rec is not None]
        for rec in victims:
            metrics.forget(rec.func_name, rec.status, rec.start_us, rec.end_us)
        gone = {rec.task_id for rec in victims}
        for task_id, func_name, status, start_us, end_us in rows:
            if task_id not in gone:
                metrics.forget(func_name, status, start_us, end_us)
        if victims:
            self._finished.remove(gone)
            self._evict(victims)
        return len(victims)

    def close(self) -> None:
        """Close the file; from then on finished records leave memory as they would without one."""
        db, self._db = self._db, None
        if db is not None:
            db.close()
            if self._owner_lock is not None:
                self._owner_lock.release()
            with self._lock:
                self._persist = False
                excess = len(self._finished) - self._max_history
                if excess > 0:
                    self._evict([self._records[self._finished.pop_oldest()[1]] for _ in range(excess)])

    # -- schedule locks, one-off schedules and metadata (in the file) -----------------------

    def _open_file(self) -> SnapshotDb:
        """The snapshot file; ``SnapshotError`` without one or once it is closed."""
        db = self._db
        if db is None:
            raise SnapshotError(_NO_FILE) if self._db_path is None else _closed(self._db_path)
        return db

    def acquire_lock(self, key: str, ttl: float) -> bool:
        ttl_us = _ttl_micros(ttl)
        db = self._open_file()
        now = time_ns() // 1000
        return db.acquire_lock(key, now, min(now + ttl_us, _I64_MAX))

    def save_scheduled(
        self,
        run_key: str,
        func_name: str,
        fire_us: int,
        *,
        args_json: bytes | None = None,
        kwargs_json: bytes | None = None,
        encrypted_payload: bytes | None = None,
        queue: str = "default",
        priority: int | None = None,
        idempotency_key: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        checked = _check_tags(tags)
        _check_bytes(args_json, kwargs_json, encrypted_payload)
        db = self._open_file()
        row = (
            run_key,
            func_name,
            fire_us,
            time_ns() // 1000,
            args_json,
            kwargs_json,
            encrypted_payload,
            queue,
            priority,
            idempotency_key,
            dumps(checked or {}).decode(),
        )
        db.save_scheduled(row)

    def load_due(self, before_us: int, limit: int = 1_000) -> list[dict[str, object]]:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        return [_scheduled_dict(row) for row in self._open_file().load_due(before_us, limit)]

    def delete_scheduled(self, run_key: str) -> bool:
        return self._open_file().delete_scheduled(run_key)

    def fire_scheduled(
        self, run_key: str, *, executor: str | None = None, journal: bool = True
    ) -> tuple[str, bool] | None:
        db = self._open_file()
        now = time_ns() // 1000
        cutoff = self._key_cutoff(now)

        def decide(row: ScheduledRow, on_disk: list[str]) -> tuple[str | Record, RowParts | None]:
            """The holder of the one-off's key, or its new record with the journal row to write."""
            key = row[9]
            if key is not None:
                holder = self._memory_holder(key, cutoff)
                if holder is None:
                    holder = self._disk_holder(on_disk)
                if holder is not None:
                    return holder, None
            tags = _stored_tags(row[10]) or None
            rec = Record(
                new_task_id(), row[1], "pending", now, row[7], executor, row[8], "scheduled", tags, key, row[4],
                row[5], row[6], None,
            )  # fmt: skip
            return rec, (rec.row_parts(self._instance_id) if journal and self._persist else None)

        # Keyed creates wait: the key check and the creation span the file write, and the record is
        # held only after the commit.
        with self._keyed:
            made = db.fire(run_key, cutoff, decide)
            if made is None:
                return None
            if isinstance(made, str):
                return made, False
            self._add(made, journal, written=True)
        return made.task_id, True

    def changed_rows(self, after_seq: int, limit: int = 1_000) -> tuple[list[dict[str, object]], int]:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        rows = self._open_file().changed_rows(after_seq, limit)
        changed = [dict(zip(TASK_ROW_KEYS, row[:-1], strict=True)) for row in rows]
        return changed, (int(rows[-1][-1]) if rows else after_seq)

    def save_metadata(self, key: str, value: str) -> None:
        self._open_file().save_metadata(key, value)

    def load_metadata(self, key: str) -> str | None:
        return self._open_file().load_metadata(key)

    # -- reads ---------------------------------------------------------------------------

    def memory_len(self) -> int:
        return len(self._records)

    def get(self, task_id: str) -> dict[str, object] | None:
        with self._lock:
            rec = self._records.get(task_id)
            if rec is not None:
                return rec.to_dict()
        row = self._disk_get(task_id)
        return None if row is None else Record.from_row(row).to_dict()

    def get_json(self, task_id: str) -> bytes | None:
        with self._lock:
            rec = self._records.get(task_id)
            if rec is not None:
                return rec.detail_json()
        row = self._disk_get(task_id)
        return None if row is None else Record.from_row(row).detail_json()

    def _disk_get(self, task_id: str) -> Row | None:
        db = self._db
        return None if db is None else db.get(task_id)

    def page_json(
        self,
        *,
        status: str | None = None,
        func_name: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        tag: str | None = None,
    ) -> tuple[bytes, str | None]:
        if status is not None and status not in KNOWN:
            raise ValueError(f"unknown status {status!r}; expected one of {', '.join(STATUSES)}")
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        before = None if cursor is None else _parse_cursor(cursor)
        tag_pair = None if tag is None else _parse_tag(tag)
        want = limit + 1  # one more than the page tells whether another page follows
        # Disk first, memory second: a record evicted in between was on disk before it left memory.
        db = self._db
        rows: list[Row] = []
        read_on = before
        while True:
            batch = [] if db is None else db.page(read_on, status, func_name, want, tag_pair)
            rows += batch
            with self._lock:
                found = self._page_from_memory(before, status, func_name, want, tag_pair)
                records = self._records
                # Memory has the truth of its records: a journaled record's row lags until the next flush, and may
                # match filters the record no longer does.
                disk = [Record.from_row(row) for row in rows if row[0] not in records]
                if len(batch) == want:
                    # The rows left out are made up for by reading on, until the rows kept and the memory entries
                    # newer than the last row read are enough for the page (as ``disk_page`` in ``store.rs``).
                    last: Key = (batch[-1][3], batch[-1][0])
                    if len(disk) + sum(1 for rec in found if rec.key > last) < want:
                        read_on = last
                        continue
                if disk:
                    found = sorted(found + disk, key=lambda r: r.key, reverse=True)[:want]
                page = found[:limit]
                body = b"[" + b",".join([rec.to_json() for rec in page]) + b"]"
            return body, (_cursor(page[-1].key) if len(found) > limit else None)

    def _page_from_memory(
        self, before: Key | None, status: str | None, func_name: str | None, want: int, tag: tuple[str, str] | None
    ) -> list[Record]:
        # No tag index in memory: the tag filter walks the candidate index, bounded by the
        # records memory holds (max_history plus live tasks).
        # Every entry is checked against the record: stale entries are skipped, and with two
        # filters the shorter index is walked and the other filter checked.
        index = self._all
        if status is not None:
            index = self._by_status[status]
            if func_name is not None:
                by_name = self._by_name.get(func_name)
                if by_name is None:
                    return []
                if by_name.live() < index.live():
                    index = by_name
        elif func_name is not None:
            by_name = self._by_name.get(func_name)
            if by_name is None:
                return []
            index = by_name
        keys = index.keys
        pos = len(keys) if before is None else bisect_left(keys, before)
        records = self._records
        out: list[Record] = []
        while pos > 0 and len(out) < want:
            pos -= 1
            key = keys[pos]
            rec = records.get(key[1])
            if (
                rec is not None
                and rec.key == key
                and (status is None or rec.status == status)
                and (func_name is None or rec.func_name == func_name)
                and (tag is None or (rec.tags is not None and rec.tags.get(tag[0]) == tag[1]))
            ):
                out.append(rec)
        return out

    def metrics_json(self) -> bytes:
        with self._lock:
            obj = self._metrics.to_obj()
            obj["snapshot"] = None if self._db_path is None else self._health.to_obj(len(self._dirty))
        return dumps(obj)

    def metrics_prometheus(self) -> bytes:
        with self._lock:
            by_name = self._metrics.by_name
            groups = [(name, by_name[name]) for name in sorted(by_name) if by_name[name].total]
            health = self._health
            snapshot = None if self._db_path is None else (health.ok, len(self._dirty), health.failed_writes)
            return render_prometheus(groups, sorted(self._queue_pending.items()), snapshot)

    def events_since(self, after: int, limit: int = 1_000) -> tuple[list[tuple[int, bytes]], bool]:
        if after < 0:
            raise ValueError(f"after must be at least 0, got {after}")
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        with self._lock:
            events, missed = self._ring.since(after, limit)
        out = [(seq, event_json(seq, event)) for seq, event in events]
        with self._lock:
            for (seq, event), (_, data) in zip(events, out, strict=True):
                if event is not data:
                    self._ring.replace(seq, event, data)
        return out, missed
