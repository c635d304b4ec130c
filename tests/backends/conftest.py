"""Fixtures: each test gets a fresh namespace on a real server, once per backend kind.

A server that does not answer skips its tests, or fails them under
``TASKFLOW_REQUIRE_SERVICES=1`` (CI starts every server and sets it).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from fastapi_taskflow.backends import SharedBackend
from fastapi_taskflow.backends.base import redact

from .services import ENV_VARS, KINDS, REQUIRE_VAR, Namespace, server_url, unreachable

_reasons: dict[str, str | None] = {}


async def require_server(kind: str) -> None:
    """Skip (or, under ``TASKFLOW_REQUIRE_SERVICES=1``, fail) when the server of ``kind`` does not answer."""
    if kind not in _reasons:
        _reasons[kind] = await unreachable(kind)
    reason = _reasons[kind]
    if reason is None:
        return
    message = (
        f"the {kind} server at {redact(server_url(kind))} does not answer ({reason}); start it or set {ENV_VARS[kind]}"
    )
    if os.environ.get(REQUIRE_VAR) == "1":
        pytest.fail(f"{message} ({REQUIRE_VAR}=1)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(params=KINDS)
async def kind(request: pytest.FixtureRequest) -> str:
    await require_server(request.param)
    return str(request.param)


@asynccontextmanager
async def isolated(kind: str) -> AsyncIterator[Namespace]:
    """A fresh namespace on the server of ``kind``, dropped afterwards."""
    await require_server(kind)
    space = Namespace.fresh(kind)
    await space.create()
    try:
        yield space
    finally:
        await space.drop()


@pytest.fixture
async def namespace(kind: str) -> AsyncIterator[Namespace]:
    async with isolated(kind) as space:
        yield space


@pytest.fixture
async def backend(namespace: Namespace) -> AsyncIterator[SharedBackend]:
    async with namespace.backend() as opened:
        yield opened
