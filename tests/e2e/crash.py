"""The crash scenario: the quick start app under uvicorn, killed with SIGKILL mid-stream, restarted.

Several clients enqueue tasks as fast as they can; once half of the planned requests
have been answered, the server is killed with SIGKILL while requests are in flight.
A second server on the same snapshot file then runs what the first left. The task
function appends its id to a file each time it runs, so the scenario can tell, for
every id a client received, how many times it ran across both processes.

Used by tests/e2e/test_crash.py (a small run in ``make test``) and by ``make crash``
(``python tests/e2e/crash.py``: a larger run, printing the counts for both cores, and
the same scenario without the journal for comparison).
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

if __package__:
    from .server import uvicorn_server
else:  # run as a script by `make crash`
    sys.path.insert(0, str(Path(__file__).parent))
    from server import uvicorn_server  # type: ignore[no-redef]

QUICKSTART = Path(__file__).parents[2] / "examples" / "quickstart.py"

#: The quick start's send_email, made observable: it records each run of each task id.
OBSERVED_TASK = """
import os as _os
import time as _time

from fastapi_taskflow import get_task_context

_RUN_LOG = _os.environ["CRASH_RUN_LOG"]


@task_manager.task(retries=3, delay=1.0, backoff=2.0, requeue_on_interrupt=REQUEUE_RUNNING)
def send_email(address: str) -> None:
    context = get_task_context()
    fd = _os.open(_RUN_LOG, _os.O_WRONLY | _os.O_APPEND | _os.O_CREAT)
    try:
        _os.write(fd, f"{context.task_id}\\n".encode())  # one O_APPEND write: whole lines only
    finally:
        _os.close(fd)
    _time.sleep(0.002)  # long enough that some tasks are running when the process is killed
"""


def crash_app(journal: bool, requeue_running: bool) -> str:
    """The quick start's source with the journal switched on and send_email observable."""
    source = QUICKSTART.read_text()
    manager_line = 'task_manager = TaskManager(snapshot_db="tasks.db", snapshot_interval=30.0)'
    send_email = "@task_manager.task(retries=3, delay=1.0, backoff=2.0)\ndef send_email(address: str) -> None: ...\n"
    assert manager_line in source and send_email in source, "the quick start changed; update the crash scenario"
    source = source.replace(
        manager_line,
        f'task_manager = TaskManager(snapshot_db="tasks.db", snapshot_interval=30.0, requeue_pending={journal})',
    )
    return source.replace(send_email, f"REQUEUE_RUNNING = {requeue_running}\n{OBSERVED_TASK}")


@dataclass
class CrashReport:
    received: list[str]
    runs: collections.Counter[str]
    #: Ids whose function had started before the kill (from the run log at that moment).
    started_before_kill: set[str]
    status_at_kill: dict[str, str]
    final_status: dict[str, str]
    elapsed: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def never_ran(self) -> list[str]:
        return [t for t in self.received if self.runs[t] == 0]

    @property
    def ran_twice(self) -> list[str]:
        return [t for t in self.received if self.runs[t] > 1]

    @property
    def running_at_kill(self) -> set[str]:
        return {t for t, s in self.status_at_kill.items() if s == "running"}

    def summary(self) -> str:
        statuses = collections.Counter(self.final_status.get(t, "missing") for t in self.received)
        return (
            f"ids received {len(self.received)}, never ran {len(self.never_ran)}, ran more than once "
            f"{len(self.ran_twice)} (started before the kill: {len(self.started_before_kill)}, "
            f"running on disk at the kill: {len(self.running_at_kill)}), "
            f"final statuses {dict(sorted(statuses.items()))}, {self.elapsed:.1f} s"
        )


def _statuses(db: Path, ids: list[str]) -> dict[str, str]:
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = connection.execute("SELECT task_id, status FROM task_history").fetchall()
    finally:
        connection.close()
    wanted = set(ids)
    return {task_id: status for task_id, status in rows if task_id in wanted}


def wait_until_finished(db: Path, ids: list[str], timeout: float) -> dict[str, str]:
    """Poll the file until every id has a finished row (or the timeout); the statuses seen last."""
    deadline = time.monotonic() + timeout
    while True:
        statuses = _statuses(db, ids)
        done = len(statuses) == len(ids) and all(s not in ("pending", "running") for s in statuses.values())
        if done or time.monotonic() > deadline:
            return statuses
        time.sleep(0.2)


def _client_loop(url: str, stop: threading.Event, received: list[str], lock: threading.Lock, n: int) -> None:
    with httpx.Client(base_url=url, timeout=10) as client:
        i = 0
        while not stop.is_set():
            try:
                response = client.post("/signup", params={"email": f"user{n}-{i}@example.com"})
            except httpx.TransportError:
                return  # the server is gone: the request in flight was never answered
            i += 1
            if response.status_code == 200:
                with lock:
                    received.append(response.json()["task_id"])


def run_crash(
    workdir: Path,
    *,
    requests: int,
    clients: int,
    journal: bool = True,
    requeue_running: bool = False,
    core: str = "rust",
    settle_timeout: float = 120.0,
) -> CrashReport:
    """Run the scenario in ``workdir`` and report what happened to every id a client received."""
    started = time.monotonic()
    (workdir / "app.py").write_text(crash_app(journal, requeue_running))
    run_log = workdir / "runs.log"
    env = {"CRASH_RUN_LOG": str(run_log), "FASTAPI_TASKFLOW_CORE": core}
    received: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    with uvicorn_server(workdir, env=env) as server:
        threads = [
            threading.Thread(target=_client_loop, args=(server.url, stop, received, lock, n), daemon=True)
            for n in range(clients)
        ]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + settle_timeout
        while len(received) < requests // 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        server.process.send_signal(signal.SIGKILL)  # mid-stream: clients are still sending
        server.process.wait()
        stop.set()
        for thread in threads:
            thread.join(timeout=15)
    with lock:
        ids = list(received)
    started_before_kill = set(run_log.read_text().split()) if run_log.exists() else set()
    status_at_kill = _statuses(workdir / "tasks.db", ids)
    with uvicorn_server(workdir, env=env):
        final_status = wait_until_finished(workdir / "tasks.db", ids, settle_timeout)
    lines = run_log.read_text().split() if run_log.exists() else []
    report = CrashReport(ids, collections.Counter(lines), started_before_kill, status_at_kill, final_status)
    report.elapsed = time.monotonic() - started
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    cases = [
        ("rust core, journal on", dict(core="rust", journal=True, requeue_running=False)),
        ("rust core, journal on, requeue_on_interrupt", dict(core="rust", journal=True, requeue_running=True)),
        ("python core, journal on", dict(core="python", journal=True, requeue_running=False)),
        ("python core, journal on, requeue_on_interrupt", dict(core="python", journal=True, requeue_running=True)),
        # Nothing to wait for after the restart: what was not finished is gone.
        ("rust core, journal off (as the pure-Python package)", dict(core="rust", journal=False, settle_timeout=5.0)),
    ]
    for title, options in cases:
        with tempfile.TemporaryDirectory() as tmp:
            report = run_crash(Path(tmp), requests=args.requests, clients=args.clients, **options)  # type: ignore[arg-type]
        print(f"{title}: {report.summary()}", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
