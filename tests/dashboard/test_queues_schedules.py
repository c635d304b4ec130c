"""The Queues and Schedules tabs in real headless Chromium, against the real routes of a uvicorn process.

Queue figures come with the stream's metrics tick; limits are edited through
``PATCH /tasks/queues/{name}``. Schedules are real ones (``@task_manager.schedule`` and
``schedule_once`` on the test app's snapshot file), listed by ``GET /tasks/schedules`` and
cancelled through ``DELETE /tasks/schedules/{run_key}``.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

from .browsing import BROWSER_TESTS, Page, expect
from .server import Server, serve
from .test_actions import confirm, finish, open_dashboard

pytestmark = BROWSER_TESTS

# `make screenshot` sets this to docs/dashboard-schedules.png; a plain test run leaves the tree alone.
SCHEDULES_SCREENSHOT = os.environ.get("TASKFLOW_SCHEDULES_SCREENSHOT")


def card(page: Page, queue: str) -> Any:
    return page.locator(f'#queues article[data-queue="{queue}"]')


def figure(page: Page, queue: str, key: str) -> Any:
    return card(page, queue).locator(f'[data-figure="{key}"]')


def queue_limits(server: Server, queue: str) -> tuple[int | None, int | None]:
    stats = {q["name"]: q for q in server.client.get("/tasks/queues").json()}[queue]
    return stats["concurrency"], stats["max_size"]


def test_queues_tab_follows_the_queues_and_edits_their_limits(browser: Any, tmp_path: Path) -> None:
    with serve(tmp_path, env={"TASKFLOW_TEST_QUEUES": "1"}) as server:
        watched, page = open_dashboard(browser, server, viewport={"width": 1280, "height": 900})
        patches: list[str | None] = []
        page.on("request", lambda r: patches.append(r.post_data) if r.method == "PATCH" else None)

        # The tab is reached from the tab list with the arrow keys.
        page.locator("#tab-button-tasks").focus()
        page.keyboard.press("ArrowRight")
        page.keyboard.press("ArrowRight")
        expect(page.locator("#tab-button-queues")).to_be_focused()
        expect(page.locator("#tab-queues")).to_be_visible()
        cards = page.locator("#queues article")
        expect(cards).to_have_count(3)
        assert [c.get_attribute("data-queue") for c in cards.all()] == ["default", "email", "reports"]
        expect(page.locator("#queues-empty")).to_be_hidden()
        email = card(page, "email")
        expect(email.locator(".queue-limits")).to_have_text("Concurrency 1 · max waiting 1")
        expect(card(page, "reports").locator(".queue-limits")).to_have_text("Concurrency 4 · max waiting unlimited")
        for key in ("pending", "running", "finished", "rejected"):
            expect(figure(page, "email", key)).to_have_text("0")

        # Tasks run: one runs, one waits (the queue is then full), a third is turned away.
        first = server.enqueue_to("email", "e1")
        expect(figure(page, "email", "running")).to_have_text("1")
        expect(email.locator(".queue-usage")).to_have_text("1 of 1 running")
        expect(email.locator(".meter")).to_have_attribute("aria-valuenow", "1")
        expect(email.locator(".meter")).to_have_attribute("data-level", "full")
        expect(email.locator(".queue-full")).to_be_hidden()
        second = server.enqueue_to("email", "e1")
        expect(figure(page, "email", "pending")).to_have_text("1")
        expect(email.locator(".queue-full")).to_be_visible()
        assert server.enqueue_to("email", "e1") is None
        expect(figure(page, "email", "rejected")).to_have_text("1")
        server.client.post("/open/e1").raise_for_status()
        expect(figure(page, "email", "finished")).to_have_text("2")
        expect(figure(page, "email", "running")).to_have_text("0")
        expect(figure(page, "email", "pending")).to_have_text("0")
        expect(email.locator(".queue-full")).to_be_hidden()
        for task_id in (first, second):
            assert task_id is not None
            server.wait_status(task_id, "success")

        # A bad limit is refused in the dialog, and nothing is sent.
        email.locator(".queue-edit").click()
        expect(page.locator("#confirm-title")).to_have_text("Limits of queue email")
        concurrency = page.locator("#limit-concurrency")
        expect(concurrency).to_be_focused()
        expect(concurrency).to_have_value("1")
        expect(page.locator("#limit-max_size")).to_have_value("1")
        concurrency.fill("0")
        page.locator("#confirm-ok").click()
        error = page.locator("#confirm-error")
        expect(error).to_have_text("Concurrency must be a whole number of at least 1, or tick “No limit”.")
        expect(concurrency).to_have_attribute("aria-invalid", "true")
        expect(page.locator("#confirm")).to_be_visible()
        assert patches == []

        # The server's own refusal shows too: the request is rewritten on its way, as a client
        # out of step with the server would send it, and the real route answers 422.
        page.route(
            "**/tasks/queues/email",
            lambda route: route.continue_(post_data=json.dumps({"concurrency": 0, "max_size": 1})),
        )
        concurrency.fill("3")
        page.locator("#confirm-ok").click()
        expect(error).to_have_text("Not saved: concurrency: Input should be greater than or equal to 1")
        expect(page.locator("#confirm")).to_be_visible()
        page.unroute("**/tasks/queues/email")
        assert queue_limits(server, "email") == (1, 1)

        # No limit on waiting, then Enter in a field saves.
        page.locator("#limit-max_size-none").check()
        expect(page.locator("#limit-max_size")).to_be_disabled()
        concurrency.press("Enter")
        expect(page.locator("#confirm")).to_be_hidden()
        expect(email.locator(".queue-limits")).to_have_text("Concurrency 3 · max waiting unlimited")
        expect(page.locator("#flash")).to_contain_text("Queue email: concurrency 3, max waiting unlimited.")
        assert json.loads(patches[-1] or "") == {"concurrency": 3, "max_size": None}
        assert queue_limits(server, "email") == (3, None)

        # The new limit holds: three run at once, and nothing is turned away any more.
        started = [server.enqueue_to("email", "e2") for _ in range(4)]
        assert None not in started
        expect(figure(page, "email", "running")).to_have_text("3")
        expect(figure(page, "email", "pending")).to_have_text("1")
        expect(email.locator(".queue-usage")).to_have_text("3 of 3 running")
        expect(email.locator(".queue-full")).to_be_hidden()
        server.client.post("/open/e2").raise_for_status()
        expect(figure(page, "email", "finished")).to_have_text("6")
        expect(figure(page, "email", "rejected")).to_have_text("1")
        # The browser logs the refused PATCH; it is the one error expected here.
        watched.errors.remove(
            "Failed to load resource: the server responded with a status of 422 (Unprocessable Entity)"
        )
        finish(watched)


def test_schedules_tab_lists_recurring_and_one_off_runs_and_cancels_one(browser: Any, tmp_path: Path) -> None:
    with serve(tmp_path, env={"TASKFLOW_TEST_SCHEDULES": "1"}) as server:
        server.schedule_once("report-later", 3600, "later")
        server.schedule_once("report-soon", 10, "soon")
        watched, page = open_dashboard(browser, server, viewport={"width": 1440, "height": 900})

        # This app has no named queues: the Queues tab says how to have them.
        page.locator("#tab-button-queues").click()
        expect(page.locator("#queues-empty")).to_be_visible()
        expect(page.locator("#queues-empty")).to_contain_text("QueueConfig(concurrency=5, max_size=1000)")
        expect(page.locator("#queues article")).to_have_count(0)

        page.locator("#tab-button-schedules").click()
        expect(page.locator("#recurring tbody tr")).to_have_count(2)
        recurring = {r["name"]: r for r in server.client.get("/tasks/schedules").json()["recurring"]}
        digest = page.locator('#recurring tr[data-schedule="hourly_digest"]')
        expect(digest.locator("td.trigger")).to_have_text("every hour")
        next_run = digest.locator("td.next time")
        expect(next_run).to_have_text(re.compile(r"^in (\d+ min|\d+ min \d+ s|\d+ s)$"))
        expect(next_run).to_have_attribute("datetime", recurring["hourly_digest"]["next_run"])
        expect(next_run).to_have_attribute("title", re.compile(r"\d\d:\d\d:\d\d"))
        # run_on_startup fired it once already.
        assert recurring["hourly_digest"]["last_run"] is not None
        expect(digest.locator("td.last time")).to_have_text(re.compile(r"(ago|just now)$"))
        cleanup = page.locator('#recurring tr[data-schedule="nightly_cleanup"]')
        expect(cleanup.locator("td.trigger")).to_have_text("0 3 * * * Europe/Paris")
        expect(cleanup.locator("td.last")).to_have_text("not yet")

        # One-off runs, soonest first, counting down.
        runs = page.locator("#one-off tbody tr")
        expect(runs).to_have_count(2)
        assert [r.get_attribute("data-run-key") for r in runs.all()] == ["report-soon", "report-later"]
        soon = page.locator('#one-off tr[data-run-key="report-soon"]')
        expect(soon.locator(".tag")).to_have_text("customer=soon")
        expect(soon.locator("td.num")).to_have_text("3")
        countdown = soon.locator("td.fires time")
        expect(countdown).to_have_text(re.compile(r"^in \d+ s$"))
        shown = countdown.inner_text()
        expect(countdown).not_to_have_text(shown)
        if SCHEDULES_SCREENSHOT:
            page.screenshot(path=SCHEDULES_SCREENSHOT)

        # The soon one fires on time, as a scheduled task, and leaves the list without a reload
        # (well before the tab's periodic refresh).
        deadline = time.monotonic() + 20
        while not server.client.get("/tasks", params={"name": "send_report"}).json():
            assert time.monotonic() < deadline, "the one-off run did not fire"
            time.sleep(0.1)
        expect(soon).to_have_count(0, timeout=5_000)
        fired = server.client.get("/tasks", params={"name": "send_report"}).json()
        assert [(t["source"], t["tags"]) for t in fired] == [("scheduled", {"customer": "soon"})]

        # Cancel the other one, with the keyboard: Escape keeps it, confirming cancels it.
        cancel = page.locator('#one-off button[data-run-key="report-later"]')
        cancel.focus()
        page.keyboard.press("Enter")
        expect(page.locator("#confirm-title")).to_have_text("Cancel the run of send_report?")
        expect(page.locator("#confirm-body")).to_contain_text("report-later")
        expect(page.locator("#confirm-cancel")).to_be_focused()  # a destructive action defaults to "keep"
        page.keyboard.press("Escape")
        expect(page.locator("#confirm")).to_be_hidden()
        expect(runs).to_have_count(1)
        cancel.click()
        confirm(page, "Cancel the run of send_report?")
        expect(runs).to_have_count(0)
        expect(page.locator("#one-off-empty")).to_be_visible()
        expect(page.locator("#one-off-empty")).to_contain_text("await task_manager.schedule_once(")
        expect(page.locator("#flash")).to_contain_text("Cancelled: send_report will not run at")
        expect(page.locator("#tab-button-schedules")).to_be_focused()  # no run left to move to
        # The server agrees that it is gone.
        assert server.client.get("/tasks/schedules").json()["one_off"] == []
        assert server.client.delete("/tasks/schedules/report-later").status_code == 404

        # The audit log names the run key, which is no task to link to.
        page.locator("#tab-button-audit").click()
        entry = page.locator('#audit tbody tr[data-action="cancel_scheduled"]')
        expect(entry).to_contain_text("report-later")
        expect(entry.locator("a.task-link")).to_have_count(0)
        finish(watched)
