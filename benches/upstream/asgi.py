"""A GET sent straight to an ASGI app (no socket): the read scenarios of both benchmark harnesses.

Standard library only, so the script run in the fastapi-taskflow 0.12.1 venv can use it too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any


def get_scope(path: str, query: bytes = b"") -> dict[str, Any]:
    """The ASGI scope of a GET of ``path`` with ``query`` from a local client."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", b"bench")],
        "client": ("127.0.0.1", 50_000),
        "server": ("bench", 80),
    }


def asgi_get(app: Any, path: str, query: bytes = b"") -> Callable[[], Awaitable[int]]:
    """A coroutine function sending one GET to ``app`` and returning the status code."""
    scope = get_scope(path, query)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def get() -> int:
        status = 0

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        await app(dict(scope), receive, send)
        return status

    return get
