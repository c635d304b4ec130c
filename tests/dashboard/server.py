"""A real uvicorn process serving ``app_template.py``, stopped with SIGTERM like in production."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

APP_TEMPLATE = Path(__file__).with_name("app_template.py")


@dataclass
class Server:
    url: str
    client: httpx.Client
    process: subprocess.Popen[bytes]
    log: Path

    def enqueue(self, kind: str, value: str = "x") -> str:
        response = self.client.post(f"/enqueue/{kind}", params={"value": value})
        response.raise_for_status()
        task_id: str = response.json()["task_id"]
        return task_id

    def wait_status(self, task_id: str, status: str, timeout: float = 15.0) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while True:
            response = self.client.get(f"/tasks/{task_id}")
            record: dict[str, object] = response.json() if response.status_code == 200 else {}
            if record.get("status") == status or time.monotonic() > deadline:
                assert record.get("status") == status, record
                return record
            time.sleep(0.02)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def serve(directory: Path, env: dict[str, str] | None = None) -> Iterator[Server]:
    """Serve the test app from ``directory``; on exit, SIGTERM must stop it cleanly with streams open."""
    shutil.copy(APP_TEMPLATE, directory / "app.py")
    port = _free_port()
    log_path = directory / "uvicorn.log"
    log = log_path.open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app:app", "--port", str(port), "--log-level", "warning"],
        cwd=directory,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=10) as client:
            deadline = time.monotonic() + 30
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"uvicorn exited early:\n{log_path.read_text()}")
                try:
                    client.get("/openapi.json")
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            yield Server(url=url, client=client, process=process, log=log_path)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            # Open dashboard streams must not keep uvicorn from stopping: it waits for open
            # responses, so a stream that ignored the shutdown would hang here until killed.
            returncode = process.wait(timeout=20)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            log.close()
    # Uvicorn re-raises the SIGTERM it handled once it has shut down gracefully.
    assert returncode in (0, -signal.SIGTERM), log_path.read_text()
