"""The SQLite snapshot file: schema and migrations, history flush, page and record reads, orphan claims, deletions,
schedule locks, one-off schedules, metadata, and the rows to replicate (changed rows, adoption).

The file format is shared with ``snapshot.rs`` in the Rust core: either core opens a
file the other wrote. Change the schema only by appending to ``MIGRATIONS``.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final, TypeVar

from .record import Key, Record, Row, RowParts
from .statuses import FINISHED


class SnapshotError(RuntimeError):
    """The snapshot database cannot be opened, read or written.

    The message names the file and says what to do about it.
    """


class CorruptSnapshotError(SnapshotError):
    """The file exists but is not a usable SQLite database (damaged, or not SQLite at all).

    Raised by ``TaskStore(db_path)`` only; the message names the file and the fix.
    """


SnapshotError.__module__ = CorruptSnapshotError.__module__ = "fastapi_taskflow._pycore"

#: Statements of schema version i + 1, each list applied in one transaction.
MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        "CREATE TABLE task_history (task_id TEXT PRIMARY KEY, func_name TEXT NOT NULL, status TEXT NOT NULL,"
        " created_us INTEGER NOT NULL, start_us INTEGER, end_us INTEGER, retries_used INTEGER NOT NULL DEFAULT 0,"
        " error TEXT, stacktrace TEXT, logs_json TEXT NOT NULL DEFAULT '[]', tags_json TEXT NOT NULL DEFAULT '{}',"
        " source TEXT NOT NULL DEFAULT 'manual', priority INTEGER, executor TEXT,"
        " queue TEXT NOT NULL DEFAULT 'default', idempotency_key TEXT, args_json BLOB, kwargs_json BLOB)",
        "CREATE INDEX task_history_created ON task_history(created_us, task_id)",
        "CREATE INDEX task_history_status ON task_history(status, created_us, task_id)",
        "CREATE INDEX task_history_name ON task_history(func_name, created_us, task_id)",
    ),
    (
        "CREATE TABLE task_tags (task_id TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,"
        " created_us INTEGER NOT NULL, PRIMARY KEY (key, value, created_us, task_id)) WITHOUT ROWID",
        "INSERT OR IGNORE INTO task_tags (task_id, key, value, created_us)"
        " SELECT h.task_id, j.key, j.value, h.created_us FROM task_history AS h,"
        " json_each(CASE WHEN json_valid(h.tags_json) AND json_type(h.tags_json) = 'object'"
        " THEN h.tags_json ELSE '{}' END) AS j"
        " WHERE j.type = 'text'",
        "ALTER TABLE task_history ADD COLUMN logs_dropped INTEGER NOT NULL DEFAULT 0",
    ),
    (
        "ALTER TABLE task_history ADD COLUMN owner TEXT",
        "ALTER TABLE task_history ADD COLUMN encrypted_payload BLOB",
        "ALTER TABLE task_history ADD COLUMN retry_of TEXT",
        "CREATE INDEX task_history_owner ON task_history(owner) WHERE owner IS NOT NULL",
        "CREATE INDEX task_history_idempotency ON task_history(idempotency_key, created_us)"
        " WHERE idempotency_key IS NOT NULL",
        "CREATE INDEX task_history_end ON task_history(end_us) WHERE end_us IS NOT NULL",
    ),
    (
        "CREATE TABLE task_schedule_locks (lock_key TEXT PRIMARY KEY, expires_us INTEGER NOT NULL)",
        "CREATE TABLE task_scheduled_once (run_key TEXT PRIMARY KEY, func_name TEXT NOT NULL, fire_us INTEGER NOT NULL,"
        " created_us INTEGER NOT NULL, args_json BLOB, kwargs_json BLOB, encrypted_payload BLOB,"
        " queue TEXT NOT NULL DEFAULT 'default', priority INTEGER, idempotency_key TEXT,"
        " tags_json TEXT NOT NULL DEFAULT '{}')",
        "CREATE INDEX task_scheduled_once_fire ON task_scheduled_once(fire_us, run_key)",
        "CREATE TABLE task_metadata (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    ),
    (
        "ALTER TABLE task_history ADD COLUMN sync_seq INTEGER",
        "CREATE INDEX task_history_sync ON task_history(sync_seq) WHERE sync_seq IS NOT NULL",
    ),
    # Cheaper finished rows: the status index leaves out success (pages of another status state
    # _NOT_SUCCESS to use it), and retention walks the creation index instead of task_history_end.
    (
        "DROP INDEX task_history_end",
        "DROP INDEX task_history_status",
        "CREATE INDEX task_history_status ON task_history(status, created_us, task_id) WHERE status <> 'success'",
    ),
    # Slimmer indexes: the task id leaves the creation and name indexes; pages sort the few rows
    # of one created_us themselves.
    (
        "DROP INDEX task_history_created",
        "CREATE INDEX task_history_created ON task_history(created_us)",
        "DROP INDEX task_history_name",
        "CREATE INDEX task_history_name ON task_history(func_name, created_us)",
    ),
)
SCHEMA_VERSION: Final[int] = len(MIGRATIONS)

COLUMNS: Final[tuple[str, ...]] = (
    "task_id",
    "func_name",
    "status",
    "created_us",
    "start_us",
    "end_us",
    "retries_used",
    "error",
    "stacktrace",
    "logs_json",
    "tags_json",
    "source",
    "priority",
    "executor",
    "queue",
    "idempotency_key",
    "args_json",
    "kwargs_json",
    "logs_dropped",
    "owner",
    "encrypted_payload",
    "retry_of",
)
#: The keys of a row as the shared backends store it, in order. Twin of ``TaskRow`` in ``backends/base.py``.
TASK_ROW_KEYS: Final[tuple[str, ...]] = (
    "task_id",
    "func_name",
    "status",
    "created_us",
    "start_us",
    "end_us",
    "retries_used",
    "error",
    "stacktrace",
    "logs_json",
    "logs_dropped",
    "tags_json",
    "source",
    "priority",
    "executor",
    "queue",
    "idempotency_key",
    "args_json",
    "kwargs_json",
    "encrypted_payload",
    "retry_of",
    "owner",
)
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM task_history"
#: Rows written after ``?1``, in the order they were written: a walk of ``task_history_sync``. Twin of
#: ``Snapshot::changed_rows`` in ``snapshot.rs``.
_CHANGED = (
    f"SELECT {', '.join(TASK_ROW_KEYS)}, sync_seq FROM task_history WHERE sync_seq > ?1 ORDER BY sync_seq LIMIT ?2"
)
#: The highest ``sync_seq`` the file has given: the column's maximum, or the floor a deletion of the newest
#: rows left behind, so that a number is never given twice. Read once per write transaction, which numbers
#: its rows up from here. Twin of ``SYNC_SEQ_HIGH`` in ``snapshot.rs``.
_SYNC_SEQ_HIGH = (
    "SELECT max(coalesce((SELECT max(sync_seq) FROM task_history WHERE sync_seq IS NOT NULL), 0),"
    " coalesce((SELECT CAST(value AS INTEGER) FROM task_metadata WHERE key = 'sync_seq_floor'), 0))"
)
#: Run after a deletion with ``?1`` = the ``_SYNC_SEQ_HIGH`` read before it: when the rows holding the highest
#: numbers are gone, the number is kept as the floor. Twin of ``KEEP_SYNC_FLOOR`` in ``snapshot.rs``.
_KEEP_SYNC_FLOOR = (
    "INSERT INTO task_metadata (key, value) SELECT 'sync_seq_floor', ?1"
    " WHERE ?1 > coalesce((SELECT max(sync_seq) FROM task_history WHERE sync_seq IS NOT NULL), 0)"
    " ON CONFLICT(key) DO UPDATE SET value = excluded.value"
)
_H_COLUMNS = ", ".join(f"h.{c}" for c in COLUMNS)
#: Tags never change after a record is created, so a re-flushed record re-inserts the same rows:
#: ignoring duplicates replaces the delete (which, keyed by tag, would scan the table). Twin of
#: ``INSERT_TAG`` in ``snapshot.rs``.
_INSERT_TAG = "INSERT OR IGNORE INTO task_tags (task_id, key, value, created_us) VALUES (?, ?, ?, ?)"
_FINISHED_SQL = "(" + ", ".join(f"'{status}'" for status in FINISHED) + ")"
#: The tags of one stored record, found through its ``tags_json`` (read as migration 2 reads it),
#: so that each delete is a primary key lookup on ``task_tags``.
_DELETE_TAGS = (
    "DELETE FROM task_tags WHERE task_id = ?1 AND (key, value, created_us) IN"
    " (SELECT j.key, j.value, h.created_us FROM task_history AS h,"
    " json_each(CASE WHEN json_valid(h.tags_json) AND json_type(h.tags_json) = 'object'"
    " THEN h.tags_json ELSE '{}' END) AS j"
    " WHERE h.task_id = ?1 AND j.type = 'text')"
)
#: ``(task_id, func_name, status, start_us, end_us)``: what the metrics need of a deleted row.
DeletedRow = tuple[str, str, str, int | None, int | None]
_DELETED = "SELECT task_id, func_name, status, start_us, end_us FROM task_history"
#: Finished rows that ended before the (twice given) time, found through the creation index: a row
#: that ended before it was created before it. The unary plus keeps the planner off the status index.
_ENDED_BEFORE = _DELETED + f" WHERE created_us < ? AND end_us < ? AND +status IN {_FINISHED_SQL}"
#: The condition of the partial ``task_history_status``, which a query must state word for word to use it.
_NOT_SUCCESS = "status <> 'success'"
_UPSERT_COLUMNS = (*COLUMNS, "sync_seq")
_UPSERT = (
    f"INSERT INTO task_history ({', '.join(_UPSERT_COLUMNS)}) VALUES ({', '.join('?' * len(_UPSERT_COLUMNS))})"
    f" ON CONFLICT(task_id) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in _UPSERT_COLUMNS[1:])}"
)
#: The idempotency key holders of a key created after a cutoff; walks ``task_history_idempotency``, then
#: filters the few rows of one key. Twin of ``KEY_HOLDERS`` in ``snapshot.rs``.
_KEY_HOLDERS = (
    "SELECT task_id FROM task_history WHERE idempotency_key = ?1 AND created_us > ?2"
    " AND status IN ('pending', 'running', 'success') ORDER BY created_us DESC"
)

#: A row of ``task_scheduled_once``: ``(run_key, func_name, fire_us, created_us, args_json, kwargs_json,
#: encrypted_payload, queue, priority, idempotency_key, tags_json)``.
ScheduledRow = tuple[str, str, int, int, bytes | None, bytes | None, bytes | None, str, int | None, str | None, str]
_SCHEDULED_COLUMNS = (
    "run_key, func_name, fire_us, created_us, args_json, kwargs_json, encrypted_payload, queue, priority,"
    " idempotency_key, tags_json"
)
#: Saving a run key again reschedules it: every column is replaced. Twin of ``SAVE_SCHEDULED`` in ``snapshot.rs``.
_SAVE_SCHEDULED = (
    f"INSERT OR REPLACE INTO task_scheduled_once ({_SCHEDULED_COLUMNS})"
    " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
)
_SELECT_SCHEDULED = f"SELECT {_SCHEDULED_COLUMNS} FROM task_scheduled_once"
_DELETE_SCHEDULED = "DELETE FROM task_scheduled_once WHERE run_key = ?1"

_T = TypeVar("_T")

#: Seconds a statement waits for another connection's lock before it fails with "database is locked". Twin of
#: ``BUSY_TIMEOUT`` in ``snapshot.rs``.
BUSY_TIMEOUT: Final[float] = 5.0
#: The longest pause (seconds) between two attempts of ``_switch_to_wal``.
_WAL_RETRY_PAUSE_MAX: Final[float] = 0.02


def _switch_to_wal(conn: sqlite3.Connection) -> None:
    """Switch the file to WAL mode.

    On a file still in rollback mode (a new one), the switch reads the header under a shared lock and then upgrades
    it to a write lock; SQLite fails that upgrade at once instead of calling the busy handler, because two
    connections each holding a shared lock and waiting for the other's would wait forever. So when several
    processes open a new file together, all but one get "database is locked" here: they retry, backing off, for as
    long as the busy timeout would have waited. Once the file is in WAL mode the switch writes nothing and cannot
    meet that case. Twin of ``switch_to_wal`` in ``snapshot.rs``.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT
    pause = 0.001
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            # SQLITE_BUSY's message (``sqlite_errorcode`` is new in Python 3.11).
            if "database is locked" not in str(exc) or time.monotonic() + pause >= deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, _WAL_RETRY_PAUSE_MAX)


def _sync_seq_high(c: sqlite3.Connection) -> int:
    (high,) = c.execute(_SYNC_SEQ_HIGH).fetchone()
    return int(high)


def _upsert(c: sqlite3.Connection, parts: Sequence[RowParts]) -> None:
    """Upsert records (their row parts) with their tag rows, in the caller's transaction (at most once per
    transaction). Each row gets the next ``sync_seq``, in the order of ``(created_us, task_id)``."""
    high = _sync_seq_high(c)
    ordered = sorted(parts, key=lambda p: (p[3], p[0]))
    c.executemany(_UPSERT, [(*Record.to_row(p), seq) for seq, p in enumerate(ordered, high + 1)])
    c.executemany(_INSERT_TAG, [(p[0], k, v, p[3]) for p in parts if p[10] for k, v in p[10].items()])


def _taken_over(row: Row, instance_id: str) -> bool:
    """Whether ``adopt`` takes over this stored row for ``instance_id``: unfinished and owned by anyone else (a row
    this store owns is its own already; a finished row is done). Twin of ``take_over`` in ``snapshot.rs``."""
    return row[2] in ("pending", "running") and row[19] != instance_id


def _is_corrupt(exc: sqlite3.Error) -> bool:
    text = str(exc)
    return "not a database" in text or "malformed" in text


def _corrupt(path: str, exc: sqlite3.Error) -> CorruptSnapshotError:
    return CorruptSnapshotError(
        f"{path}: the file is damaged or not a SQLite database ({exc}); restore it from a backup,"
        " or move it aside to start with an empty history"
    )


def _open_error(path: str, exc: sqlite3.Error) -> SnapshotError:
    if _is_corrupt(exc):
        return _corrupt(path, exc)
    text = str(exc)
    if "readonly" in text or "read-only" in text:
        hint = f"the file is read-only ({text}); make it and its directory writable, or choose another path"
    elif "unable to open" in text:
        hint = f"cannot open the file ({text}); check that its directory exists and is writable"
    elif "database is locked" in text:
        # Past the busy timeout (as ``describe`` in ``snapshot.rs`` advises).
        hint = (
            f"cannot open the snapshot database ({text}); another process holds a lock on it; retry later or stop"
            " that process"
        )
    else:
        hint = f"cannot open the snapshot database ({text}); move the file aside to start with an empty history"
    return SnapshotError(f"{path}: {hint}")


class SnapshotDb:
    """One SQLite connection guarded by its own lock. Python's sqlite3 releases the GIL while it works."""

    __slots__ = ("_conn", "lock", "path")

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()
        try:
            conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise _open_error(path, exc) from exc
        self._conn: sqlite3.Connection | None = conn
        try:
            _switch_to_wal(conn)
            conn.execute("PRAGMA synchronous = NORMAL")
            self._migrate(conn)
        except SnapshotError:
            conn.close()
            raise
        except sqlite3.Error as exc:
            conn.close()
            raise _open_error(path, exc) from exc

    def _stored_version(self, conn: sqlite3.Connection) -> int:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "schema_version" not in tables:
            if {t for t in tables if not t.startswith("sqlite_")}:
                raise SnapshotError(
                    f"{self.path}: this SQLite file is not a fastapi-taskflow snapshot (it has other tables"
                    " and no schema_version); choose another path"
                )
            return 0
        row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
        return 0 if row is None or row[0] is None else int(row[0])

    def _migrate(self, conn: sqlite3.Connection) -> None:
        for target in range(1, SCHEMA_VERSION + 1):
            conn.execute("BEGIN IMMEDIATE")
            try:
                # Read inside the write transaction: another process may be migrating the same file.
                version = self._stored_version(conn)
                if version > SCHEMA_VERSION:
                    raise SnapshotError(
                        f"{self.path}: snapshot schema version {version} is newer than this fastapi-taskflow"
                        f" supports ({SCHEMA_VERSION}); upgrade fastapi-taskflow-rs or use another file"
                    )
                if version < target:
                    if version == 0:
                        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
                    for statement in MIGRATIONS[target - 1]:
                        conn.execute(statement)
                    conn.execute("DELETE FROM schema_version")
                    conn.execute("INSERT INTO schema_version (version) VALUES (?)", (target,))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise SnapshotError(f"{self.path}: the snapshot file is closed; create a new TaskStore to reopen it")
        return self._conn

    @property
    def closed(self) -> bool:
        return self._conn is None

    @contextmanager
    def _transaction(self, doing: str, outcome: str) -> Iterator[sqlite3.Connection]:
        """One write transaction; a failure rolls it back and becomes a ``SnapshotError``. The caller holds ``lock``."""
        conn = self._connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, (sqlite3.Error, OSError)):
                raise SnapshotError(f"{self.path}: cannot {doing} ({exc}); {outcome}") from exc
            raise

    def write_locked(self, parts: Sequence[RowParts]) -> None:
        """Upsert the records of ``parts`` with their tags in one transaction. The caller holds ``lock``."""
        with self._transaction("write task history", "the records stay in memory and the next flush retries them") as c:
            _upsert(c, parts)

    def claim_locked(self, instance_id: str, take: Callable[[Row], bool]) -> list[Row]:
        """Give ``instance_id`` the unfinished rows of other owners that ``take`` accepts; return them oldest first.

        One ``BEGIN IMMEDIATE`` transaction, so that two stores on one file never both take a row.
        The caller holds ``lock``.
        """
        with self._transaction("claim orphaned tasks", "nothing was claimed") as c:
            rows: list[Row] = [
                row
                for row in c.execute(
                    _SELECT + f" WHERE status IN ('pending', 'running') AND {_NOT_SUCCESS}"
                    " AND (owner IS NULL OR owner <> ?) ORDER BY created_us, task_id",
                    (instance_id,),
                )
                if take(row)
            ]
            numbered = enumerate(rows, _sync_seq_high(c) + 1)
            c.executemany(
                "UPDATE task_history SET owner = ?1, sync_seq = ?2 WHERE task_id = ?3",
                [(instance_id, seq, r[0]) for seq, r in numbered],
            )
        return rows

    def adopt_locked(self, records: Sequence[Record], instance_id: str) -> list[tuple[Record, bool]]:
        """Make ``records`` journal rows of ``instance_id`` in one transaction: an id without a row is inserted; an id
        whose row is unfinished and owned by anyone else is taken over, the file's row (not the given one) rewritten
        as ``instance_id``'s; any other id is left alone. Returns the records written, each with whether it was
        taken over, oldest first. The caller holds ``lock``. Twin of ``Snapshot::adopt`` in ``snapshot.rs``."""
        with self._transaction("adopt rows", "nothing was adopted") as c:
            written: list[tuple[Record, bool]] = []
            for rec in records:
                stored: Row | None = c.execute(_SELECT + " WHERE task_id = ?1", (rec.task_id,)).fetchone()
                if stored is None:
                    written.append((rec, False))
                elif _taken_over(stored, instance_id):
                    # The file's row, not the one the backend handed out: a row this file wrote is at least as
                    # fresh here as in the backend (which only holds what was replicated of it).
                    written.append((Record.from_row(stored), True))
            if written:
                _upsert(c, [rec.row_parts(instance_id) for rec, _ in written])
        return sorted(written, key=lambda item: item[0].key)

    def changed_rows(self, after: int, limit: int) -> list[tuple[Any, ...]]:
        """Up to ``limit`` rows (``TASK_ROW_KEYS`` then ``sync_seq``) with a ``sync_seq`` above ``after``, in
        ``sync_seq`` order."""
        return self._read(_CHANGED, (after, limit))

    def delete_locked(
        self, ids: Iterable[str], *, ended_before: int | None = None, finished_only: bool = False
    ) -> list[DeletedRow]:
        """Delete, with their tags, the rows of ``ids`` (only finished ones with ``finished_only``) and, with
        ``ended_before``, every finished row that ended before it. Returns the rows deleted. The caller holds ``lock``.
        """
        with self._transaction("delete task history", "nothing was deleted") as c:
            high = _sync_seq_high(c)
            found: dict[str, DeletedRow] = {}
            if ended_before is not None:
                found.update((row[0], row) for row in c.execute(_ENDED_BEFORE, (ended_before, ended_before)))
            by_id = _DELETED + " WHERE task_id = ?" + (f" AND status IN {_FINISHED_SQL}" if finished_only else "")
            for task_id in ids:
                row = c.execute(by_id, (task_id,)).fetchone()
                if row is not None:
                    found[task_id] = row
            c.executemany(_DELETE_TAGS, [(task_id,) for task_id in found])
            c.executemany("DELETE FROM task_history WHERE task_id = ?", [(task_id,) for task_id in found])
            if found:
                c.execute(_KEEP_SYNC_FLOOR, (high,))
        return list(found.values())

    def acquire_lock(self, key: str, now_us: int, expires_us: int) -> bool:
        """Take the schedule lock ``key`` until ``expires_us`` unless it is held; locks expired by ``now_us`` go
        first. True when this call took it."""
        with self.lock, self._transaction("take a schedule lock", "the lock was not taken") as c:
            c.execute("DELETE FROM task_schedule_locks WHERE expires_us <= ?1", (now_us,))
            cursor = c.execute(
                "INSERT OR IGNORE INTO task_schedule_locks (lock_key, expires_us) VALUES (?1, ?2)", (key, expires_us)
            )
            return cursor.rowcount == 1

    def save_scheduled(self, row: ScheduledRow) -> None:
        with self.lock, self._transaction("save a one-off schedule", "it was not saved") as c:
            c.execute(_SAVE_SCHEDULED, row)

    def load_due(self, before_us: int, limit: int) -> list[ScheduledRow]:
        """Up to ``limit`` one-offs due at ``before_us``, by ``(fire_us, run_key)``: a walk of their index."""
        sql = _SELECT_SCHEDULED + " WHERE fire_us <= ?1 ORDER BY fire_us, run_key LIMIT ?2"
        return self._read(sql, (before_us, limit))

    def delete_scheduled(self, run_key: str) -> bool:
        with self.lock, self._transaction("delete a one-off schedule", "it stays scheduled") as c:
            return c.execute(_DELETE_SCHEDULED, (run_key,)).rowcount > 0

    def fire(
        self,
        run_key: str,
        cutoff: float,
        decide: Callable[[ScheduledRow, list[str]], tuple[_T, RowParts | None]],
    ) -> _T | None:
        """Fire the one-off ``run_key`` in one write transaction: read and delete its row, find the stored holders
        of its idempotency key (created after ``cutoff``), and let ``decide`` say what the firing made and which
        record to journal. None when the row is gone. Either all of it reaches the file or none of it.
        """
        with self.lock, self._transaction("fire a one-off schedule", "it stays scheduled") as c:
            row: ScheduledRow | None = c.execute(_SELECT_SCHEDULED + " WHERE run_key = ?1", (run_key,)).fetchone()
            if row is None:
                return None
            c.execute(_DELETE_SCHEDULED, (run_key,))
            key = row[9]
            on_disk = [] if key is None else [task_id for (task_id,) in c.execute(_KEY_HOLDERS, (key, cutoff))]
            fired, journal = decide(row, on_disk)
            if journal is not None:
                _upsert(c, [journal])
            return fired

    def save_metadata(self, key: str, value: str) -> None:
        with self.lock, self._transaction("write metadata", "it was not saved") as c:
            c.execute("INSERT OR REPLACE INTO task_metadata (key, value) VALUES (?1, ?2)", (key, value))

    def load_metadata(self, key: str) -> str | None:
        rows: list[tuple[str]] = self._read("SELECT value FROM task_metadata WHERE key = ?1", (key,))
        return rows[0][0] if rows else None

    def _read(self, sql: str, params: tuple[object, ...]) -> list[Any]:
        with self.lock:
            conn = self._connection()
            try:
                return conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise SnapshotError(f"{self.path}: cannot read task history ({exc})") from exc

    def page(
        self,
        before: Key | None,
        status: str | None,
        func_name: str | None,
        limit: int,
        tag: tuple[str, str] | None = None,
    ) -> list[Row]:
        """Up to ``limit`` rows with a key below ``before``, newest first."""
        where: list[str] = []
        params: list[object] = []
        if tag is not None:
            # The walk goes down the tag table's key (same order, same cursor), joined to history.
            sql = f"SELECT {_H_COLUMNS} FROM task_tags AS t JOIN task_history AS h ON h.task_id = t.task_id"
            order = " ORDER BY t.created_us DESC, t.task_id DESC LIMIT ?"
            where += ["t.key = ?", "t.value = ?"]
            params += tag
            key_columns = "(t.created_us, t.task_id)"
        else:
            sql = f"SELECT {_H_COLUMNS} FROM task_history AS h"
            order = " ORDER BY h.created_us DESC, h.task_id DESC LIMIT ?"
            key_columns = "(h.created_us, h.task_id)"
        if before is not None:
            where.append(f"{key_columns} < (?, ?)")
            params += before
        if status is not None:
            # Successes are not in the status index; told status = 'success', SQLite would rather scan and
            # sort the table than walk the creation index and sort ties, so the + keeps the term off indexes.
            if status == "success":
                where.append("+h.status = ?")
            else:
                where += ["h.status = ?", _NOT_SUCCESS]
            params.append(status)
        if func_name is not None:
            where.append("h.func_name = ?")
            params.append(func_name)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += order
        params.append(limit)
        return self._read(sql, tuple(params))

    def get(self, task_id: str) -> Row | None:
        rows: list[Row] = self._read(_SELECT + " WHERE task_id = ?", (task_id,))
        return rows[0] if rows else None

    def key_holders(self, key: str, created_after: float) -> list[str]:
        """Ids of the stored records holding idempotency ``key`` (pending, running or success and created
        after ``created_after``), newest first: an indexed read."""
        return [row[0] for row in self._read(_KEY_HOLDERS, (key, created_after))]

    def metric_rows(self) -> list[tuple[str, str, int | None, int | None]]:
        """Every stored record's name, status and times, read at open (a damaged file shows here first)."""
        with self.lock:
            conn = self._connection()
            try:
                return conn.execute(
                    "SELECT func_name, status, start_us, end_us FROM task_history ORDER BY created_us, task_id"
                ).fetchall()
            except sqlite3.Error as exc:
                if _is_corrupt(exc):
                    raise _corrupt(self.path, exc) from exc
                raise SnapshotError(f"{self.path}: cannot read task history ({exc})") from exc

    def close(self) -> None:
        with self.lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
