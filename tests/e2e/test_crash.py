"""Nothing accepted is lost when the server is killed with SIGKILL (a small run; ``make crash`` runs a large one)."""

from __future__ import annotations

import collections
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from .crash import crash_app, run_crash, wait_until_finished
from .server import uvicorn_server

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("core", ["rust", "python"])
def test_started_tasks_are_reported_not_rerun_and_the_rest_run_once(tmp_path: Path, core: str) -> None:
    report = run_crash(tmp_path, requests=600, clients=4, core=core)
    print(report.summary())
    assert len(report.received) >= 300
    # requeue_on_interrupt is off: a task marked running when the process died is reported
    # interrupted (it may have had effects), never run again; every other one runs once.
    assert report.ran_twice == []
    interrupted = {t for t in report.received if report.final_status[t] == "interrupted"}
    assert interrupted <= report.running_at_kill
    assert set(report.never_ran) <= interrupted
    assert all(report.final_status[t] in ("success", "interrupted") for t in report.received)


@pytest.mark.parametrize("core", ["rust", "python"])
def test_every_received_id_runs_at_least_once_and_twice_only_if_it_had_started(tmp_path: Path, core: str) -> None:
    report = run_crash(tmp_path, requests=600, clients=4, core=core, requeue_running=True)
    print(report.summary())
    assert len(report.received) >= 300
    assert report.never_ran == []
    # Run again only what had started and was not recorded as finished when the process died.
    assert set(report.ran_twice) <= report.started_before_kill
    assert not any(report.status_at_kill.get(t) == "success" for t in report.ran_twice)
    assert all(report.final_status[t] == "success" for t in report.received)


# A process that journaled these tasks and died before running any of them.
ORPHAN_MAKER = """
import os, signal, sys
from fastapi_taskflow._selected import core
store = core.TaskStore("tasks.db")
for i in range(int(sys.argv[1])):
    store.create("send_email", kwargs_json=b'{"address": "a@example.com"}', args_json=b"[]", journal=True)
store.flush()
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_two_servers_starting_together_run_each_orphan_once(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(crash_app(journal=True, requeue_running=False))
    died = subprocess.run([sys.executable, "-c", ORPHAN_MAKER, "300"], cwd=tmp_path, check=False)
    assert died.returncode == -signal.SIGKILL
    with sqlite3.connect(tmp_path / "tasks.db") as connection:
        ids = [row[0] for row in connection.execute("SELECT task_id FROM task_history WHERE status = 'pending'")]
    assert len(ids) == 300
    env = {"CRASH_RUN_LOG": str(tmp_path / "runs.log")}
    with uvicorn_server(tmp_path, env=env), uvicorn_server(tmp_path, env=env):
        final = wait_until_finished(tmp_path / "tasks.db", ids, timeout=60)
    runs = collections.Counter((tmp_path / "runs.log").read_text().split())
    assert {t: runs[t] for t in ids} == dict.fromkeys(ids, 1)
    assert set(final.values()) == {"success"}
