"""Typed interface of the task core.

Two implementations honour this interface exactly: the compiled extension
``fastapi_taskflow._core`` (Rust) and the reference ``fastapi_taskflow._pycore``
(pure Python). ``fastapi_taskflow._selected`` picks one at import time.

Conventions shared by both cores:

* Timestamps are integers of microseconds since the Unix epoch (UTC) inside the
  core. In JSON they are ISO 8601 strings as Python's
  ``datetime.isoformat()`` writes an aware UTC datetime:
  ``"2024-01-01T12:00:00.123456+00:00"``, the fraction omitted when it is zero
  (``"2024-01-01T12:00:00+00:00"``).
* ``duration`` is ``(end - start) / 1e6`` seconds as a float, or null.
* A record's JSON object has exactly these 16 keys, in this order:
  ``task_id, func_name, status, created_at, start_time, end_time, duration,
  retries_used, error, logs, stacktrace, tags, source, priority, executor, queue``.
* Records are ordered newest first by the key ``(created_at, task_id)``, both
  descending. A page cursor is the string ``"<created_us>:<task_id>"`` of the
  last record of the previous page; the next page holds the records whose key
  is strictly smaller.
* Statuses: ``pending running success failed interrupted cancelled rejected``.
  Finished (terminal) = the last five.
* The journal: a record created with ``journal=True`` in a store with a file is
  written by the next ``flush()`` as an *unfinished row* (status pending or
  running) whose ``owner`` column is the store's ``instance_id``, and rewritten
  by every later flush after its status or ``retries_used`` changes; once it
  finishes, its row becomes an ordinary finished row (``owner`` NULL). A store
  with a file holds an exclusive OS lock (``flock`` on POSIX, ``LockFileEx`` on
  Windows) on the file ``<db_path>.owners/<instance_id>`` from open until
  ``close()`` or the death of its process; a row whose owner's lock file can be
  locked, or is missing, is an orphan that ``claim_orphans()`` may take
  (``adopt()`` does not look at the lock: a shared backend decided already).
* Schema version 3 (both cores, identical SQL) adds to ``task_history`` the
  columns ``owner TEXT``, ``encrypted_payload BLOB`` and ``retry_of TEXT`` and the
  partial indexes ``task_history_owner(owner) WHERE owner IS NOT NULL``,
  ``task_history_idempotency(idempotency_key, created_us) WHERE idempotency_key
  IS NOT NULL`` and ``task_history_end(end_us) WHERE end_us IS NOT NULL``.
* Schema version 4 (both cores, identical SQL) adds the tables
  ``task_schedule_locks(lock_key TEXT PRIMARY KEY, expires_us INTEGER NOT NULL)``,
  ``task_scheduled_once(run_key TEXT PRIMARY KEY, func_name, fire_us, created_us,
  args_json, kwargs_json, encrypted_payload, queue DEFAULT 'default', priority,
  idempotency_key, tags_json DEFAULT '{}')`` with the index
  ``task_scheduled_once_fire(fire_us, run_key)``, and ``task_metadata(key TEXT
  PRIMARY KEY, value TEXT NOT NULL)``.
* Schema version 5 (both cores, identical SQL) adds to ``task_history`` the
  column ``sync_seq INTEGER`` and the partial index ``task_history_sync(sync_seq)
  WHERE sync_seq IS NOT NULL``. Opening a file of an older version migrates it
  in place; rows written before version 5 keep a NULL ``sync_seq``.
* Schema version 6 (both cores, identical SQL) drops ``task_history_end`` and
  rebuilds ``task_history_status`` as ``(status, created_us, task_id) WHERE
  status <> 'success'``: a successful task's row, most rows, goes into two
  b-trees fewer. Pages of successes walk ``task_history_created``, pages of
  another status state ``status <> 'success'`` to use the partial index, and
  ``delete_finished_before`` finds old rows through ``task_history_created``.
* Schema version 7 (both cores, identical SQL) rebuilds ``task_history_created``
  as ``(created_us)`` and ``task_history_name`` as ``(func_name, created_us)``:
  entries a quarter of the size, so a row costs fewer page splits and fewer
  pages per commit. Pages still come in ``(created_us, task_id)`` order (SQLite
  sorts only the rows of one ``created_us``); a page of successes states
  ``+h.status = ?``, so that SQLite walks the creation index rather than sort
  the whole table.
* The outbox: every statement that inserts or updates a ``task_history`` row
  (``flush()``, the journal row of ``fire_scheduled()``, the ownership change of
  ``claim_orphans()``, ``adopt()``) sets its ``sync_seq`` to a number greater
  than every number the file has given, rows of one transaction numbered up in
  the order of ``(created_us, task_id)``. The transaction reads the highest
  number once (``max(sync_seq)`` through ``task_history_sync``, and the
  metadata key ``sync_seq_floor``), after ``BEGIN IMMEDIATE``: stores of
  several processes sharing a file take turns, so numbers are never shared,
  and they are committed in increasing order. A row rewritten later moves to
  its new, later number. Deleting rows gives no number; a deletion that removes
  the rows holding the highest numbers records that number as the metadata
  ``sync_seq_floor`` (reserved: do not ``save_metadata`` it), so a number is
  never given twice. ``changed_rows()`` reads the rows in this order; rows
  whose ``sync_seq`` is NULL (written before version 5, and not rewritten
  since) are never among them: a replicator of an upgraded file starts with
  what is written after the upgrade.
* Schedule locks, one-off schedules, metadata and the outbox live in the file
  only: the methods for them (``acquire_lock`` to ``load_metadata``,
  ``changed_rows`` and ``adopt``) raise ``SnapshotError`` on a store without one
  (saying so) or once it is closed, and ``SnapshotError`` naming the file when
  it cannot be read or written. They release the GIL, and each write is one
  transaction (``BEGIN IMMEDIATE``, waiting up to the 5 s busy timeout), so
  stores of several processes sharing a file never both win a lock or a one-off.
* A *row* (``changed_rows``, ``adopt``) is a dict with exactly the keys of
  ``TaskRow`` in ``backends/base.py``, in this order: ``task_id`` (str),
  ``func_name`` (str), ``status`` (str), ``created_us`` (int), ``start_us``
  (int | None), ``end_us`` (int | None), ``retries_used`` (int), ``error`` (str |
  None), ``stacktrace`` (str | None), ``logs_json`` (str: a JSON array of the
  log lines), ``logs_dropped`` (int), ``tags_json`` (str: a JSON object of the
  tags), ``source`` (str), ``priority`` (int | None), ``executor`` (str | None),
  ``queue`` (str), ``idempotency_key`` (str | None), ``args_json``,
  ``kwargs_json``, ``encrypted_payload`` (bytes | None), ``retry_of`` (str |
  None), ``owner`` (str | None: the instance holding an unfinished journal row).
  Every row either core writes has these types.
"""

from collections.abc import Callable
from typing import Final, final

from typing_extensions import Self

__all__ = ["STATUSES", "CorruptSnapshotError", "SnapshotError", "TaskStore", "__version__"]

__version__: Final[str]

#: Statuses, in the order used by metrics. Twin of ``TaskStatus`` in ``models.py``.
STATUSES: Final[tuple[str, ...]]

class SnapshotError(RuntimeError):
    """The snapshot database cannot be opened, read or written.

    The message names the file and says what to do about it.
    """

class CorruptSnapshotError(SnapshotError):
    """The file exists but is not a usable SQLite database (damaged, or not SQLite at all).

    Raised by ``TaskStore(db_path)`` only; the message names the file and the fix
    (restore it from a backup, or move it aside to start with an empty history).
    """

@final
class TaskStore:
    """Task records, their indexes, metrics, the event ring and the snapshot file.

    Thread-safe: every method may be called from any thread. Methods that touch
    the SQLite file release the GIL while they wait on it.
    """

    def __new__(
        cls,
        db_path: str | None = None,
        *,
        max_history: int = 10_000,
        ring_capacity: int = 65_536,
        max_log_lines: int = 1_000,
        idempotency_ttl: float | None = None,
    ) -> Self:
        """Create an empty store, or open (creating if needed) the snapshot file.

        Opening switches the file to WAL, creates or migrates the schema, and
        rebuilds the metrics from the records on disk; no record is loaded into
        memory. Processes opening one file together (a new one included) wait
        for each other, up to the 5 s busy timeout: the WAL switch retries
        while another process holds the file, and each migration step is one
        ``BEGIN IMMEDIATE`` transaction that checks the stored version first,
        so exactly one opener applies it. ``max_history`` bounds how many finished records stay in memory;
        ``ring_capacity`` how many events the ring keeps; ``max_log_lines`` how
        many log lines one record keeps (the oldest are dropped first).
        ``idempotency_ttl`` (seconds, None = forever) is how long an idempotency
        key stays held after its record was created.
        With a file, opening also creates ``<db_path>.owners/`` and takes the
        owner lock of this store's ``instance_id`` (see the module docstring).
        Raises ``ValueError`` for a capacity below 1 or a ttl that is not
        positive, ``CorruptSnapshotError`` when the file is damaged or not SQLite,
        and ``SnapshotError`` (naming ``db_path``) when it cannot be opened or is
        a database of something else (no ``task_history``/``schema_version``).
        """

    @property
    def db_path(self) -> str | None: ...
    @property
    def instance_id(self) -> str:
        """A fresh UUID4 text per store: the ``owner`` of this store's journal rows."""
    @property
    def last_seq(self) -> int:
        """Sequence number of the newest event in the ring; 0 before the first."""

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
        """Create a PENDING record with a fresh UUID4 id; return ``(task_id, True)``.

        When ``idempotency_key`` is held, nothing is created and ``(holder_id,
        False)`` is returned. A key is held by a record that is pending, running
        or succeeded and was created less than ``idempotency_ttl`` seconds ago,
        whether it is in memory or only in the file (an indexed read, done with
        the GIL released); a failed, interrupted, cancelled or rejected holder
        frees the key. The check and the creation are one atomic step within
        this store. ``encrypted_payload`` is the ciphertext of encrypted
        arguments, stored like ``args_json``; ``retry_of`` the id of the record
        this one retries. ``journal=True`` puts the record in the journal (see
        the module docstring; ignored without a file). Emits a ``created`` event.
        """

    def create_plain(self, func_name: str, queue: str, executor: str, /) -> str:
        """``create(func_name, queue=queue, executor=executor)[0]``, for the common task.

        No idempotency key, tags, priority or stored arguments; source "manual", not
        journaled; so a record is always created. Positional, and the id alone, because
        ``add_task`` calls it once per task and keyword parsing is most of the call.
        """

    def transition(
        self,
        task_id: str,
        status: str,
        *,
        error: str | None = None,
        stacktrace: str | None = None,
        retries_used: int | None = None,
    ) -> bool:
        """Move a record to ``status`` and update indexes, metrics and ring at once.

        Allowed moves: pending -> running | cancelled | rejected | interrupted;
        running -> running (a retry: updates ``retries_used``) | pending (requeue)
        | any finished status. ``start_time`` is set when a record first becomes
        running; ``end_time`` and ``duration`` when it finishes, where the
        duration feeds the metrics histogram. ``error``, ``stacktrace`` and
        ``retries_used`` are stored when given. A move that is not allowed
        (e.g. the record was cancelled before it started) changes nothing and
        returns False. Raises ``KeyError`` for an id that is not in memory and
        ``ValueError`` for an unknown status. Emits a ``status`` event.
        """

    def append_log(self, task_id: str, line: str) -> None:
        """Append one line to the record's logs (bounded) and emit a ``log`` event.

        A line dropped by the bound is counted in the record's ``logs_dropped``.

        Raises ``KeyError`` for an id that is not in memory.
        """

    def get(self, task_id: str) -> dict[str, object] | None:
        """The record as a dict, from memory or else from the snapshot file.

        Keys: the 16 JSON keys (timestamps as ISO strings, like the JSON) plus
        ``idempotency_key`` (str | None), ``args_json``, ``kwargs_json`` and
        ``encrypted_payload`` (bytes | None), ``logs_dropped`` (int) and
        ``retry_of`` (str | None). None when the id is unknown.
        """

    def get_json(self, task_id: str) -> bytes | None:
        """The record's detail JSON, or None when the id is unknown.

        The 16 keys followed by ``logs_dropped`` (how many log lines the
        per-record bound has dropped) and ``retry_of`` (the id this task
        retries, or null). List pages keep exactly the 16 keys.
        """

    def page_json(
        self,
        *,
        status: str | None = None,
        func_name: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        tag: str | None = None,
    ) -> tuple[bytes, str | None]:
        """One page of records as a JSON array, newest first, and the next cursor.

        Merges memory and the snapshot file (a record in both is listed once, as
        in memory). The cursor is None when this page is the last one. ``tag`` is
        ``"key=value"``, split at the first ``=``: only records whose tags hold
        that key with exactly that value (on disk through the ``task_tags`` table
        of schema version 2; in memory by scanning the records held). Raises
        ``ValueError`` for an unknown status, a limit below 1, a malformed cursor
        or a tag without ``=``.
        """

    def metrics_json(self) -> bytes:
        """Aggregates over every task this store has seen, memory and disk.

        A JSON object: ``total, pending, running, success, failed, interrupted,
        cancelled, rejected`` (counts), ``success_rate`` (success / total in
        0..1, 0.0 when empty), ``avg_duration_seconds`` (mean duration of
        finished records, rounded to 6 places, 0.0 when none), ``p50_seconds,
        p95_seconds, p99_seconds`` (from the duration histogram, null when no
        durations), and ``by_name``: an object keyed by function name, each
        value holding the same keys except ``by_name``, and last ``snapshot``:
        null without a file, else ``{"ok", "unwritten", "failed_writes",
        "last_error", "last_write_at"}``: whether the last flush succeeded (true
        before the first), how many records wait to be written, how many flushes
        have failed since open, the last failure's message (null once a flush
        succeeds again) and the ISO time of the last successful flush (null
        before the first). Costs O(task names), never O(records).
        """

    def metrics_prometheus(self) -> bytes:
        """The same aggregates as OpenMetrics 1.0 text (UTF-8), ending with ``# EOF``.

        Families, each with HELP and TYPE lines, samples sorted by label:
        ``taskflow_tasks_created`` (counter, ``_total{func_name}``: records created),
        ``taskflow_tasks_finished`` (counter, ``_total{func_name,status}`` for the
        five finished statuses: moves into that status; both counters go down
        only when history is deleted, which Prometheus reads as a reset),
        ``taskflow_tasks_live{func_name,status}`` (gauge, pending and running),
        ``taskflow_task_duration_seconds{func_name}`` (histogram, unit seconds:
        cumulative ``_bucket`` at every tenth internal bound, ``le`` = ``10 **
        (k / 20)`` for k = -120, -110 .. 80 written as ``repr`` writes it, then
        ``le="+Inf"``, ``_count`` and ``_sum``, the sum also written as ``repr``)
        ``taskflow_queue_depth{queue}`` (gauge: pending records in memory per
        queue name) and, with a file only, ``taskflow_snapshot_ok`` (gauge, 1 or
        0), ``taskflow_snapshot_unwritten`` (gauge) and
        ``taskflow_snapshot_failed_writes`` (counter, ``_total``). Label values
        are escaped per OpenMetrics. Both cores render the same state to the
        same bytes. Costs O(task names + queues).
        """

    def events_since(self, after: int, limit: int = 1_000) -> tuple[list[tuple[int, bytes]], bool]:
        """Events with a sequence number above ``after``, oldest first, at most ``limit``.

        Each item is ``(seq, json_bytes)``. The bool is True when events after
        ``after`` have already left the ring (the reader missed some and must
        reload); the list then starts at the oldest event still kept. Event JSON:
        ``{"seq", "type": "created"|"status", "task": <record without "logs">}``
        or ``{"seq", "type": "log", "task_id", "line"}``.
        """

    def flush(self) -> int:
        """Write, in one transaction, every finished record changed since the last
        flush and every journaled record whose row is out of date.

        Then drops from memory the oldest finished records beyond
        ``max_history`` (only ones already on disk when there is a file; without
        a file, records beyond ``max_history`` are dropped as they finish).
        Returns the number of records written; 0 without a file. Raises
        ``SnapshotError`` when the write fails (disk full, read-only file, a lock
        held past the 5 s busy timeout); the records stay pending for the next
        flush and the failure shows in the metrics' ``snapshot`` object.
        Releases the GIL.
        """

    def write_behind(self, threshold: int | None, /) -> None:
        """From now on, flush on a thread of the core's own whenever a change leaves
        ``threshold`` records unwritten, and go on flushing while that many wait;
        None (the default) stops it.

        A *change that leaves a record unwritten* is one that makes it a record the
        next ``flush()`` writes: a transition to a finished status or a log line on
        a finished record, with a file; a journaled record's creation, or its status
        or retries changing. Nothing starts without a file, while the flush started
        this way still runs, nor while the last flush failed (whoever started it):
        the owner's retries take over until one succeeds. The outcome is the metrics'
        ``snapshot`` object, as any flush's. For an owner holding the GIL on the
        event loop's thread: nothing waits for these flushes, and in the compiled core
        their thread never needs the GIL. ValueError for a threshold below 1.
        """

    def on_unwritten(self, wake: Callable[[], object] | None, /) -> None:
        """Call ``wake()`` once, the next time a change leaves a record unwritten
        (see ``write_behind``); None drops the callable given before.

        It is called on the thread of that change, holding the GIL and no lock of
        the store, so it may be called from any thread the store is used on. What it
        raises does not undo the change: it goes to ``sys.unraisablehook`` (compiled
        core) or is logged to the ``fastapi_taskflow`` logger (``_pycore``).
        TypeError when ``wake`` is neither callable nor None.
        """

    def claim_orphans(self) -> list[dict[str, object]]:
        """Take over the unfinished rows of owners that are gone, and load them.

        In one write transaction (``BEGIN IMMEDIATE``, so two stores on one file
        never both take a row), every row with status pending or running whose
        ``owner`` is not this store and is not alive (see the module docstring)
        becomes owned by this store; those records are loaded into memory with
        their stored status, fields, logs and arguments, as journaled records
        (no metrics change: open already counted them), and returned as ``get()``
        dicts, oldest first. Lock files of dead owners are removed afterwards.
        ``[]`` without a file. Raises ``SnapshotError`` when the file cannot be
        written. Releases the GIL.
        """

    def delete_finished_before(self, end_before_us: int) -> tuple[int, int]:
        """Delete finished records that ended before ``end_before_us`` (µs since epoch).

        From memory and from the file (with their ``task_tags`` rows), all five
        finished statuses. Returns ``(deleted_from_memory, deleted_from_file)``;
        a record in both counts in both. The metrics forget them (per-status
        counts and durations), as a reopen would. Raises ``SnapshotError`` when
        the file cannot be written (memory is then unchanged). Releases the GIL.
        """

    def delete(self, task_id: str) -> bool:
        """Delete one finished record from memory and the file (with its tags).

        Returns False when the id is unknown or the record is not finished. The
        metrics forget it, as in ``delete_finished_before``. Raises
        ``SnapshotError`` when the file cannot be written. Releases the GIL.
        """

    def acquire_lock(self, key: str, ttl: float) -> bool:
        """Take the schedule lock ``key`` for ``ttl`` seconds, unless it is held.

        In one write transaction, every lock whose ``expires_us`` is at or
        before now is deleted, then ``(key, now + ttl)`` is inserted unless
        ``key`` is still there (``INSERT OR IGNORE``; the ttl in microseconds,
        rounded up). Returns True exactly when this call inserted it: a lock
        is not re-entrant, and its holder is not recorded. Raises
        ``ValueError`` for a ttl that is not positive or not finite.
        """

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
        """Save the one-off schedule ``run_key``, due at ``fire_us`` (µs since epoch).

        An upsert by ``run_key``: saving a run key again reschedules it, every
        column replaced and ``created_us`` set to now. The other arguments are
        what ``fire_scheduled`` copies into the task it creates.
        """

    def load_due(self, before_us: int, limit: int = 1_000) -> list[dict[str, object]]:
        """The one-offs with ``fire_us <= before_us``, ordered by ``(fire_us, run_key)``, at most ``limit``.

        Each a dict with the keys ``run_key, func_name, fire_us, created_us,
        args_json, kwargs_json, encrypted_payload`` (bytes | None), ``queue,
        priority, idempotency_key`` and ``tags`` (a dict, empty when none). A
        read (it takes no write lock). Raises ``ValueError`` for a limit below 1.
        """

    def delete_scheduled(self, run_key: str) -> bool:
        """Delete the one-off ``run_key``; True when a row was deleted."""

    def fire_scheduled(
        self, run_key: str, *, executor: str | None = None, journal: bool = True
    ) -> tuple[str, bool] | None:
        """Consume the one-off ``run_key`` and create its task.

        One write transaction reads and deletes the row and, when ``journal``,
        inserts the new task's journal row (pending, owned by this store's
        ``instance_id``), so a process killed at any instant leaves either the
        one-off still scheduled or a journaled task that a later store's
        ``claim_orphans()`` takes. The record is created as ``create(func_name,
        source="scheduled", journal=journal, executor=executor, ...)`` would
        create it, with the one-off's arguments, payload, queue, priority, tags
        and idempotency key (same id in memory and file, metrics, ``created``
        event); its journal row being written already, the next ``flush()``
        does not rewrite it. Returns ``(task_id, True)``; ``(holder_id,
        False)`` when the idempotency key is held (the rule of ``create``; the
        one-off is consumed all the same and nothing is created); None when no
        row has this run key (fired by another store, or deleted). Keyed
        ``create`` calls of this store wait while a firing runs.
        """

    def changed_rows(self, after_seq: int, limit: int = 1_000) -> tuple[list[dict[str, object]], int]:
        """The rows whose ``sync_seq`` is above ``after_seq``, ordered by ``sync_seq``, at most ``limit``.

        Each a row dict (see the module docstring; each row as it is now, so a
        row rewritten since holds its latest values, at its latest number).
        The int is the ``sync_seq`` of the last row returned, ``after_seq``
        when there is none: passing it back as ``after_seq`` reads on from
        there, and a reader that stored it misses no row written later. A
        read (it takes no write lock), served by ``task_history_sync``. Raises
        ``ValueError`` for a limit below 1.
        """

    def adopt(self, rows: list[dict[str, object]]) -> list[dict[str, object]]:
        """Take over unfinished rows of dead instances (row dicts, see the module docstring).

        Every row is checked before anything happens, and the first problem
        found is raised; then nothing is adopted. First the keys of each row in
        turn, in the order of the row's keys: ``ValueError`` naming the task
        (``row <index>`` until its ``task_id`` is read) and the key, for a
        missing key or a value of another type (an int must fit in 64 bits and
        not be a bool; other keys are ignored), and ``TypeError`` for an item
        that is not a dict. Then the values of each row in turn: ``ValueError``
        naming the task and the key, for a ``task_id`` that is not a canonical
        (lowercase, hyphenated) UUID, a ``status`` other than pending or
        running, a negative ``retries_used`` or ``logs_dropped``, a
        ``logs_json`` that is not a JSON array of strings or a ``tags_json``
        that is not a JSON object of strings. Otherwise, in one write
        transaction (``BEGIN IMMEDIATE``), each row whose id is neither in
        memory nor earlier in ``rows`` is decided by the file's row of that id:

        * none: the given row is inserted as a journal row owned by this
          store's ``instance_id``, with its tags (the given ``owner`` is not
          kept; logs and tags are written as the record holds them, in compact
          JSON);
        * an unfinished row (pending or running) whose ``owner`` is not this
          store's ``instance_id`` (another store's, a closed store's such as an
          earlier run on this file, or NULL): it is taken over, and the given
          row is ignored: the file's row, at least as fresh as the backend's
          copy of a row this file wrote, becomes a journal row owned by this
          store, its values as read (as ``get()`` reads them). The owner lock
          is not consulted (the caller, a shared backend, found the owner
          dead);
        * any other row (finished, of a status this version does not know, or
          owned by this store): skipped, and left as it is.

        Every row written gets a new ``sync_seq`` (see the outbox). The
        records written are then held in memory as journaled records with
        their stored status, fields, logs (bounded by ``max_log_lines``; the
        row keeps every line), tags and arguments, as ``claim_orphans()``
        holds its rows, each with a ``created`` event carrying its status. Inserted ones are counted in the metrics as
        records created by this store (``total`` and their status); taken-over
        ones leave the metrics as they are, as claimed rows do (open counted
        the file's rows). Returns their ``get()`` dicts, oldest first (by
        ``(created_us, task_id)``, the file's for a row taken over); ids
        skipped are left out.
        """

    def save_metadata(self, key: str, value: str) -> None:
        """Set the metadata ``key`` to ``value`` (an upsert)."""

    def load_metadata(self, key: str) -> str | None:
        """The metadata value of ``key``, or None when it was never set."""

    def memory_len(self) -> int:
        """Number of records held in memory (live and finished)."""

    def close(self) -> None:
        """Close the snapshot file. Further flushes raise ``SnapshotError``."""
