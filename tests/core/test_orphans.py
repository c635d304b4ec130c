"""claim_orphans(): journal rows of stores that are gone (closed, killed) are taken over exactly once."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from _corehelpers import (
    StoreFactory,
    insert_rows,
    loads,
    require_cores,
    run_sql,
    stored,
    wait_for_next_microsecond,
)

from fastapi_taskflow._pycore.owners import owner_alive


def journal_some(store: Any) -> list[str]:
    """Three journaled records (pending with a key and arguments, running with logs, finished) and a plain one."""
    waiting, _ = store.create(
        "job", queue="q", tags={"t": "1"}, idempotency_key="k", args_json=b"[1]", kwargs_json=b"{}", journal=True
    )
    wait_for_next_microsecond()
    running, _ = store.create("job", encrypted_payload=b"secret", retry_of=waiting, journal=True)
    store.transition(running, "running", retries_used=1, error="first try failed")
    store.append_log(running, "half way")
    wait_for_next_microsecond()
    done, _ = store.create("job", journal=True)
    store.transition(done, "running")
    store.transition(done, "success")
    store.create("job")  # not journaled: never written while unfinished
    store.flush()
    return [waiting, running, done]


def metrics_without_health(store: Any) -> dict[str, Any]:
    return {k: v for k, v in loads(store.metrics_json()).items() if k != "snapshot"}


def test_the_orphans_of_a_closed_store_are_claimed(make_store: StoreFactory, db_path: str) -> None:
    gone = make_store(db_path)
    waiting, running, done = journal_some(gone)
    expected = [gone.get(waiting), gone.get(running)]
    gone_id = gone.instance_id
    gone.close()

    store = make_store(db_path)
    before = metrics_without_health(store)
    assert (before["pending"], before["running"], before["success"]) == (1, 1, 1)  # counted at open
    claimed = store.claim_orphans()
    assert claimed == expected  # oldest first, with their stored status, fields, logs and arguments
    assert [store.get(task_id) for task_id in (waiting, running)] == expected
    assert store.memory_len() == 2
    assert metrics_without_health(store) == before  # open already counted them
    assert 'taskflow_queue_depth{queue="q"} 1' in store.metrics_prometheus().decode()
    me = store.instance_id
    assert stored(db_path) == {waiting: ("pending", me), running: ("running", me), done: ("success", None)}
    assert not os.path.exists(os.path.join(db_path + ".owners", gone_id))
    assert store.claim_orphans() == []  # its own rows now

    # They are journaled records of this store, and behave as such.
    assert store.create("job", idempotency_key="k") == (waiting, False)
    store.transition(running, "success")
    store.transition(waiting, "running")
    assert store.flush() == 2
    assert stored(db_path)[running] == ("success", None)
    assert stored(db_path)[waiting] == ("running", me)
    metrics = loads(store.metrics_json())
    assert (metrics["pending"], metrics["running"], metrics["success"]) == (0, 1, 2)


def test_the_rows_of_an_open_store_are_not_claimed(make_store: StoreFactory, db_path: str) -> None:
    alive = make_store(db_path)
    waiting, running, _ = journal_some(alive)
    other = make_store(db_path)
    assert other.claim_orphans() == []
    assert other.memory_len() == 0
    assert stored(db_path)[waiting] == ("pending", alive.instance_id)
    alive.close()
    assert [r["task_id"] for r in other.claim_orphans()] == [waiting, running]


def test_rows_without_an_owner_are_orphans(make_store: StoreFactory, db_path: str) -> None:
    make_store(db_path).close()
    a, b, c = (str(uuid.uuid4()) for _ in range(3))
    insert_rows(
        db_path,
        [
            {"task_id": a, "func_name": "f", "status": "running", "created_us": 2, "start_us": 3},
            {"task_id": b, "func_name": "f", "status": "pending", "created_us": 1},
            {"task_id": c, "func_name": "f", "status": "success", "created_us": 0, "start_us": 0, "end_us": 1},
        ],
    )
    # An owner no store could be: it names no lock file, so it is gone.
    run_sql(db_path, ("UPDATE task_history SET owner = '../../escape' WHERE task_id = ?", (a,)))
    store = make_store(db_path)
    assert [(r["task_id"], r["status"]) for r in store.claim_orphans()] == [(b, "pending"), (a, "running")]
    assert stored(db_path)[c] == ("success", None)


def test_records_already_in_memory_are_skipped(make_store: StoreFactory, db_path: str) -> None:
    gone = make_store(db_path)
    journal_some(gone)
    gone.close()
    store = make_store(db_path)
    assert len(store.claim_orphans()) == 2
    # As if another store had taken them since, and died.
    run_sql(db_path, "UPDATE task_history SET owner = '00000000-0000-4000-8000-000000000000' WHERE owner IS NOT NULL")
    assert store.claim_orphans() == []
    assert store.memory_len() == 2


def test_without_a_file_and_after_close(core: ModuleType, make_store: StoreFactory, db_path: str) -> None:
    assert make_store().claim_orphans() == []
    store = make_store(db_path)
    store.close()
    with pytest.raises(core.SnapshotError):
        store.claim_orphans()


WRITER = """
import importlib, sys, time, warnings
warnings.simplefilter("ignore")
core = importlib.import_module(sys.argv[1])
store = core.TaskStore(sys.argv[2])
waiting, _ = store.create("job", queue="q", tags={"t": "1"}, idempotency_key="k", args_json=b"[1]", journal=True)
now = time.time_ns() // 1000
while time.time_ns() // 1000 <= now:  # created later, so listed after it
    pass
running, _ = store.create("job", encrypted_payload=b"secret", retry_of=waiting, journal=True)
store.transition(running, "running", retries_used=1, error="first try failed")
store.append_log(running, "half way")
store.flush()
print(repr((store.instance_id, [store.get(waiting), store.get(running)])), flush=True)
if sys.stdin.readline() == "close\\n":
    store.close()
"""


@contextmanager
def writer_process(module: str, path: str) -> Iterator[tuple[subprocess.Popen[str], str, list[dict[str, Any]]]]:
    """A process whose store of ``module`` journals two records in ``path`` and waits: it closes the store on
    "close\\n", and can be killed. Yields the process, its store's instance_id and the records (``get()`` dicts).
    """
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, module, path],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stderr is not None
        line = child.stdout.readline()
        assert line, child.stderr.read()
        owner, records = ast.literal_eval(line)
        yield child, owner, records
    finally:
        child.kill()
        child.communicate()


def test_the_orphans_of_a_killed_process_are_claimed(core: ModuleType, make_store: StoreFactory, db_path: str) -> None:
    owners = db_path + ".owners"
    with writer_process(core.__name__, db_path) as (child, owner, records):
        assert owner_alive(owners, owner)
        assert make_store(db_path).claim_orphans() == []
        child.kill()  # SIGKILL on POSIX: no close(), no cleanup
        child.wait()
    assert os.path.exists(os.path.join(owners, owner))
    assert not owner_alive(owners, owner)  # the OS dropped the lock with the process
    store = make_store(db_path)
    assert store.claim_orphans() == records
    assert [r["status"] for r in records] == ["pending", "running"]
    assert records[1]["logs"] == ["half way"] and records[1]["encrypted_payload"] == b"secret"
    assert not os.path.exists(os.path.join(owners, owner))


def claim_together(barrier: threading.Barrier, store: Any) -> set[str]:
    barrier.wait()
    return {r["task_id"] for r in store.claim_orphans()}


def test_racing_claims_never_share_a_row(make_store: StoreFactory, tmp_path: Path) -> None:
    for attempt in range(3):
        path = str(tmp_path / f"race{attempt}.db")
        writer = make_store(path)
        ids = {writer.create("f", journal=True)[0] for _ in range(40)}
        writer.flush()
        writer.close()
        stores = [make_store(path), make_store(path)]
        with ThreadPoolExecutor(len(stores)) as pool:
            first, second = pool.map(partial(claim_together, threading.Barrier(len(stores))), stores)
        assert not first & second
        assert first | second == ids
        rows = stored(path)
        for store, got in zip(stores, (first, second), strict=True):
            assert {task_id for task_id in ids if rows[task_id][1] == store.instance_id} == got
            assert store.memory_len() == len(got)


@pytest.mark.parametrize(("writer", "claimer"), [("python", "rust"), ("rust", "python")])
def test_one_core_claims_the_orphans_of_the_other(tmp_path: Path, writer: str, claimer: str) -> None:
    # The writer runs in another process: in one process, the two cores' copies of SQLite would not
    # see each other's locks (see ``run_sql``).
    writer_core, claimer_core = require_cores(writer, claimer)
    path = str(tmp_path / "shared.db")
    target = claimer_core.TaskStore(path)
    try:
        with writer_process(writer_core.__name__, path) as (child, owner, records):
            assert target.claim_orphans() == []  # each core sees the other's owner lock
            child.communicate("close\n")
        assert target.claim_orphans() == records
        assert not os.path.exists(os.path.join(path + ".owners", owner))
        waiting, running = (r["task_id"] for r in records)
        target.transition(running, "success")
        assert target.flush() == 1
    finally:
        target.close()
    again = writer_core.TaskStore(path)
    try:
        assert again.get(running)["status"] == "success"
        assert [r["task_id"] for r in again.claim_orphans()] == [waiting]  # and back, now that the claimer closed
    finally:
        again.close()
