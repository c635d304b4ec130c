"""Faults of the snapshot file: each gets a clear message, the app keeps serving, nothing accepted is lost.

Real conditions, not mocks: a file of garbage bytes, a file made immutable with
``chattr +i`` while the app runs (writes through the open handles then fail, as on a
file system gone read-only), a small tmpfs filled up, and a lock held by another
process. The ones that need privileges skip with the reason when the machine does
not allow them.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from polling import wait_for
from sqlite_peek import count

from fastapi_taskflow import ManagedBackgroundTasks, TaskAdmin, TaskManager
from fastapi_taskflow.errors import CorruptSnapshotError


def build_app(manager: TaskManager) -> FastAPI:
    app = FastAPI()
    TaskAdmin(app, manager, auto_install=True)

    @manager.task(persist=True)
    async def record(n: int) -> None: ...

    @app.post("/enqueue/{count}")
    def enqueue(count: int, background_tasks: ManagedBackgroundTasks) -> list[str]:
        return [background_tasks.add_task(record, n) for n in range(count)]

    return app


def rows_on_disk(db: Path, status: str = "success") -> int:
    return count(db, "status = ?", (status,))


def snapshot_health(client: TestClient) -> dict[str, Any]:
    health: dict[str, Any] = client.get("/tasks/metrics").json()["snapshot"]
    return health


def all_succeeded(client: TestClient, ids: list[str]) -> bool:
    return all(client.get(f"/tasks/{task_id}").json()["status"] == "success" for task_id in ids)


# -- a corrupt file -------------------------------------------------------------------


def test_corrupt_file_refuses_to_start_naming_the_file_and_the_fix(tmp_path: Path) -> None:
    db = tmp_path / "tasks.db"
    db.write_bytes(b"this is not a database, it is garbage " * 200)
    with pytest.raises(CorruptSnapshotError) as raised:
        TaskManager(snapshot_db=str(db))
    message = str(raised.value)
    assert str(db) in message
    assert "backup" in message and "move it aside" in message
    assert db.read_bytes().startswith(b"this is not a database")  # untouched: nothing is lost


def test_corrupt_file_is_moved_aside_when_asked(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "tasks.db"
    garbage = b"\x00garbage\xff" * 1000
    db.write_bytes(garbage)
    with caplog.at_level(logging.ERROR, logger="fastapi_taskflow"):
        manager = TaskManager(snapshot_db=str(db), on_corrupt_snapshot="move_aside")
    moved = list(tmp_path.glob("tasks.db.corrupt-*"))
    assert [p.read_bytes() for p in moved] == [garbage]
    assert any("moved it aside" in r.getMessage() and str(db) in r.getMessage() for r in caplog.records)
    with TestClient(build_app(manager)) as client:
        ids = client.post("/enqueue/3").json()
        wait_for(lambda: rows_on_disk(db) == 3, what="three rows in the fresh file")
        assert all_succeeded(client, ids)


# -- the file turns read-only while the app runs ------------------------------------------


@pytest.fixture
def immutable(tmp_path: Path) -> Iterator[list[Path]]:
    """Files to make immutable with ``chattr +i``; always made mutable again at the end."""
    probe = tmp_path / "probe"
    probe.write_text("x")
    tried = subprocess.run(["chattr", "+i", str(probe)], capture_output=True, text=True, check=False)
    if tried.returncode != 0:
        pytest.skip(f"chattr +i is not available here ({tried.stderr.strip()}); needs root on ext4/xfs")
    subprocess.run(["chattr", "-i", str(probe)], check=True)
    frozen: list[Path] = []
    yield frozen
    for path in frozen:
        subprocess.run(["chattr", "-i", str(path)], check=False)


def test_read_only_file_mid_run_keeps_serving_and_catches_up(
    tmp_path: Path, immutable: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "tasks.db"
    manager = TaskManager(snapshot_db=str(db), snapshot_interval=0.2)
    with caplog.at_level(logging.ERROR, logger="fastapi_taskflow"), TestClient(build_app(manager)) as client:
        first = client.post("/enqueue/5").json()
        wait_for(lambda: rows_on_disk(db) == 5, what="the first rows on disk")
        files = [p for p in (db, Path(f"{db}-wal")) if p.exists()]
        for path in files:
            subprocess.run(["chattr", "+i", str(path)], check=True)
            immutable.append(path)

        # Accepted while nothing can be written: the journal write fails, the tasks still run.
        second = client.post("/enqueue/20").json()
        wait_for(lambda: all_succeeded(client, second), what="the tasks accepted while read-only to finish")
        assert all_succeeded(client, first)  # finished ones are still served
        health = snapshot_health(client)
        assert health["ok"] is False
        assert health["unwritten"] >= 20
        assert health["failed_writes"] >= 1
        assert health["last_error"] and str(db) in health["last_error"]
        assert any("snapshot write failed" in r.getMessage() for r in caplog.records)

        for path in files:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        wait_for(lambda: snapshot_health(client)["ok"], what="the writer to recover")
        wait_for(lambda: rows_on_disk(db) == 25, what="every task on disk")
        health = snapshot_health(client)
        assert health["unwritten"] == 0 and health["last_error"] is None


# -- the disk fills up --------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs mounted for the test."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.strip()}); needs root")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(directory: Path) -> Path:
    """Write a filler file until the file system is full; returns it."""
    filler = directory / "filler"
    with filler.open("wb") as out:
        try:
            while True:
                out.write(b"\0" * 65_536)
                out.flush()
        except OSError:
            pass  # ENOSPC: the point of this helper
    return filler


def test_disk_full_mid_run_keeps_serving_and_catches_up(small_disk: Path) -> None:
    db = small_disk / "tasks.db"
    manager = TaskManager(snapshot_db=str(db), snapshot_interval=0.2)
    with TestClient(build_app(manager)) as client:
        first = client.post("/enqueue/5").json()
        wait_for(lambda: rows_on_disk(db) == 5, what="the first rows on disk")
        filler = fill(small_disk)

        second = client.post("/enqueue/300").json()
        wait_for(lambda: all_succeeded(client, second), what="the tasks accepted on a full disk to finish")
        assert all_succeeded(client, first)
        wait_for(lambda: not snapshot_health(client)["ok"], what="the write failure to show")
        health = snapshot_health(client)
        assert health["unwritten"] >= 1 and health["failed_writes"] >= 1
        assert "full" in health["last_error"].lower()

        filler.unlink()
        wait_for(lambda: snapshot_health(client)["ok"], what="the writer to recover")
        wait_for(lambda: rows_on_disk(db) == 305, what="every task on disk")


# -- another process holds the lock ---------------------------------------------------------

HOLD_LOCK = """
import sqlite3, sys, time
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
connection.execute("COMMIT")
"""


def test_database_locked_by_another_process_is_waited_for_then_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "tasks.db"
    manager = TaskManager(snapshot_db=str(db), snapshot_interval=0.2)
    with caplog.at_level(logging.ERROR, logger="fastapi_taskflow"), TestClient(build_app(manager)) as client:
        # Longer than the 5 s busy timeout: at least one write fails, and is retried afterwards.
        holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(db), "6.5"], stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
            ids = client.post("/enqueue/10").json()
            wait_for(lambda: all_succeeded(client, ids), what="the tasks to run while the file is locked")
            assert holder.wait(timeout=30) == 0
        finally:
            holder.kill()
            holder.wait()
            holder.stdout.close()  # type: ignore[union-attr]
        wait_for(lambda: rows_on_disk(db) == 10, what="every task on disk")
        health = snapshot_health(client)
        assert health["ok"] is True and health["failed_writes"] >= 1 and health["unwritten"] == 0
    assert any("database is locked" in r.getMessage() and str(db) in r.getMessage() for r in caplog.records)
