from __future__ import annotations

from collections.abc import Iterator

import fastapi.dependencies.utils as fastapi_dependency_utils
import pytest


@pytest.fixture(autouse=True)
def _restore_fastapi_background_tasks() -> Iterator[None]:
    # auto_install patches FastAPI process-wide; each test starts from the original.
    original = fastapi_dependency_utils.BackgroundTasks
    yield
    fastapi_dependency_utils.BackgroundTasks = original  # type: ignore[misc]
