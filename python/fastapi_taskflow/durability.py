"""Durable acceptance: a journaled task is on disk before the response carrying its id leaves.

``DurableAcceptance`` is an ASGI middleware. Each HTTP request gets a small marker in a
context variable; ``add_task`` of a journaled task sets it. When the response starts
and the marker is set, the middleware waits for the snapshot writer's next group
commit, so every request accepted in the same moment shares one transaction.

Outside a request (a task enqueued by a task, a startup hook) there is no response
to hold back: the writer is asked to write as soon as it can instead.
"""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, MutableMapping

    from .persistence import SnapshotWriter

    Scope = MutableMapping[str, Any]
    Message = MutableMapping[str, Any]
    Receive = Callable[[], Awaitable[Message]]
    Send = Callable[[Message], Awaitable[None]]
    ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class _RequestMarker:
    __slots__ = ("accepted", "responded")

    def __init__(self) -> None:
        self.accepted = False
        self.responded = False


_current: contextvars.ContextVar[_RequestMarker | None] = contextvars.ContextVar(
    "fastapi_taskflow_request_marker", default=None
)


def journaled_task_accepted() -> None:
    """Called by ``add_task`` after it journaled a task: hold the response until it is written.

    Outside a request (or after its response started), nothing waits: the core wakes the
    writer for the task's row, as for any record left unwritten.
    """
    marker = _current.get()
    if marker is not None and not marker.responded:
        marker.accepted = True


class DurableAcceptance:
    """Holds back the start of each response until the tasks it accepted are journaled."""

    def __init__(self, app: ASGIApp, writer: SnapshotWriter) -> None:
        self.app = app
        self.writer = writer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # The marker is shared by reference: sync endpoints run in a copy of this context.
        marker = _RequestMarker()
        token = _current.set(marker)

        async def send_after_commit(message: Message) -> None:
            if message["type"] == "http.response.start":
                marker.responded = True
                if marker.accepted:
                    # A failed write is logged by the writer and retried; the tasks stay
                    # accepted in memory, so the response goes out either way.
                    await self.writer.durable()
            await send(message)

        try:
            await self.app(scope, receive, send_after_commit)
        finally:
            _current.reset(token)
