"""The dashboard page and its assets: real package files, nothing fetched from the network."""

from __future__ import annotations

import json
import re
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient

from fastapi_taskflow import ManagedBackgroundTasks, TaskAdmin, TaskManager

PACKAGE_FILES = ("index.html", "login.html", "app.js", "app.css")


def test_dashboard_files_are_package_data_with_no_external_reference() -> None:
    root = files("fastapi_taskflow.dashboard")
    for name in PACKAGE_FILES:
        text = root.joinpath(name).read_text(encoding="utf-8")
        # The only absolute URL allowed is the SVG namespace, which is a name, not a fetch.
        urls = set(re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s\"')]*", text)) - {"http://www.w3.org/2000/svg"}
        assert not urls, (name, urls)
        assert "@import" not in text and "@font-face" not in text, name


def test_page_and_assets_are_served_with_a_strict_policy() -> None:
    app = FastAPI()
    TaskAdmin(app, TaskManager(), title="Ops <board>", path="/admin/jobs")
    with TestClient(app) as client:
        page = client.get("/admin/jobs/dashboard")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
        assert "<title>Ops &lt;board&gt;</title>" in page.text
        assert '"title": "Ops \\u003cboard>"' in page.text  # the config cannot close its script element
        for asset in re.findall(r'(?:href|src)="(dashboard/assets/[^"]+)"', page.text):
            response = client.get(f"/admin/jobs/{asset}")
            assert response.status_code == 200, asset
            name = asset.split("/")[-1].split("?")[0]
            assert response.content == files("fastapi_taskflow.dashboard").joinpath(name).read_bytes()
        assert client.get("/admin/jobs/dashboard/assets/index.html").status_code == 404
        assert client.get("/admin/jobs/dashboard/assets/..%2F__init__.py").status_code == 404
        schema = client.get("/openapi.json").json()
        assert not [p for p in schema["paths"] if "dashboard" in p or "auth" in p]


def test_page_config_tells_whether_a_retry_replaces_its_original() -> None:
    # The page drops a retried row itself when the retry deletes it: no stream event says so.
    for replaces in (True, False):
        app = FastAPI()
        TaskAdmin(app, TaskManager(retry_replaces_original=replaces))
        with TestClient(app) as client:
            page = client.get("/tasks/dashboard").text
        found = re.search(r'<script id="taskflow-config" type="application/json">(.*?)</script>', page)
        assert found is not None
        assert json.loads(found[1])["retryReplaces"] is replaces


def test_registered_tasks_and_arguments_routes(tmp_path: Path) -> None:
    # Arguments are stored (as JSON) for journaled tasks: persist=True with a snapshot file.
    manager = TaskManager(snapshot_db=str(tmp_path / "tasks.db"))

    @manager.task(retries=2, delay=0.5, backoff=3.0, persist=True, name="bill")
    def bill(customer: str, amount: int = 0) -> None: ...

    @manager.task()
    async def ping() -> None: ...

    app = FastAPI()
    TaskAdmin(app, manager, display_func_args=True, auto_install=True)

    @app.post("/bill")
    def enqueue(tasks: ManagedBackgroundTasks) -> dict[str, str]:
        return {"persisted": tasks.add_task(bill, "acme", amount=5), "plain": tasks.add_task(ping)}

    with TestClient(app) as client:
        registered = client.get("/tasks/dashboard/registered").json()
        assert [r["name"] for r in registered] == ["bill", "ping"]
        assert registered[0] | {"name": "bill"} == {
            "name": "bill",
            "executor": "thread",
            "retries": 2,
            "delay": 0.5,
            "backoff": 3.0,
            "persist": True,
            "requeue_on_interrupt": False,
            "eager": False,
            "priority": None,
            "queue": None,
        }
        ids = client.post("/bill").json()
        assert client.get(f"/tasks/dashboard/arguments/{ids['persisted']}").json() == {
            "stored": True,
            "args": ["acme"],
            "kwargs": {"amount": 5},
        }
        assert client.get(f"/tasks/dashboard/arguments/{ids['plain']}").json() == {"stored": False}
        assert client.get("/tasks/dashboard/arguments/nope").status_code == 404


def test_arguments_are_not_served_unless_asked_for() -> None:
    app = FastAPI()
    TaskAdmin(app, TaskManager())
    with TestClient(app) as client:
        assert client.get("/tasks/dashboard/arguments/some-id").status_code == 404
