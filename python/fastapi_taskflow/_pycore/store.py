"""TaskStore: records, their indexes, idempotency keys, retention, metrics, events and the snapshot file.

Lock order: the snapshot lock before the state lock; no disk I/O under the state lock.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections import deque
from collections.abc import Callable
from time import time_ns

from .events import Event, event_json
from .ids import new_task_id
from .index import FinishedQueue, KeyIndex
from .jsonenc import dumps
from .metrics import Metrics
from .prometheus import render as render_prometheus
from .record import Key, Record, Row
from .ring import EventRing
from .snapshot import SnapshotDb, SnapshotError
from .statuses import ALLOWED, FINISHED_SET, FREES_KEY, KNOWN, STATUSES

_I64_MAX = 2**63 - 1


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


def _closed(path: str | None) -> SnapshotError:
    return SnapshotError(f"{path}: the snapshot file is closed; create a new TaskStore to reopen it")


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
        "_idem",
        "_in_status",
        "_lock",
        "_max_history",
        "_max_log_lines",
        "_metrics",
        "_persist",
        "_queue_pending",
        "_records",
        "_ring",
    )

    def __init__(
        self,
        db_path: str | None = None,
        *,
        max_history: int = 10_000,
        ring_capacity: int = 65_536,
        max_log_lines: int = 1_000,
    ) -> None:
        self._max_history = _positive("max_history", max_history)
        self._max_log_lines = _positive("max_log_lines", max_log_lines)
        self._ring: EventRing[Event] = EventRing(_positive("ring_capacity", ring_capacity))
        self._lock = threading.Lock()
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
        # Ids of finished records changed since the last flush (only kept when there is a file).
        self._dirty: set[str] = set()
        self._db_path = db_path
        # Whether finished records must reach the file before they may leave memory; False
        # without a file and once it is closed.
        self._persist = db_path is not None
        self._db: SnapshotDb | None = None
        if db_path is not None:
            db = SnapshotDb(db_path)
            try:
                rows = db.metric_rows()
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
    ) -> tuple[str, bool]:
        if tags:
            if not all(type(k) is str and type(v) is str for k, v in tags.items()):
                raise TypeError("tags must map str to str")
            tags = dict(tags)
        else:
            tags = None
        if (args_json is not None and type(args_json) is not bytes) or (
            kwargs_json is not None and type(kwargs_json) is not bytes
        ):
            raise TypeError("args_json and kwargs_json must be bytes or None")
        task_id = new_task_id()
        with self._lock:
            if idempotency_key is not None:
                holder = self._idem.get(idempotency_key)
                if holder is not None:
                    return holder, False
                self._idem[idempotency_key] = task_id
            rec = Record(
                task_id,
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
            )
            rec.agg = self._metrics.created(func_name)
            self._queue_pending[queue] = self._queue_pending.get(queue, 0) + 1
            self._records[task_id] = rec
            key = rec.key
            self._all.add(key)
            self._by_status["pending"].add(key)
            by_name = self._by_name.get(func_name)
            if by_name is None:
                by_name = self._by_name[func_name] = KeyIndex()
            by_name.add(key)
            self._ring.push(("created", rec, "pending", None, None, 0, None, None))
        return task_id, True

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
            if old != status:
                rec.status = status
                self._by_status[status].add(rec.key)
                self._retire_status(old, 1)
                assert rec.agg is not None
                self._metrics.moved(rec.agg, old, status)
                if old == "pending":
                    self._queue_pending[rec.queue] = max(0, self._queue_pending[rec.queue] - 1)
                elif status == "pending":
                    self._queue_pending[rec.queue] += 1
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
            if finished:
                self._finished.add(rec.key)
                if self._persist:
                    self._dirty.add(task_id)
                elif len(self._finished) > self._max_history:
                    self._evict([self._records[self._finished.pop_oldest()[1]]])
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
            if self._persist and rec.status in FINISHED_SET:
                self._dirty.add(task_id)
            self._ring.push(("log", task_id, line))

    # -- index upkeep ----------------------------------------------------------------------

    def _retire_status(self, status: str, count: int) -> None:
        self._by_status[status].retire(count, self._in_status[status])

    def _in_status_check(self, status: str) -> Callable[[Key], bool]:
        records = self._records

        def is_live(key: Key) -> bool:
            rec = records.get(key[1])
            return rec is not None and rec.status == status

        return is_live

    def _present(self, key: Key) -> bool:
        return key[1] in self._records

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

    def flush(self) -> int:
        db = self._db
        if db is None:
            if self._db_path is not None:
                raise _closed(self._db_path)
            return 0
        # Holding the snapshot lock throughout keeps concurrent flushes from writing out of order.
        with db.lock:
            if db.closed:
                raise _closed(self._db_path)
            with self._lock:
                dirty, self._dirty = self._dirty, set()
                parts = [self._records[task_id].row_parts() for task_id in dirty]
            if parts:
                try:
                    db.write_locked(
                        [Record.to_row(p) for p in parts],
                        [(rec.task_id, k, v, rec.key[0]) for rec, _, tags, _ in parts if tags for k, v in tags.items()],
                    )
                except BaseException:
                    with self._lock:
                        self._dirty |= dirty
                    raise
            with self._lock:
                self._evict_flushed()
        return len(parts)

    def close(self) -> None:
        """Close the file; from then on finished records leave memory as they would without one."""
        db, self._db = self._db, None
        if db is not None:
            db.close()
            with self._lock:
                self._persist = False
                excess = len(self._finished) - self._max_history
                if excess > 0:
                    self._evict([self._records[self._finished.pop_oldest()[1]] for _ in range(excess)])

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
        rows = [] if db is None else db.page(before, status, func_name, want, tag_pair)
        with self._lock:
            found = self._page_from_memory(before, status, func_name, want, tag_pair)
            records = self._records
            disk = [Record.from_row(row) for row in rows if row[0] not in records]
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
            rec = records.get(keys[pos][1])
            if (
                rec is not None
                and (status is None or rec.status == status)
                and (func_name is None or rec.func_name == func_name)
                and (tag is None or (rec.tags is not None and rec.tags.get(tag[0]) == tag[1]))
            ):
                out.append(rec)
        return out

    def metrics_json(self) -> bytes:
        with self._lock:
            obj = self._metrics.to_obj()
        return dumps(obj)

    def metrics_prometheus(self) -> bytes:
        with self._lock:
            by_name = self._metrics.by_name
            groups = [(name, by_name[name]) for name in sorted(by_name) if by_name[name].total]
            return render_prometheus(groups, sorted(self._queue_pending.items()))

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
