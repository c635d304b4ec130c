"""The README's quick start, copied into a file, served by a real uvicorn process."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from .server import uvicorn_server

QUICKSTART = Path(__file__).parents[2] / "examples" / "quickstart.py"

# Appended to the quick start: a task that fails twice, then succeeds.
FLAKY = """

_attempts = {"n": 0}


@task_manager.task(retries=3, delay=0.05, backoff=2.0)
def flaky_sync() -> None:
    _attempts["n"] += 1
    if _attempts["n"] <= 2:
        raise RuntimeError(f"attempt {_attempts['n']} failed")


@app.post("/flaky")
def enqueue_flaky(background_tasks: BackgroundTasks):
    return {"task_id": background_tasks.add_task(flaky_sync)}
"""


def wait_for_status(client: httpx.Client, task_id: str, status: str, timeout: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        record: dict[str, Any] = client.get(f"/tasks/{task_id}").json()
        if record.get("status") == status or time.monotonic() > deadline:
            return record
        time.sleep(0.05)


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    assert 'TaskManager(snapshot_db="tasks.db"' in QUICKSTART.read_text()
    (tmp_path / "app.py").write_text(QUICKSTART.read_text() + FLAKY)
    return tmp_path


@pytest.mark.e2e
def test_quickstart_under_uvicorn_survives_a_restart(app_dir: Path) -> None:
    with uvicorn_server(app_dir) as server:
        client = server.client
        response = client.post("/signup", params={"email": "ada@example.com"})
        assert response.status_code == 200
        signup_id = response.json()["task_id"]
        assert uuid.UUID(signup_id).version == 4

        record = wait_for_status(client, signup_id, "success")
        assert record["status"] == "success"
        assert record["func_name"] == "send_email"
        assert record["retries_used"] == 0

        flaky_id = client.post("/flaky").json()["task_id"]
        flaky = wait_for_status(client, flaky_id, "success")
        assert flaky["status"] == "success"
        assert flaky["retries_used"] == 2

        listed = client.get("/tasks").json()
        assert [t["task_id"] for t in listed] == [flaky_id, signup_id]

        metrics = client.get("/tasks/metrics").json()
        assert metrics["total"] == 2 and metrics["success"] == 2
        assert metrics["by_name"]["flaky_sync"]["success"] == 1

        assert client.get(f"/tasks/{uuid.uuid4()}").status_code == 404

    assert (app_dir / "tasks.db").exists()

    with uvicorn_server(app_dir) as server:
        client = server.client
        assert client.get(f"/tasks/{signup_id}").json()["status"] == "success"
        restored = client.get(f"/tasks/{flaky_id}").json()
        assert restored["retries_used"] == 2
        assert restored["logs"] == flaky["logs"]
        assert [t["task_id"] for t in client.get("/tasks").json()] == [flaky_id, signup_id]
        metrics = client.get("/tasks/metrics").json()
        assert metrics["total"] == 2 and metrics["success"] == 2
