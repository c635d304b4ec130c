"""The shared-backend contract: the rows several instances share, the error they raise, the async interface.

Each instance keeps its own task store and local SQLite journal; a replicator pushes
journal rows to a ``SharedBackend`` and pulls from it. The backend is therefore a
plain store of rows with a few atomic primitives (idempotency keys, leases and
orphan claims, schedule locks, one-off claims) that stay correct when any number of
instances call them at once.

Times are integers of microseconds since the Unix epoch. Expiries (leases,
idempotency keys, locks) are measured on the server's clock, so that instances
whose clocks disagree still agree on who is alive and what has expired.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Final, TypedDict
from urllib.parse import urlsplit, urlunsplit

from ..models import TaskStatus

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "CONNECT_TIMEOUT",
    "FINISHED",
    "SCHEDULED_COLUMNS",
    "STATUSES",
    "TASK_COLUMNS",
    "BackendError",
    "ScheduledRow",
    "SharedBackend",
    "TaskRow",
]


class TaskRow(TypedDict):
    """One row of ``task_history`` (schema version 3 of the local journal), as every backend stores it."""

    task_id: str
    func_name: str
    status: str
    created_us: int
    start_us: int | None
    end_us: int | None
    retries_used: int
    error: str | None
    stacktrace: str | None
    #: JSON array of the log lines.
    logs_json: str
    logs_dropped: int
    #: JSON object of the tags; its string values are what ``page(tag=...)`` finds.
    tags_json: str
    source: str
    priority: int | None
    executor: str | None
    queue: str
    idempotency_key: str | None
    args_json: bytes | None
    kwargs_json: bytes | None
    encrypted_payload: bytes | None
    retry_of: str | None
    #: The instance id holding this unfinished journal row; None once the task finished.
    owner: str | None


class ScheduledRow(TypedDict):
    """A one-off run waiting for its time (a row of ``task_scheduled_once``)."""

    run_key: str
    func_name: str
    fire_us: int
    created_us: int
    args_json: bytes | None
    kwargs_json: bytes | None
    encrypted_payload: bytes | None
    queue: str
    priority: int | None
    idempotency_key: str | None
    tags_json: str


#: Column names in storage order (the TypedDicts' key order).
TASK_COLUMNS: Final[tuple[str, ...]] = tuple(TaskRow.__annotations__)
SCHEDULED_COLUMNS: Final[tuple[str, ...]] = tuple(ScheduledRow.__annotations__)

#: Seconds a backend waits for a connection (or a reply to a connect) before its call fails.
CONNECT_TIMEOUT: Final = 5.0

STATUSES: Final[tuple[str, ...]] = tuple(status.value for status in TaskStatus)
#: The statuses a task never leaves; retention and ``delete`` remove only rows in one of them.
FINISHED: Final[tuple[str, ...]] = tuple(s for s in STATUSES if s not in (TaskStatus.PENDING, TaskStatus.RUNNING))

#: ``password=...`` in a libpq conninfo string or a URL query.
_PASSWORD_PARAM = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]+)", re.IGNORECASE)


def redact(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***`` (URL user info, query, or conninfo)."""
    parts = urlsplit(url)
    if parts.password is not None:
        user_info, _, host = parts.netloc.rpartition("@")
        user = user_info.partition(":")[0]
        url = urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
    return _PASSWORD_PARAM.sub(r"\1***", url)


class BackendError(RuntimeError):
    """The shared backend failed (unreachable, refused, or an error from its driver).

    ``kind`` is ``"redis"``, ``"postgres"`` or ``"mysql"``; ``url`` is the backend's
    URL with the password redacted. The driver's exception is the ``__cause__``.
    """

    def __init__(self, kind: str, url: str, doing: str, reason: object) -> None:
        self.kind = kind
        self.url = redact(url)
        password = urlsplit(url).password
        text = f"{type(reason).__name__}: {reason}" if isinstance(reason, BaseException) else str(reason)
        if password:  # a driver may quote what it was given
            text = text.replace(password, "***")
        super().__init__(f"{kind} backend at {self.url}: cannot {doing}: {text}")


class SharedBackend(ABC):
    """State shared by several instances. Every method is a coroutine; all are safe to call concurrently.

    Use ``await backend.open()`` ... ``await backend.close()``, or ``async with backend:``.
    Failures of the server or driver raise ``BackendError``; so does a call before ``open()``
    or after ``close()``. Arguments are checked first: a limit below 1, or a ttl or lease
    that is not a positive, finite number of seconds, raises ``ValueError``.
    """

    #: ``"redis"``, ``"postgres"`` or ``"mysql"``.
    kind: str

    def __init__(self, url: str, driver_errors: tuple[type[BaseException], ...], namespace: str = "") -> None:
        self._url = url
        self._driver_errors = driver_errors
        self._namespace = namespace

    @property
    def identity(self) -> str:
        """Which shared state this is (kind, server, namespace; no password): what an instance
        remembers it has pushed its rows to."""
        return f"{self.kind} {redact(self._url)} {self._namespace}".rstrip()

    @contextmanager
    def _failing(self, doing: str) -> Iterator[None]:
        """Turn the driver's errors raised inside the block into ``BackendError``."""
        try:
            yield
        except self._driver_errors as exc:
            raise BackendError(self.kind, self._url, doing, exc) from exc

    def _not_open(self, doing: str) -> BackendError:
        return BackendError(self.kind, self._url, doing, "the backend is not open; call open() first")

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # Life cycle.

    @abstractmethod
    async def open(self) -> None:
        """Connect and create the schema if missing; safe when many instances open at once."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections and clients; a second call does nothing."""

    @abstractmethod
    async def ping(self) -> None:
        """One round trip to the server; raises ``BackendError`` when it does not answer."""

    # Task history.

    @abstractmethod
    async def upsert(self, rows: Sequence[TaskRow]) -> None:
        """Write ``rows`` in one round trip or transaction; per task id the last write wins.

        Within ``rows``, the last row of a task id wins.
        """

    @abstractmethod
    async def get(self, task_id: str) -> TaskRow | None:
        """The row of ``task_id``, or None."""

    @abstractmethod
    async def page(
        self,
        *,
        status: str | None = None,
        func_name: str | None = None,
        tag: tuple[str, str] | None = None,
        limit: int = 100,
        before: tuple[int, str] | None = None,
    ) -> list[TaskRow]:
        """Up to ``limit`` rows, newest first by ``(created_us, task_id)``, each strictly below ``before``.

        Filters combine: ``status``, ``func_name`` and ``tag`` (``(key, value)``: rows whose tags
        map ``key`` to exactly ``value``). Served by an index, never by a scan of all rows.
        The next page's ``before`` is ``(created_us, task_id)`` of this page's last row.
        Raises ``ValueError`` for an unknown status.
        """

    @abstractmethod
    async def count_by_status(self) -> dict[str, int]:
        """The number of rows per status, every status present (zero when none)."""

    @abstractmethod
    async def delete(self, task_ids: Sequence[str]) -> int:
        """Delete the finished rows among ``task_ids``; returns how many were deleted."""

    @abstractmethod
    async def delete_finished_before(self, end_before_us: int) -> int:
        """Delete the finished rows that ended before ``end_before_us``; returns how many.

        Backends that store expiring entries as rows also drop the expired ones here
        (idempotency keys, locks, leases): they already count as absent.
        """

    # Idempotency keys.

    @abstractmethod
    async def claim_idempotency_key(self, key: str, task_id: str, ttl: float | None) -> str:
        """Atomically take ``key`` for ``task_id`` unless someone holds it; return the holder.

        The holder is ``task_id`` when this call took the key (or already held it), else the
        task id that holds it. ``ttl`` is seconds until the key expires (None: never); an
        expired key is taken over.
        """

    @abstractmethod
    async def release_idempotency_key(self, key: str, task_id: str) -> None:
        """Free ``key`` if ``task_id`` holds it; otherwise do nothing."""

    # Instances and orphaned journal rows.

    @abstractmethod
    async def heartbeat(self, instance_id: str, lease: float) -> None:
        """Record that ``instance_id`` is alive for ``lease`` more seconds (server clock)."""

    @abstractmethod
    async def retire(self, instance_id: str) -> None:
        """End the lease of ``instance_id`` now (a graceful exit): rows it still owns become orphans."""

    @abstractmethod
    async def claim_orphans(self, instance_id: str, limit: int = 1000) -> list[TaskRow]:
        """Take over up to ``limit`` rows whose owner is another instance without a live lease.

        The rows become owned by ``instance_id`` and are returned oldest first. When several
        instances claim at once, each row goes to exactly one of them. An instance must keep
        its own lease alive (``heartbeat``) while it claims, or others may take its rows.
        Which rows are taken when more than ``limit`` wait is unspecified.
        """

    # Schedules.

    @abstractmethod
    async def acquire_lock(self, key: str, ttl: float) -> bool:
        """True for the first caller; False for everyone else until ``ttl`` seconds have passed."""

    @abstractmethod
    async def save_scheduled(self, row: ScheduledRow) -> None:
        """Store a one-off run, replacing any run with the same ``run_key``."""

    @abstractmethod
    async def load_due(self, before_us: int, limit: int = 1000) -> list[ScheduledRow]:
        """Up to ``limit`` runs with ``fire_us <= before_us``, ordered by ``(fire_us, run_key)``."""

    @abstractmethod
    async def delete_scheduled(self, run_key: str) -> bool:
        """Delete a stored run; False when there was none."""

    @abstractmethod
    async def claim_scheduled(self, run_key: str) -> ScheduledRow | None:
        """Atomically delete and return a stored run: exactly one of concurrent callers gets it."""

    # Metadata.

    @abstractmethod
    async def save_metadata(self, key: str, value: str) -> None:
        """Set ``key`` to ``value``."""

    @abstractmethod
    async def load_metadata(self, key: str) -> str | None:
        """The value of ``key``, or None."""
