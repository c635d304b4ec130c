"""Several processes opening one brand-new snapshot file at the same moment, as the workers of one server do.

Every opener must get a usable store: the WAL switch and the schema creation wait for each other instead of
failing with "database is locked", and each migration is applied once. The file is only read through
``sqlite_peek`` (another process), after every store has closed it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest
from _corehelpers import MODULES, require_cores
from sqlite_peek import query

from fastapi_taskflow._pycore.snapshot import SCHEMA_VERSION

#: Openers per round and rounds per test: enough for the races to show on two shared CPUs (before the fix, a
#: few rounds in twenty lost an opener), while each child imports its core once for all rounds.
OPENERS = 6
ROUNDS = 20

#: One opener: for each round, say it is ready, wait for the start file, then open that round's new file,
#: journal one record, flush it, close, and report ``[task_id, written]`` or ``[null, error]``.
OPENER = r"""
import importlib, json, os, sys, time, warnings
warnings.simplefilter("ignore")
core = importlib.import_module(sys.argv[1])
directory, rounds = sys.argv[2], int(sys.argv[3])
for n in range(rounds):
    print("ready", flush=True)
    start = os.path.join(directory, f"start-{n}")
    while not os.path.exists(start):
        time.sleep(0.0002)
    try:
        store = core.TaskStore(os.path.join(directory, f"round-{n}.db"))
        task_id, _ = store.create("job", journal=True)
        written = store.flush()
        store.close()
        print(json.dumps([task_id, written]), flush=True)
    except Exception as exc:
        print(json.dumps([None, f"{type(exc).__name__}: {exc}"]), flush=True)
"""


@pytest.mark.parametrize("cores", ["rust", "python", "rust+python"])
def test_processes_opening_a_new_file_together_all_succeed(tmp_path: Path, cores: str) -> None:
    names = cores.split("+")
    require_cores(*names)
    children = [
        subprocess.Popen(
            [sys.executable, "-c", OPENER, MODULES[names[i % len(names)]], str(tmp_path), str(ROUNDS)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(OPENERS)
    ]
    reported: list[list[tuple[str | None, object]]] = []
    try:
        for n in range(ROUNDS):
            for child in children:
                assert child.stdout is not None
                line = child.stdout.readline()
                assert line == "ready\n", (line, child.communicate()[1])
            # The barrier: every child polls for this file, so they open within a fraction of a millisecond.
            (tmp_path / f"start-{n}").touch()
            outcome = []
            for child in children:
                assert child.stdout is not None
                task_id, written = json.loads(child.stdout.readline())
                outcome.append((task_id, written))
            reported.append(outcome)
        for child in children:
            _, err = child.communicate(timeout=60)
            assert child.returncode == 0, err
    finally:
        for child in children:
            child.kill()
            child.communicate()
    failures = [(n, written) for n, outcome in enumerate(reported) for task_id, written in outcome if task_id is None]
    assert failures == []
    for n, outcome in enumerate(reported):
        assert [written for _, written in outcome] == [1] * OPENERS
        # One schema, at the latest version, migrated once (a second run of a step would have failed on
        # its CREATE or ALTER, or left a second version row).
        path = tmp_path / f"round-{n}.db"
        assert query(path, "SELECT version FROM schema_version") == [{"version": SCHEMA_VERSION}]
        stored = query(path, "SELECT task_id, status, owner, sync_seq FROM task_history ORDER BY sync_seq")
        assert {r["task_id"] for r in stored} == {task_id for task_id, _ in outcome}
        assert [r["sync_seq"] for r in stored] == list(range(1, OPENERS + 1))
        assert {r["status"] for r in stored} == {"pending"} and len({r["owner"] for r in stored}) == OPENERS


#: Holds the write lock of a new, empty file (still in rollback mode) for ``argv[2]`` seconds, then lets go.
HOLDER = r"""
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("holding", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("ROLLBACK")
conn.close()
"""


def hold_write_lock(db_path: str, seconds: float) -> subprocess.Popen[str]:
    """A process holding the write lock of ``db_path`` (another process: see ``sqlite_peek``)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, db_path, str(seconds)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None
    assert holder.stdout.readline() == "holding\n", holder.communicate()[1]
    return holder


def test_opening_waits_for_a_writer_of_the_new_file(core: ModuleType, db_path: str) -> None:
    # The switch to WAL meets the lock without SQLite's busy handler: it would fail at once unless retried.
    holder = hold_write_lock(db_path, 0.5)
    started = time.monotonic()
    try:
        store = core.TaskStore(db_path)
    finally:
        holder.communicate(timeout=30)
    assert time.monotonic() - started >= 0.3  # it waited for the holder
    task_id, _ = store.create("job", journal=True)
    assert store.flush() == 1
    store.close()
    assert query(db_path, "SELECT task_id FROM task_history") == [{"task_id": task_id}]


def test_opening_gives_up_after_the_busy_timeout(core: ModuleType, db_path: str) -> None:
    holder = hold_write_lock(db_path, 8)
    started = time.monotonic()
    try:
        with pytest.raises(core.SnapshotError, match=r"\(database is locked\); another process holds a lock on it"):
            core.TaskStore(db_path)
        waited = time.monotonic() - started
    finally:
        holder.kill()
        holder.communicate()
    assert 4.9 <= waited < 7.5
