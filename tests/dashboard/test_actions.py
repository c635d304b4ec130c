"""The dashboard's actions in real headless Chromium: retry, cancel, dead letters, clear history, audit.

Every action goes through an in-page confirmation and the task routes; what it changes comes
back through the live stream, so each test also checks that the page never reloaded.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .browsing import BROWSER_TESTS, Page, Watched, expect, expect_live, row
from .server import Server, serve

pytestmark = BROWSER_TESTS

SCREENSHOTS = Path("/tmp/taskflow-actions")


def open_dashboard(browser: Any, server: Server, **context: Any) -> tuple[Watched, Page]:
    watched = Watched(browser, server, **context)
    page = watched.page
    page.goto(f"{server.url}/tasks/dashboard")
    expect_live(page)
    page.evaluate("window.__sameDocument = true")  # gone if the page reloads
    return watched, page


def confirm(page: Page, title: str) -> None:
    dialog = page.locator("#confirm")
    expect(dialog).to_be_visible()
    expect(page.locator("#confirm-title")).to_contain_text(title)
    page.locator("#confirm-ok").click()
    expect(dialog).to_be_hidden()


def shot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


def finish(watched: Watched) -> None:
    assert watched.page.evaluate("window.__sameDocument") is True
    assert watched.errors == []
    assert watched.foreign == []
    watched.close()


def test_retry_and_cancel_from_the_detail_panel(browser: Any, tmp_path: Path) -> None:
    with serve(tmp_path) as server:
        failed = server.enqueue("flaky", "f1")
        server.wait_status(failed, "failed")
        watched, page = open_dashboard(browser, server, viewport={"width": 1280, "height": 900})

        # A failed task offers Retry, not Cancel.
        row(page, failed, "failed").click()
        expect(page.locator("#detail-id")).to_have_text(failed)
        expect(page.locator("#detail-cancel")).to_have_count(0)

        # Dismissing the confirmation does nothing, and Escape there leaves the panel open.
        page.locator("#detail-retry").click()
        expect(page.locator("#confirm")).to_be_visible()
        page.keyboard.press("Escape")
        expect(page.locator("#confirm")).to_be_hidden()
        expect(page.locator("#panel")).to_be_visible()
        assert len(server.client.get("/tasks").json()) == 1

        # Confirmed: the panel moves to the new task, which appears and finishes live.
        server.client.post("/open/f1").raise_for_status()
        page.locator("#detail-retry").click()
        shot(page, "retry-confirm")
        confirm(page, "Retry flaky?")
        expect(page.locator("#detail-id")).not_to_have_text(failed)
        retried = page.locator("#detail-id").inner_text()
        expect(page.locator("#detail-result")).to_contain_text("New task created by retrying")
        expect(page.locator("#detail-retry-of")).to_have_text(failed[:8])
        expect(row(page, retried, "success")).to_be_visible()
        expect(page.locator("#detail-status")).to_have_text("success")
        expect(page.locator("#detail-logs")).to_contain_text("gate f1 was open")
        expect(page.locator("#panel .tag")).to_have_text("gate=f1")  # tags carried over
        # retry_replaces_original (the default): the original left the history and the table.
        expect(row(page, failed)).to_have_count(0)
        assert server.client.get(f"/tasks/{failed}").status_code == 404
        assert server.client.get(f"/tasks/{retried}").json()["retry_of"] == failed
        shot(page, "retried")

        # Cancel a pending task: it never runs.
        with server.enqueue_held("h1") as pending:
            expect(row(page, pending, "pending")).to_be_visible()
            row(page, pending).click()
            expect(page.locator("#detail-id")).to_have_text(pending)
            expect(page.locator("#detail-retry")).to_have_count(0)
            page.locator("#detail-cancel").click()
            confirm(page, "Cancel send_report?")
            expect(page.locator("#detail-status")).to_have_text("cancelled")
            expect(row(page, pending, "cancelled")).to_be_visible()
            expect(page.locator("#detail-result")).to_have_text("Cancelled.")
        page.wait_for_timeout(300)  # the held response ended: the background task had its chance to start
        record = server.wait_status(pending, "cancelled")
        assert record["start_time"] is None

        # Cancel a running task, with the keyboard only.
        running = server.enqueue("gate", "g1")
        expect(row(page, running, "running")).to_be_visible()
        row(page, running).focus()
        page.keyboard.press("Enter")
        expect(page.locator("#detail-id")).to_have_text(running)
        page.locator("#detail-cancel").focus()
        page.keyboard.press("Enter")
        expect(page.locator("#confirm")).to_be_visible()
        expect(page.locator("#confirm-cancel")).to_be_focused()  # a destructive action defaults to "keep"
        page.keyboard.press("Shift+Tab")
        expect(page.locator("#confirm-ok")).to_be_focused()
        page.keyboard.press("Enter")
        expect(row(page, running, "cancelled")).to_be_visible()
        expect(page.locator("#detail-status")).to_have_text("cancelled")

        # The audit tab lists the three actions, newest first.
        page.locator("#tab-button-audit").click()
        audit_rows = page.locator("#audit tbody tr")
        expect(audit_rows).to_have_count(3)
        assert [r.get_attribute("data-action") for r in audit_rows.all()] == ["cancel", "cancel", "retry"]
        expect(audit_rows.nth(2)).to_contain_text(failed[:8])
        expect(audit_rows.nth(2)).to_contain_text(retried)  # the detail names the new task
        expect(audit_rows.first).to_contain_text("anonymous")
        shot(page, "audit")
        # A link in the audit log opens that task.
        audit_rows.nth(1).locator("a.task-link").click()
        expect(page.locator("#detail-id")).to_have_text(pending)
        finish(watched)


def test_dead_letters_bulk_retry_and_retry_window(browser: Any, tmp_path: Path) -> None:
    with serve(tmp_path) as server:
        flaky = [server.enqueue("flaky", gate) for gate in ("d1", "d2", "d3")]
        fine = server.enqueue("report", "fine")
        charge = server.enqueue("charge")
        for task_id in [*flaky, charge]:
            server.wait_status(task_id, "failed")
        server.wait_status(fine, "success")
        watched, page = open_dashboard(browser, server, viewport={"width": 1280, "height": 900})

        page.locator("#tab-button-dead").click()
        dead_rows = page.locator("#dead tbody tr")
        expect(dead_rows).to_have_count(4)
        expect(row(page, fine, table="dead")).to_have_count(0)
        expect(page.locator("#dead-retry-selected")).to_be_disabled()

        # A new failure joins the list live.
        charge_again = server.enqueue("charge")
        expect(row(page, charge_again, "failed", table="dead")).to_be_visible()
        expect(dead_rows).to_have_count(5)

        # Retry two selected tasks; their gates are open, so the new tasks succeed and leave no dead letter.
        for gate in ("d1", "d2"):
            server.client.post(f"/open/{gate}").raise_for_status()
        for task_id in flaky[:2]:
            row(page, task_id, table="dead").locator("input.pick").check()
        expect(page.locator("#dead-retry-selected")).to_have_text("Retry selected (2)")
        shot(page, "dead-letters")
        page.locator("#dead-retry-selected").click()
        confirm(page, "Retry 2 tasks?")
        expect(page.locator("#flash")).to_contain_text("Bulk retry: 2 tasks retried.")
        expect(dead_rows).to_have_count(3)
        for task_id in flaky[:2]:
            expect(row(page, task_id, table="dead")).to_have_count(0)
        new_ids = [link.get_attribute("data-task") for link in page.locator("#flash a.task-link").all()]
        assert len(new_ids) == 2
        for new_id in new_ids:
            assert new_id is not None
            server.wait_status(new_id, "success")
        expect(page.locator("#dead-retry-selected")).to_be_disabled()

        # Select all on the page, then none.
        page.locator("#dead-all").check()
        expect(page.locator("#dead-retry-selected")).to_have_text("Retry selected (3)")
        page.locator("#dead-all").uncheck()
        expect(page.locator("#dead-retry-selected")).to_be_disabled()

        # Retry everything that failed in the last hour: d3 now succeeds, the charges fail again.
        server.client.post("/open/d3").raise_for_status()
        page.select_option("#dead-window", "1h")
        page.locator("#dead-retry-window").click()
        confirm(page, "Retry every failed task of the last hour?")
        expect(page.locator("#flash")).to_contain_text("Retry of the last hour: 3 tasks retried.")
        expect(row(page, flaky[2], table="dead")).to_have_count(0)
        expect(row(page, charge, table="dead")).to_have_count(0)
        # The two charges are retried, fail again, and come back as new dead letters.
        expect(page.locator('#dead tbody tr[data-status="failed"]')).to_have_count(2)
        assert set(page.locator("#dead tbody td.fn").all_inner_texts()) == {"charge_card"}

        # The new tasks are in the main table too, without a reload.
        page.locator("#tab-button-tasks").click()
        expect(page.locator('#tasks tbody tr[data-status="success"]')).to_have_count(4)

        page.locator("#tab-button-audit").click()
        expect(page.locator('#audit tbody tr[data-action="bulk_retry"]')).to_have_count(2)
        finish(watched)


def test_dead_letters_page_through_failed_and_interrupted(browser: Any, tmp_path: Path) -> None:
    # Interrupted tasks: journaled ones that ran when the server was killed; the next server marks them.
    with serve(tmp_path) as server:
        a1 = server.enqueue("charge")
        server.wait_status(a1, "failed")
        b1 = server.enqueue("journaled-gate", "never-1")
        server.wait_status(b1, "running")
        a2 = server.enqueue("charge")
        server.wait_status(a2, "failed")
        b2 = server.enqueue("journaled-gate", "never-2")
        server.wait_status(b2, "running")
        server.wait_written()
        server.kill()
    with serve(tmp_path) as server:
        server.wait_status(b1, "interrupted")
        server.wait_status(b2, "interrupted")
        a3 = server.enqueue("charge")
        server.wait_status(a3, "failed")
        watched = Watched(browser, server)
        page = watched.page
        # Two rows a page, so that the merge of the two lists is seen across pages.
        page.add_init_script("localStorage.setItem('taskflow.pageSize', '2')")
        page.goto(f"{server.url}/tasks/dashboard")
        expect_live(page)
        page.locator("#tab-button-dead").click()

        def expect_rows(expected: list[str]) -> None:
            # The ids of the rows shown, in order, once the page that shows them has loaded.
            page.wait_for_function(
                "ids => JSON.stringify([...document.querySelectorAll('#dead tbody tr')].map(r => r.dataset.id))"
                " === JSON.stringify(ids)",
                arg=expected,
            )

        expected_pages = [[a3, b2], [a2, b1], [a1]]
        for number, expected in enumerate(expected_pages, start=1):
            expect(page.locator("#dead-page-info")).to_have_text(re.compile(f"^Page {number} "))
            expect_rows(expected)
            if number < len(expected_pages):
                page.locator("#dead-next").click()
        expect(page.locator("#dead-next")).to_be_disabled()
        page.locator("#dead-prev").click()
        expect(page.locator("#dead-page-info")).to_have_text(re.compile("^Page 2 "))
        expect_rows([a2, b1])

        # One status at a time.
        page.locator("#dead-first").click()
        expect_rows([a3, b2])
        page.select_option("#dead-status", "interrupted")
        expect_rows([b2, b1])
        expect(page.locator("#dead-next")).to_be_disabled()
        assert watched.errors == []
        watched.close()


def test_tag_filter_clear_history_and_snapshot_health(browser: Any, tmp_path: Path) -> None:
    with serve(tmp_path) as server:
        reports = {customer: server.enqueue("report", customer) for customer in ("alpha", "beta", "gamma")}
        for task_id in reports.values():
            server.wait_status(task_id, "success")
        running = server.enqueue("gate", "keep")
        server.wait_status(running, "running")
        watched, page = open_dashboard(browser, server, viewport={"width": 1280, "height": 900})
        task_rows = page.locator("#tasks tbody tr")
        expect(task_rows).to_have_count(4)

        # The snapshot file is healthy.
        expect(page.locator("#snapshot")).to_have_attribute("data-state", "ok")
        expect(page.locator("#snapshot")).to_have_text("Saved")

        # Tag filter: done by the server, and followed live.
        page.fill("#tag", "customer=beta")
        expect(task_rows).to_have_count(1)
        expect(row(page, reports["beta"], "success")).to_be_visible()
        beta_again = server.enqueue("report", "beta")
        server.enqueue("report", "delta")
        expect(row(page, beta_again, "success")).to_be_visible()
        expect(task_rows).to_have_count(2)
        page.fill("#tag", "customer")  # no "=": not sent, marked invalid
        expect(page.locator("#tag")).to_have_attribute("aria-invalid", "true")
        expect(task_rows).to_have_count(2)
        page.fill("#tag", "")
        expect(task_rows).to_have_count(6)

        # Clear history older than one minute, with the server's clock two minutes ahead:
        # every finished task goes, the running one stays.
        server.client.post("/debug/clock-ahead/120").raise_for_status()
        page.locator("#clear-history").click()
        expect(page.locator("#confirm")).to_be_visible()
        page.fill("#clear-value", "1")
        page.select_option("#clear-unit", "min")
        shot(page, "clear-history")
        page.locator("#confirm-ok").click()
        expect(page.locator("#flash")).to_contain_text("History cleared: 5 finished tasks deleted.")
        expect(task_rows).to_have_count(1)
        expect(row(page, running, "running")).to_be_visible()
        expect(page.locator('[data-metric="total"]')).to_have_text("1")
        assert [t["task_id"] for t in server.client.get("/tasks").json()] == [running]
        server.client.post("/open/keep").raise_for_status()
        expect(row(page, running, "success")).to_be_visible()
        finish(watched)

        # A failing snapshot file turns the indicator into a warning that names the error.
        failing = {
            "ok": False,
            "unwritten": 12,
            "failed_writes": 3,
            "last_error": "database or disk is full",
            "last_write_at": None,
        }
        metrics = server.client.get("/tasks/metrics").json()
        body = json.dumps({**metrics, "snapshot": failing})
        watched = Watched(browser, server, viewport={"width": 390, "height": 844})
        page = watched.page
        page.route(
            "**/tasks/metrics", lambda route: route.fulfill(status=200, content_type="application/json", body=body)
        )
        page.route(
            "**/tasks/dashboard/stream**",
            lambda route: route.fulfill(
                status=200,
                headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
                body=(
                    'retry: 60000\nid: 1\nevent: hello\ndata: {"seq": 1, "boot": "b", "series": []}\n\n'
                    f'event: metrics\ndata: {{"metrics": {body}, "point": {{"t": 0, "s": 1}}}}\n\n'
                ),
            ),
        )
        page.goto(f"{server.url}/tasks/dashboard")
        snapshot = page.locator("#snapshot")
        expect(snapshot).to_have_attribute("data-state", "warn")
        expect(snapshot).to_have_text("Snapshot failing: database or disk is full")
        assert "3 failed writes" in (snapshot.get_attribute("title") or "")
        shot(page, "phone-snapshot-warning")
        assert watched.errors == []
        watched.close()


def test_actions_with_auth_pass_the_guards_and_name_the_user(browser: Any, tmp_path: Path) -> None:
    with serve(tmp_path, env={"TASKFLOW_TEST_AUTH": "ops:hunter2"}) as server:
        failed = server.enqueue("flaky", "auth")
        watched = Watched(browser, server)
        page = watched.page
        page.goto(f"{server.url}/tasks/dashboard")
        page.fill('input[name="username"]', "ops")
        page.fill('input[name="password"]', "hunter2")
        page.click('button[type="submit"]')
        expect_live(page)
        expect(row(page, failed, "failed")).to_be_visible()
        row(page, failed).click()
        page.locator("#detail-retry").click()
        confirm(page, "Retry flaky?")
        expect(page.locator("#detail-retry-of")).to_have_text(failed[:8])
        retried = page.locator("#detail-id").inner_text()
        expect(row(page, retried, "failed")).to_be_visible()  # the gate is still closed
        page.locator("#tab-button-audit").click()
        expect(page.locator('#audit tbody tr[data-action="retry"]')).to_contain_text("ops")
        # The same request from another site is refused, session cookie or not.
        cookie = next(c for c in watched.context.cookies() if c["name"] == "taskflow_token")
        refused = server.client.post(
            f"/tasks/{retried}/retry",
            headers={
                "Cookie": f"taskflow_token={cookie['value']}",
                "Sec-Fetch-Site": "cross-site",
                "Origin": "https://evil.example",
            },
        )
        assert refused.status_code == 403
        assert watched.errors == []
        watched.close()
