"""Run an app file under a real uvicorn process on a free port, stopped with SIGTERM as in production."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx


@dataclass
class RunningServer:
    url: str
    client: httpx.Client
    process: subprocess.Popen[bytes]
    log: Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def uvicorn_server(
    app_dir: Path, module: str = "app", env: dict[str, str] | None = None, timeout: float = 30.0
) -> Iterator[RunningServer]:
    """Start ``uvicorn module:app`` in ``app_dir``; on exit SIGTERM must stop it cleanly.

    A test may kill the process itself with SIGKILL (and wait for it); that is then its result.
    """
    port = free_port()
    log_path = app_dir / "uvicorn.log"
    log = log_path.open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", f"{module}:app", "--port", str(port), "--log-level", "warning"],
        cwd=app_dir,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=10) as client:
            deadline = time.monotonic() + timeout
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
            yield RunningServer(url=url, client=client, process=process, log=log_path)
    finally:
        killed_by_test = process.returncode == -signal.SIGKILL
        process.send_signal(signal.SIGTERM)
        try:
            # Open responses (dashboard streams included) must not keep uvicorn from stopping:
            # one that ignored the shutdown would hang here until killed.
            returncode = process.wait(timeout=20)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            log.close()
    # Uvicorn re-raises the SIGTERM it handled once it has shut down gracefully.
    assert killed_by_test or returncode in (0, -signal.SIGTERM), log_path.read_text()
