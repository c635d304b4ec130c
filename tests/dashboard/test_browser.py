"""The dashboard in real headless Chromium (Debian's /usr/bin/chromium) against a real uvicorn process."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import playwright.sync_api as playwright_sync

from .browsing import BROWSER_TESTS, Watched, expect_live, row
from .server import serve

# The README's picture is refreshed with `make screenshot`; a plain test run leaves the tree alone.
SCREENSHOT = Path(os.environ.get("TASKFLOW_SCREENSHOT", Path(tempfile.gettempdir()) / "taskflow-dashboard.png"))

pytestmark = BROWSER_TESTS


def test_live_dashboard(browser: Any, tmp_path: Path) -> None:
    with serve(tmp_path) as server:
        early = server.enqueue("report", "early")
        server.wait_status(early, "success")
        watched = Watched(browser, server, viewport={"width": 1440, "height": 900})
        page = watched.page
        page.goto(f"{server.url}/tasks/dashboard")
        expect = playwright_sync.expect
        expect(page).to_have_title("Acme tasks")
        expect(page.locator("h1.brand")).to_have_text("Acme tasks")
        expect_live(page)
        expect(row(page, early, "success")).to_be_visible()
        page.evaluate("window.__sameDocument = true")  # gone if the page reloads

        # A task enqueued through the API appears, then changes to success, without a reload.
        gated = server.enqueue("gate", "g1")
        expect(row(page, gated, "running")).to_be_visible()
        row(page, gated).click()
        panel = page.locator("#panel")
        expect(panel).to_be_visible()
        expect(page.locator("#detail-id")).to_have_text(gated)
        expect(page.locator("#detail-logs")).to_contain_text("waiting for gate g1")
        server.client.post("/open/g1").raise_for_status()
        expect(row(page, gated, "success")).to_be_visible()
        expect(page.locator("#detail-status")).to_have_text("success")
        expect(page.locator("#detail-logs")).to_contain_text("gate g1 opened")  # log lines arrive live
        page.keyboard.press("Escape")
        expect(panel).to_be_hidden()

        # Metrics cards follow the stream.
        expect(page.locator('[data-metric="total"]')).to_have_text("2")

        # Filtering by status is done by the server; live rows respect the filter.
        for customer in ("alpha", "beta"):
            server.enqueue("report", customer)
        failed = server.enqueue("charge")
        server.wait_status(failed, "failed")
        page.select_option("#status", "failed")
        expect(page.locator("#tasks tbody tr")).to_have_count(1)
        expect(row(page, failed, "failed")).to_be_visible()
        server.enqueue("report", "gamma")
        failed_again = server.enqueue("charge")
        expect(row(page, failed_again, "failed")).to_be_visible()
        expect(page.locator("#tasks tbody tr")).to_have_count(2)
        expect(page.locator('#tasks tbody tr[data-status="success"]')).to_have_count(0)

        # The detail panel of a failed task: error, traceback, retries, logs.
        row(page, failed).click()
        expect(page.locator("#detail-error")).to_have_text("card declined for 42")
        expect(page.locator("#detail-trace")).to_contain_text("ValueError")
        expect(page.locator("#panel")).to_contain_text("3 (2 retries)")
        expect(page.locator("#detail-logs")).to_contain_text("--- Retry")
        page.locator("#detail-close").click()

        # Function filter, then back to everything.
        page.select_option("#status", "")
        page.fill("#name", "send_report")
        expect(page.locator("#tasks tbody tr")).to_have_count(4)
        page.fill("#name", "")
        expect(page.locator("#tasks tbody tr")).to_have_count(7)

        # Id search opens the detail panel.
        page.fill("#search", early)
        page.press("#search", "Enter")
        expect(page.locator("#detail-id")).to_have_text(early)
        expect(page.locator("#panel .tag")).to_have_text("customer=early")
        page.locator("#detail-close").click()
        page.fill("#search", "")

        # Sorting the current page by function name.
        page.locator('#tasks th[data-sort="func_name"]').click()
        names = page.locator("#tasks tbody td.fn").all_inner_texts()
        assert names == sorted(names)
        page.locator('#tasks th[data-sort="func_name"]').click()
        assert page.locator("#tasks tbody td.fn").all_inner_texts() == sorted(names, reverse=True)

        # Pause counts new tasks instead of showing them; resume shows them.
        page.locator("#pause").click()
        paused_id = server.enqueue("report", "paused")
        expect(page.locator("#pause")).to_have_text("Resume (+1 new)")
        assert row(page, paused_id).count() == 0
        page.locator("#pause").click()
        expect(row(page, paused_id, "success")).to_be_visible()

        # CSV export of the rows shown.
        with page.expect_download() as download_info:
            page.locator("#export").click()
        download = download_info.value
        assert re.fullmatch(r"tasks-\d{4}-\d{2}-\d{2}\.csv", download.suggested_filename)
        csv_lines = Path(download.path()).read_text().strip().splitlines()
        assert csv_lines[0] == "ID,Function,Status,Duration (ms),Retries,Created,Error"
        assert len(csv_lines) == 1 + page.locator("#tasks tbody tr").count()
        assert any(line.startswith(failed) and "card declined for 42" in line for line in csv_lines)

        # Registered tasks tab.
        page.locator('.tabs button[data-tab="registered"]').click()
        expect(page.locator("#registered tbody tr")).to_have_count(5)
        expect(page.locator("#registered")).to_contain_text("charge_card")
        page.locator('.tabs button[data-tab="tasks"]').click()

        assert page.evaluate("window.__sameDocument") is True
        page.locator('#tasks th[data-sort="func_name"]').click()  # third click: the server's order
        row(page, failed).click()
        expect(page.locator("#detail-trace")).to_be_visible()
        page.wait_for_timeout(1500)  # let a chart point or two arrive before the picture
        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOT))

        # A phone-sized screen: the table keeps its essential columns.
        page.set_viewport_size({"width": 390, "height": 844})
        expect(page.locator("#tasks th.c-id")).to_be_hidden()
        expect(page.locator("#tasks th.c-status")).to_be_visible()

        assert watched.errors == []
        assert watched.foreign == []
        watched.close()


def test_sse_reconnect_loses_no_event(browser: Any, tmp_path: Path) -> None:
    # Streams end every 2 s here; the browser reconnects by itself with Last-Event-ID. The
    # second connection is held back until tasks were created and finished on the server,
    # so every change of those tasks happens while the browser is disconnected.
    with serve(tmp_path, env={"TASKFLOW_TEST_STREAM_SECONDS": "2"}) as server:
        before = server.enqueue("report", "before")
        server.wait_status(before, "success")
        watched = Watched(browser, server)
        page = watched.page
        stream_requests: list[str] = []
        missed: list[str] = []
        list_requests: list[str] = []

        def hold_reconnect(route: Any) -> None:
            stream_requests.append(route.request.url)
            if len(stream_requests) == 2:
                for customer in ("r1", "r2", "r3"):
                    missed.append(server.enqueue("report", customer))
                for task_id in missed:
                    server.wait_status(task_id, "success")
            route.continue_()

        page.route("**/tasks/dashboard/stream**", hold_reconnect)
        page.on("request", lambda r: list_requests.append(r.url) if re.search(r"/tasks\?", r.url) else None)
        page.goto(f"{server.url}/tasks/dashboard")
        expect = playwright_sync.expect
        expect_live(page)
        expect(row(page, before, "success")).to_be_visible()
        expect(page.locator("#tasks tbody tr")).to_have_count(4, timeout=20_000)
        for task_id in missed:
            expect(row(page, task_id, "success")).to_be_visible()
        assert len(stream_requests) >= 2
        # What the server received: the browser's own reconnect, carrying Last-Event-ID.
        seen_by_server = server.client.get("/debug/stream-requests").json()
        resumed_from = seen_by_server[1]["last_event_id"]
        # Resumed after the events of the task seen before the drop (created, running, log, success).
        assert resumed_from is not None and int(resumed_from) >= 4
        assert len(list_requests) == 1, "the rows came from the resumed stream, not from a reload"
        assert watched.errors == []
        watched.close()


def test_login_flow(browser: Any, tmp_path: Path) -> None:
    with serve(tmp_path, env={"TASKFLOW_TEST_AUTH": "ops:hunter2"}) as server:
        assert server.client.get("/tasks").status_code == 401
        assert server.client.get("/tasks/dashboard/stream").status_code == 401
        watched = Watched(browser, server)
        page = watched.page
        expect = playwright_sync.expect

        page.goto(f"{server.url}/tasks/dashboard")
        expect(page).to_have_url(re.compile(r"/tasks/auth/login$"))
        expect(page).to_have_title("Sign in · Acme tasks")
        assert page.locator("#tasks").count() == 0

        page.fill('input[name="username"]', "ops")
        page.fill('input[name="password"]', "wrong")
        page.click('button[type="submit"]')
        expect(page.locator(".login-error")).to_have_text("Invalid username or password")

        page.fill('input[name="username"]', "ops")
        page.fill('input[name="password"]', "hunter2")
        page.click('button[type="submit"]')
        expect(page).to_have_url(re.compile(r"/tasks/dashboard$"))
        expect_live(page)
        cookie = next(c for c in watched.context.cookies() if c["name"] == "taskflow_token")
        assert cookie["httpOnly"] is True and cookie["sameSite"] == "Lax"
        assert page.evaluate("document.cookie") == ""

        # An authenticated browser gets data, live.
        login_client_task = server.client.post("/enqueue/report", params={"value": "x"})
        task_id = login_client_task.json()["task_id"]
        expect(row(page, task_id, "success")).to_be_visible()

        page.locator("#logout").click()
        expect(page).to_have_url(re.compile(r"/tasks/auth/login$"))
        page.goto(f"{server.url}/tasks/dashboard")
        expect(page).to_have_url(re.compile(r"/tasks/auth/login$"))
        assert task_id not in page.content()
        # 401 responses of the guarded routes show up as console errors only while signed out.
        assert [e for e in watched.errors if "401" not in e] == []
        watched.close()
