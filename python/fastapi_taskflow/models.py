"""The data types of the public API: statuses, task and queue configuration, records, one-off runs, audit entries."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import Any, Literal

ExecutorName = Literal["async", "thread", "process"]


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class TaskStatus(str, Enum):
    """Where a task is in its life. Twin of ``STATUSES`` in the cores."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    CANCELLED = "cancelled"
    REJECTED = "rejected"


@dataclass
class TaskConfig:
    """How a registered function runs: retries and backoff, persistence, dispatch."""

    retries: int = 0
    delay: float = 0.0
    backoff: float = 1.0
    persist: bool = False
    name: str | None = None
    requeue_on_interrupt: bool = False
    eager: bool = False
    priority: int | None = None
    executor: ExecutorName | None = None
    queue: str | None = None
    #: Seconds one attempt may run (None: no limit). Beyond the spec; see the README.
    timeout: float | None = None
    #: Up to this fraction of each retry delay is added at random (0: the exact formula).
    jitter: float = 0.0


@dataclass
class QueueConfig:
    """Limits of a named queue; ``None`` means unlimited."""

    concurrency: int | None = None
    max_size: int | None = None


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.isoformat()


def _parse_iso(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    parsed = datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


@dataclass
class TaskRecord:
    """One task as the API shows it."""

    task_id: str
    func_name: str
    status: TaskStatus
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    created_at: datetime = field(default_factory=utc_now)
    start_time: datetime | None = None
    end_time: datetime | None = None
    retries_used: int = 0
    error: str | None = None
    logs: list[str] = field(default_factory=list)
    stacktrace: str | None = None
    idempotency_key: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    encrypted_payload: bytes | None = None
    source: str = "manual"
    priority: int | None = None
    executor: str | None = None
    queue: str = "default"

    @property
    def duration(self) -> float | None:
        if self.start_time is None or self.end_time is None:
            return None
        return (self.end_time - self.start_time).total_seconds()

    def to_dict(self) -> dict[str, Any]:
        """The 16 keys the routes return; never arguments, payload or idempotency key."""
        return {
            "task_id": self.task_id,
            "func_name": self.func_name,
            "status": TaskStatus(self.status).value,
            "created_at": _iso(self.created_at),
            "start_time": _iso(self.start_time),
            "end_time": _iso(self.end_time),
            "duration": self.duration,
            "retries_used": self.retries_used,
            "error": self.error,
            "logs": list(self.logs),
            "stacktrace": self.stacktrace,
            "tags": dict(self.tags),
            "source": self.source,
            "priority": self.priority,
            "executor": self.executor,
            "queue": self.queue,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskRecord:
        created_at = _parse_iso(data["created_at"])
        assert created_at is not None
        return cls(
            task_id=data["task_id"],
            func_name=data["func_name"],
            status=TaskStatus(data["status"]),
            args=tuple(data.get("args") or ()),
            kwargs=dict(data.get("kwargs") or {}),
            created_at=created_at,
            start_time=_parse_iso(data.get("start_time")),
            end_time=_parse_iso(data.get("end_time")),
            retries_used=data.get("retries_used") or 0,
            error=data.get("error"),
            logs=list(data.get("logs") or []),
            stacktrace=data.get("stacktrace"),
            idempotency_key=data.get("idempotency_key"),
            tags=dict(data.get("tags") or {}),
            encrypted_payload=data.get("encrypted_payload"),
            source=data.get("source") or "manual",
            priority=data.get("priority"),
            executor=data.get("executor"),
            queue=data.get("queue") or "default",
        )


@dataclass
class ScheduledOnce:
    """A one-off run stored by ``schedule_once``, waiting for ``fire_at``.

    ``args``/``kwargs`` are empty when the arguments are encrypted (``encrypted_payload``).
    """

    run_key: str
    func_name: str
    fire_at: datetime
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    encrypted_payload: bytes | None = None
    queue: str = "default"
    priority: int | None = None
    idempotency_key: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    created_at: datetime = field(default_factory=utc_now)

    def to_dict(self) -> dict[str, Any]:
        """What the routes show: never the arguments, payload or idempotency key."""
        return {
            "run_key": self.run_key,
            "func_name": self.func_name,
            "fire_at": _iso(self.fire_at),
            "queue": self.queue,
            "priority": self.priority,
            "tags": dict(self.tags),
            "created_at": _iso(self.created_at),
        }


@dataclass
class AuditEntry:
    """One action taken through the task routes: who did what to which task, and when."""

    entry_id: str
    action: str
    task_id: str
    actor: str
    timestamp: datetime
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The six fields, with the timestamp as ISO 8601 with its UTC offset."""
        return {
            "entry_id": self.entry_id,
            "action": self.action,
            "task_id": self.task_id,
            "actor": self.actor,
            "timestamp": _iso(self.timestamp),
            "detail": dict(self.detail),
        }
