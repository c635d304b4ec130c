from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import fastapi.dependencies.utils as fastapi_dependency_utils
import pytest


@pytest.fixture(autouse=True)
def _restore_fastapi_background_tasks() -> Iterator[None]:
    # auto_install patches FastAPI process-wide; each test starts from the original.
    original = fastapi_dependency_utils.BackgroundTasks
    yield
    fastapi_dependency_utils.BackgroundTasks = original  # type: ignore[misc]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's headless chromium, one per test module (Playwright never downloads a browser here)."""
    import playwright.sync_api as playwright_sync

    from .browsing import CHROMIUM

    with playwright_sync.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield launched
        launched.close()
