"""GET /tasks/metrics in OpenMetrics text (by query or Accept header) and JSON by default."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from fastapi_taskflow import TaskAdmin, TaskManager

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


@pytest.fixture
def client() -> TestClient:
    manager = TaskManager()
    app = FastAPI()
    TaskAdmin(app, manager)
    for _ in range(3):
        manager.core.create("job", queue="mail")
    return TestClient(app)


@pytest.mark.parametrize(
    ("query", "accept"),
    [
        ("?format=prometheus", "application/json"),
        ("", "application/openmetrics-text; version=1.0.0"),
        ("", "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"),
    ],
)
def test_openmetrics_text(client: TestClient, query: str, accept: str) -> None:
    response = client.get(f"/tasks/metrics{query}", headers={"Accept": accept})
    assert response.status_code == 200
    assert response.headers["content-type"] == OPENMETRICS
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    created = families["taskflow_tasks_created"].samples
    assert [(s.name, s.labels, s.value) for s in created] == [("taskflow_tasks_created_total", {"func_name": "job"}, 3)]
    depth = families["taskflow_queue_depth"].samples
    assert [(s.labels, s.value) for s in depth] == [({"queue": "mail"}, 3)]


@pytest.mark.parametrize(
    ("query", "accept"),
    [("", "application/json"), ("", "*/*"), ("?format=json", "text/plain"), ("", None)],
)
def test_json_by_default(client: TestClient, query: str, accept: str | None) -> None:
    headers = {"Accept": accept} if accept is not None else {}
    response = client.get(f"/tasks/metrics{query}", headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json()["pending"] == 3


def test_unknown_format_is_422(client: TestClient) -> None:
    assert client.get("/tasks/metrics?format=xml").status_code == 422


def test_list_by_tag() -> None:
    manager = TaskManager()
    app = FastAPI()
    TaskAdmin(app, manager)
    prod = {manager.core.create("job", tags={"env": "prod"})[0] for _ in range(3)}
    manager.core.create("job", tags={"env": "dev"})
    with TestClient(app) as client:
        first = client.get("/tasks", params={"tag": "env=prod", "limit": 2})
        assert first.status_code == 200
        cursor = first.headers["X-Next-Cursor"]
        second = client.get("/tasks", params={"tag": "env=prod", "limit": 2, "cursor": cursor})
        assert "X-Next-Cursor" not in second.headers
        assert {t["task_id"] for t in first.json() + second.json()} == prod
        assert client.get("/tasks?tag=env").status_code == 422
