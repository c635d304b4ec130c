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
"""

from typing import Final, final

from typing_extensions import Self

__all__ = ["STATUSES", "SnapshotError", "TaskStore", "__version__"]

__version__: Final[str]

#: Statuses, in the order used by metrics. Twin of ``TaskStatus`` in ``models.py``.
STATUSES: Final[tuple[str, ...]]

class SnapshotError(RuntimeError):
    """The snapshot database cannot be opened, read or written.

    The message names the file and says what to do about it.
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
    ) -> Self:
        """Create an empty store, or open (creating if needed) the snapshot file.

        Opening creates or migrates the schema, switches to WAL, and rebuilds the
        metrics from the finished records on disk; no record is loaded into
        memory. ``max_history`` bounds how many finished records stay in memory;
        ``ring_capacity`` how many events the ring keeps; ``max_log_lines`` how
        many log lines one record keeps (the oldest are dropped first).
        Raises ``ValueError`` for a capacity below 1 and ``SnapshotError`` (naming
        ``db_path``) when the file cannot be opened or is not a snapshot database.
        """

    @property
    def db_path(self) -> str | None: ...
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
    ) -> tuple[str, bool]:
        """Create a PENDING record with a fresh UUID4 id; return ``(task_id, True)``.

        When ``idempotency_key`` is held by a record that is pending, running or
        succeeded, nothing is created and ``(holder_id, False)`` is returned; a
        failed, interrupted, cancelled or rejected holder frees the key. The
        check and the creation are one atomic step. Emits a ``created`` event.
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
        ``idempotency_key`` (str | None), ``args_json`` and ``kwargs_json``
        (bytes | None) and ``logs_dropped`` (int). None when the id is unknown.
        """

    def get_json(self, task_id: str) -> bytes | None:
        """The record's detail JSON, or None when the id is unknown.

        The 16 keys followed by ``logs_dropped``: how many log lines the
        per-record bound has dropped (list pages keep exactly the 16 keys).
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
        value holding the same keys except ``by_name``. Costs O(task names),
        never O(records).
        """

    def metrics_prometheus(self) -> bytes:
        """The same aggregates as OpenMetrics 1.0 text (UTF-8), ending with ``# EOF``.

        Families, each with HELP and TYPE lines, samples sorted by label:
        ``taskflow_tasks_created`` (counter, ``_total{func_name}``: records created),
        ``taskflow_tasks_finished`` (counter, ``_total{func_name,status}`` for the
        five finished statuses: moves into that status, never decremented),
        ``taskflow_tasks_live{func_name,status}`` (gauge, pending and running),
        ``taskflow_task_duration_seconds{func_name}`` (histogram, unit seconds:
        cumulative ``_bucket`` at every tenth internal bound, ``le`` = ``10 **
        (k / 20)`` for k = -120, -110 .. 80 written as ``repr`` writes it, then
        ``le="+Inf"``, ``_count`` and ``_sum``, the sum also written as ``repr``)
        and ``taskflow_queue_depth{queue}`` (gauge: pending records in memory per
        queue name). Label values are escaped per OpenMetrics. Both cores render
        the same state to the same bytes. Costs O(task names + queues).
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
        """Write every finished record changed since the last flush, in one transaction.

        Then drops from memory the oldest finished records beyond
        ``max_history`` (only ones already on disk when there is a file; without
        a file, records beyond ``max_history`` are dropped as they finish).
        Returns the number of records written; 0 without a file. Raises
        ``SnapshotError`` when the write fails; the records stay pending for the
        next flush. Releases the GIL.
        """

    def memory_len(self) -> int:
        """Number of records held in memory (live and finished)."""

    def close(self) -> None:
        """Close the snapshot file. Further flushes raise ``SnapshotError``."""
