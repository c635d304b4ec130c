"""``make demo``: run the quick start app under uvicorn, send it traffic, print where to look.

The app runs in a scratch directory (its ``tasks.db`` lands there) until Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

QUICKSTART = Path(__file__).with_name("quickstart.py")


def request(method: str, url: str) -> object:
    with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=5) as response:
        return json.loads(response.read())


def wait_until_up(base: str, server: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"uvicorn exited with code {server.returncode}")
        try:
            request("GET", f"{base}/tasks/metrics")
            return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
    sys.exit(f"the app did not answer on {base} within {timeout:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--signups", type=int, default=200)
    options = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="taskflow-demo-"))
    shutil.copy(QUICKSTART, workdir / "app.py")
    base = f"http://127.0.0.1:{options.port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app:app", "--port", str(options.port), "--log-level", "warning"],
        cwd=workdir,
    )
    try:
        wait_until_up(base, server)
        ids = [
            request("POST", f"{base}/signup?email=user{n}%40example.com")["task_id"]  # type: ignore[index]
            for n in range(options.signups)
        ]
        time.sleep(0.5)
        print(f"\nSent {len(ids)} signups; each enqueued a send_email task.\n")
        print("Metrics:", json.dumps(request("GET", f"{base}/tasks/metrics"), indent=2))
        print("\nOpen:")
        print(f"  {base}/tasks/dashboard       the live dashboard")
        print(f"  {base}/tasks?limit=20        newest tasks (X-Next-Cursor header pages on)")
        print(f"  {base}/tasks/{ids[-1]}")
        print(f"  {base}/tasks/metrics")
        print(f"  {base}/docs                  the OpenAPI page")
        print(f"\nSnapshot file: {workdir / 'tasks.db'}. Ctrl-C stops the server.")
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
