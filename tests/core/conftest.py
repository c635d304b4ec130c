"""Every core-level test runs against both cores: the Rust extension and the pure-Python twin."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from _corehelpers import StoreFactory, load_core


@pytest.fixture(params=["rust", "python"])
def core(request: pytest.FixtureRequest) -> ModuleType:
    module = load_core(request.param)
    if module is None:
        pytest.fail("the Rust core fastapi_taskflow._core cannot be imported; build it with `maturin develop`")
    return module


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "tasks.db")


@pytest.fixture
def make_store(core: ModuleType) -> Iterator[StoreFactory]:
    """``make_store(db_path=None, **options)``; every store made is closed after the test."""
    stores: list[Any] = []

    def make(db_path: str | None = None, **options: int) -> Any:
        store = core.TaskStore(db_path, **options)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()
