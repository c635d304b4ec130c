"""The dashboard test app (``app_template.py``) served by a real uvicorn process."""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from e2e.server import RunningServer, uvicorn_server

APP_TEMPLATE = Path(__file__).with_name("app_template.py")


@dataclass
class Server(RunningServer):
    def enqueue(self, kind: str, value: str = "x") -> str:
        response = self.client.post(f"/enqueue/{kind}", params={"value": value})
        response.raise_for_status()
        task_id: str = response.json()["task_id"]
        return task_id

    def enqueue_to(self, queue: str, gate: str) -> str | None:
        """A task kept running until ``gate`` opens, in ``queue``; None when the queue turned it away."""
        response = self.client.post(f"/enqueue-to/{queue}/{gate}")
        response.raise_for_status()
        task_id: str | None = response.json()["task_id"]
        return task_id

    def schedule_once(self, run_key: str, seconds: float, customer: str = "acme") -> None:
        """``send_report(customer)`` planned once, ``seconds`` from now (needs the real one-off scheduler)."""
        self.client.post(
            f"/schedule-once/{run_key}", params={"seconds": seconds, "customer": customer}
        ).raise_for_status()

    @contextlib.contextmanager
    def enqueue_held(self, gate: str) -> Iterator[str]:
        """A task kept pending by its held response, until the block ends (which opens the gate)."""
        with self.client.stream("POST", f"/enqueue-held/{gate}") as response:
            response.raise_for_status()
            lines = response.iter_lines()
            task_id: str = json.loads(next(lines))["task_id"]
            try:
                yield task_id
            finally:
                self.client.post(f"/open/{gate}").raise_for_status()
                for _ in lines:
                    pass

    def wait_written(self, timeout: float = 15.0) -> None:
        """Until the snapshot file holds every change (the metrics' ``snapshot.unwritten`` is 0)."""
        deadline = time.monotonic() + timeout
        while True:
            snapshot = self.client.get("/tasks/metrics").json()["snapshot"]
            if snapshot["unwritten"] == 0 or time.monotonic() > deadline:
                assert snapshot["unwritten"] == 0, snapshot
                return
            time.sleep(0.05)

    def kill(self) -> None:
        """Kill the server as a crash would (SIGKILL): nothing runs at exit."""
        self.process.kill()
        self.process.wait()

    def wait_status(self, task_id: str, status: str, timeout: float = 15.0) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while True:
            response = self.client.get(f"/tasks/{task_id}")
            record: dict[str, object] = response.json() if response.status_code == 200 else {}
            if record.get("status") == status or time.monotonic() > deadline:
                assert record.get("status") == status, record
                return record
            time.sleep(0.02)


@contextlib.contextmanager
def serve(directory: Path, env: dict[str, str] | None = None) -> Iterator[Server]:
    """Serve the test app from ``directory`` until the block ends."""
    shutil.copy(APP_TEMPLATE, directory / "app.py")
    with uvicorn_server(directory, env=env) as running:
        yield Server(url=running.url, client=running.client, process=running.process, log=running.log)
