"""Helpers of the browser tests: Debian's chromium driven by Playwright, and a watched page."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import playwright.sync_api as playwright_sync
import pytest

from .server import Server

CHROMIUM = Path("/usr/bin/chromium")
#: Set by .ci/run: there a missing browser is a failure, not a skip.
BROWSER_REQUIRED = os.environ.get("TASKFLOW_REQUIRE_BROWSER") == "1"

#: The marks of a browser test module.
BROWSER_TESTS = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not CHROMIUM.exists() and not BROWSER_REQUIRED, reason="needs Debian's chromium: apt-get install chromium"
    ),
]

Page = Any
expect = playwright_sync.expect


class Watched:
    """A page whose console errors, page errors and requests to other hosts are recorded."""

    def __init__(self, browser: Any, server: Server, **context: Any) -> None:
        self.context = browser.new_context(**context)
        self.page: Page = self.context.new_page()
        self.page.set_default_timeout(15_000)
        self.errors: list[str] = []
        self.foreign: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", self._request)
        self.origin = server.url

    def _request(self, request: Any) -> None:
        if not (request.url.startswith(self.origin) or request.url.startswith(("data:", "blob:"))):
            self.foreign.append(request.url)

    def close(self) -> None:
        self.context.close()


def row(page: Page, task_id: str, status: str | None = None, table: str = "tasks") -> Any:
    selector = f'#{table} tbody tr[data-id="{task_id}"]'
    if status:
        selector += f'[data-status="{status}"]'
    return page.locator(selector)


def expect_live(page: Page) -> None:
    expect(page.locator("#live")).to_have_attribute("data-state", "live")
