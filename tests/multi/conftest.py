"""Fixtures: a fresh namespace per test on each shared server (as in tests/backends), and the test's cluster.

A server that does not answer skips its tests, or fails them under
``TASKFLOW_REQUIRE_SERVICES=1``. Tests marked ``restarts_server`` stop and restart a
shared server: they run after every other test of the session.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from backends.conftest import isolated
from backends.services import KINDS, Namespace

from .cluster import Cluster

RESTARTS_SERVER = "restarts_server"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{RESTARTS_SERVER}: stops and restarts a shared server; runs after every other test of the session"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Move the tests that restart a server to the end, so that no other test meets it down or restarting."""
    last = [item for item in items if item.get_closest_marker(RESTARTS_SERVER) is not None]
    if last:
        items[:] = [item for item in items if item.get_closest_marker(RESTARTS_SERVER) is None] + last


@pytest.fixture(params=KINDS)
def namespace(request: pytest.FixtureRequest) -> Iterator[Namespace]:
    """A fresh namespace on the server of each kind (skipped, or failed, when it does not answer), dropped after."""
    loop = asyncio.new_event_loop()
    try:
        space_of = isolated(str(request.param))
        # One loop for both ends: the context manager is an async generator bound to it.
        space = loop.run_until_complete(space_of.__aenter__())
        try:
            yield space
        finally:
            loop.run_until_complete(space_of.__aexit__(None, None, None))
    finally:
        loop.close()


@pytest.fixture
def cluster(tmp_path: Path, namespace: Namespace) -> Iterator[Cluster]:
    """No instance yet: the test starts those it needs; all still running are stopped (SIGTERM) at the end."""
    with Cluster(tmp_path, namespace) as instances:
        yield instances
