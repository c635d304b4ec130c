"""The outbox of schema version 5, on both cores: ``sync_seq``, ``changed_rows()`` and ``adopt()``.

The file is only ever read through ``sqlite_peek`` (another process): see its docstring.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
from _corehelpers import (
    COUNT_KEYS,
    GET_KEYS,
    StoreFactory,
    all_pages,
    drive,
    loads,
    require_cores,
    run_sql,
    wait_for_next_microsecond,
)
from sqlite_peek import count, query, rows

from fastapi_taskflow._pycore.snapshot import MIGRATIONS, SCHEMA_VERSION, TASK_ROW_KEYS
from fastapi_taskflow.backends.base import TASK_COLUMNS

#: The type of each key of a row (``TaskRow`` in ``backends/base.py``).
ROW_TYPES: dict[str, tuple[type, ...]] = {
    "task_id": (str,),
    "func_name": (str,),
    "status": (str,),
    "created_us": (int,),
    "start_us": (int, type(None)),
    "end_us": (int, type(None)),
    "retries_used": (int,),
    "error": (str, type(None)),
    "stacktrace": (str, type(None)),
    "logs_json": (str,),
    "logs_dropped": (int,),
    "tags_json": (str,),
    "source": (str,),
    "priority": (int, type(None)),
    "executor": (str, type(None)),
    "queue": (str,),
    "idempotency_key": (str, type(None)),
    "args_json": (bytes, type(None)),
    "kwargs_json": (bytes, type(None)),
    "encrypted_payload": (bytes, type(None)),
    "retry_of": (str, type(None)),
    "owner": (str, type(None)),
}


def seqs(db_path: str) -> dict[str, int | None]:
    """``task_id -> sync_seq`` of every row in the file."""
    return {row["task_id"]: row["sync_seq"] for row in query(db_path, "SELECT task_id, sync_seq FROM task_history")}


def all_changed(store: Any, after: int = 0) -> list[tuple[str, int | None]]:
    """``(task_id, sync_seq)`` of every row written after ``after``, in order (through the file, for the numbers)."""
    changed, last = store.changed_rows(after, 10_000)
    numbers = seqs(store.db_path)
    assert last == (numbers[changed[-1]["task_id"]] if changed else after)
    return [(row["task_id"], numbers[row["task_id"]]) for row in changed]


def finished(store: Any, n: int, status: str = "success") -> list[str]:
    ids = []
    for _ in range(n):
        task_id, _ = store.create("job")
        drive(store, task_id, status)
        ids.append(task_id)
        wait_for_next_microsecond()
    return ids


def row(status: str = "pending", **fields: Any) -> dict[str, Any]:
    """A row another instance journaled: every key of ``TaskRow``, a fresh id."""
    base: dict[str, Any] = {
        "task_id": str(uuid.uuid4()),
        "func_name": "job",
        "status": status,
        "created_us": 1_700_000_000_000_000,
        "start_us": 1_700_000_000_000_100 if status == "running" else None,
        "end_us": None,
        "retries_used": 1 if status == "running" else 0,
        "error": "first try failed" if status == "running" else None,
        "stacktrace": None,
        "logs_json": '["one","two"]',  # compact, as both cores write JSON
        "logs_dropped": 2,
        "tags_json": '{"z":"1","a":"2"}',
        "source": "manual",
        "priority": 3,
        "executor": "thread",
        "queue": "mail",
        "idempotency_key": None,
        "args_json": b"[1]",
        "kwargs_json": b"{}",
        "encrypted_payload": None,
        "retry_of": None,
        "owner": "00000000-0000-4000-8000-0000000000dd",
    }
    return {**base, **fields}


# -- sync_seq ------------------------------------------------------------------------------------


def test_every_flush_numbers_its_rows_after_all_others(make_store: StoreFactory, db_path: str) -> None:
    store = make_store(db_path)
    first = finished(store, 3)
    assert store.flush() == 3
    assert all_changed(store) == [(first[0], 1), (first[1], 2), (first[2], 3)]  # oldest first within a flush
    second = finished(store, 2, "failed")
    live, _ = store.create("job", journal=True)
    assert store.flush() == 3
    assert all_changed(store, 3) == [(second[0], 4), (second[1], 5), (live, 6)]
    # A record rewritten later moves to a later number; the others keep theirs.
    store.append_log(first[0], "late")
    store.transition(live, "running")
    assert store.flush() == 2
    assert all_changed(store) == [
        (first[1], 2),
        (first[2], 3),
        (second[0], 4),
        (second[1], 5),
        (first[0], 7),
        (live, 8),
    ]
    changed, _ = store.changed_rows(6)
    assert [json.loads(r["logs_json"]) for r in changed] == [["late"], []]
    assert (changed[1]["status"], changed[1]["owner"]) == ("running", store.instance_id)


def test_claims_and_firings_number_their_rows(make_store: StoreFactory, db_path: str) -> None:
    gone = make_store(db_path)
    orphan, _ = gone.create("job", journal=True)
    gone.flush()
    gone.close()
    store = make_store(db_path)
    assert [r["task_id"] for r in store.claim_orphans()] == [orphan]
    assert all_changed(store) == [(orphan, 2)]
    store.save_scheduled("r", "job", 0)
    fired, _ = store.fire_scheduled("r")
    assert all_changed(store, 2) == [(fired, 3)]
    changed, last = store.changed_rows(1)
    assert [(r["task_id"], r["owner"]) for r in changed] == [(orphan, store.instance_id), (fired, store.instance_id)]
    assert last == 3


def test_changed_rows_page_by_watermark(make_store: StoreFactory, db_path: str) -> None:
    store = make_store(db_path)
    assert store.changed_rows(0) == ([], 0)
    ids = finished(store, 7)
    store.flush()
    seen: list[str] = []
    watermark = 0
    for _ in range(10):
        page, watermark = store.changed_rows(watermark, limit=3)
        assert len(page) <= 3
        if not page:
            break
        seen += [r["task_id"] for r in page]
    assert seen == ids and watermark == 7
    assert store.changed_rows(7, 1) == ([], 7)
    assert store.changed_rows(100) == ([], 100)  # a watermark from elsewhere is given back as it is
    # A reader at the watermark sees exactly what is written next.
    store.append_log(ids[2], "again")
    store.flush()
    page, watermark = store.changed_rows(7)
    assert ([r["task_id"] for r in page], watermark) == ([ids[2]], 8)
    for limit in (0, -1):
        with pytest.raises(ValueError, match="limit"):
            store.changed_rows(0, limit)


def test_changed_rows_are_task_rows(make_store: StoreFactory, db_path: str) -> None:
    assert list(TASK_ROW_KEYS) == list(TASK_COLUMNS) == list(ROW_TYPES)
    store = make_store(db_path)
    first, _ = store.create("job")
    drive(store, first, "success")
    wait_for_next_microsecond()
    live, _ = store.create(
        "mail",
        queue="q",
        executor="thread",
        priority=-1,
        source="api",
        tags={"b": "1", "a": "ü"},
        idempotency_key="k",
        args_json=b"[1]",
        kwargs_json=b'{"x":2}',
        encrypted_payload=b"\x00secret",
        retry_of=first,
        journal=True,
    )
    store.transition(live, "running", retries_used=2, error="boom", stacktrace="Trace")
    store.append_log(live, "half way")
    store.flush()
    done, running = store.changed_rows(0)[0]
    for r in (done, running):
        assert list(r) == list(TASK_COLUMNS)
        for key, value in r.items():
            assert isinstance(value, ROW_TYPES[key]) and not isinstance(value, bool), (key, value)
    got = store.get(live)
    assert running == {
        "task_id": live,
        "func_name": "mail",
        "status": "running",
        "created_us": running["created_us"],
        "start_us": running["start_us"],
        "end_us": None,
        "retries_used": 2,
        "error": "boom",
        "stacktrace": "Trace",
        "logs_json": running["logs_json"],
        "logs_dropped": 0,
        "tags_json": running["tags_json"],
        "source": "api",
        "priority": -1,
        "executor": "thread",
        "queue": "q",
        "idempotency_key": "k",
        "args_json": b"[1]",
        "kwargs_json": b'{"x":2}',
        "encrypted_payload": b"\x00secret",
        "retry_of": first,
        "owner": store.instance_id,
    }
    assert json.loads(running["logs_json"]) == ["half way"]
    assert list(json.loads(running["tags_json"]).items()) == [("b", "1"), ("a", "ü")]
    assert running["start_us"] is not None and running["created_us"] <= running["start_us"]
    assert got is not None and got["start_time"] is not None
    assert (done["status"], done["owner"], done["end_us"] is not None) == ("success", None, True)


WRITER = r"""
import importlib, json, sys, time, warnings
warnings.simplefilter("ignore")
core = importlib.import_module(sys.argv[1])
store = core.TaskStore(sys.argv[2])
print("ready", flush=True)
sys.stdin.readline()
written = 0
for _ in range(int(sys.argv[3])):
    ids = [store.create("job", journal=True)[0] for _ in range(4)]
    written += store.flush()
    for task_id in ids[:2]:
        store.transition(task_id, "running")
    written += store.flush()
    # Off the write lock for a moment: SQLite's busy handler sleeps, and would otherwise
    # let one process take every turn before the other gets one.
    time.sleep(0.002)
store.close()
print(json.dumps(written), flush=True)
"""


@pytest.mark.parametrize("cores", [("rust", "rust"), ("python", "python"), ("rust", "python")])
def test_processes_sharing_a_file_never_share_a_number(db_path: str, cores: tuple[str, str]) -> None:
    modules = require_cores(*cores)
    rounds = 25
    # The file exists before they start: this is about writes, not about two processes creating one file.
    modules[0].TaskStore(db_path).close()
    children = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, module.__name__, db_path, str(rounds)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for module in modules
    ]
    written = 0
    try:
        for child in children:
            assert child.stdout is not None and child.stdout.readline() == "ready\n", child.communicate()[1]
        for child in children:  # both start at once
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        for child in children:
            out, err = child.communicate(timeout=120)
            assert child.returncode == 0, err
            written += json.loads(out)
    finally:
        for child in children:
            child.kill()
            child.communicate()
    assert written == 2 * rounds * 6
    numbers = [seq for seq in seqs(db_path).values()]
    assert len(numbers) == 2 * rounds * 4 and None not in numbers
    assert len(set(numbers)) == len(numbers)
    # Every write took the next number: had two transactions read the same maximum, some
    # number would have gone to two rows and the highest would fall short.
    (top,) = query(db_path, "SELECT max(sync_seq) AS top FROM task_history")
    assert top["top"] == written


def test_deleting_the_newest_rows_reuses_no_number(make_store: StoreFactory, db_path: str) -> None:
    store = make_store(db_path)
    a, b = finished(store, 2)
    store.flush()
    assert store.delete(b) is True
    c = finished(store, 1)[0]
    store.flush()
    assert all_changed(store) == [(a, 1), (c, 3)]
    assert store.load_metadata("sync_seq_floor") == "2"
    assert store.delete_finished_before(2**62) == (2, 2)
    d = finished(store, 1)[0]
    store.flush()
    assert all_changed(store) == [(d, 4)]
    assert all_changed(store, 3) == [(d, 4)]


def test_a_version_4_file_is_migrated_to_5(make_store: StoreFactory, db_path: str) -> None:
    old = str(uuid.uuid4())
    run_sql(
        db_path,
        "CREATE TABLE schema_version (version INTEGER NOT NULL)",
        "INSERT INTO schema_version (version) VALUES (4)",
        *(statement for version in MIGRATIONS[:4] for statement in version),
        (
            "INSERT INTO task_history (task_id, func_name, status, created_us, owner) VALUES (?, 'f', 'pending', 1, ?)",
            (old, "00000000-0000-4000-8000-0000000000ee"),
        ),
    )
    assert "sync_seq" not in {r["name"] for r in query(db_path, "PRAGMA table_info(task_history)")}
    store = make_store(db_path)
    assert query(db_path, "SELECT version FROM schema_version") == [{"version": SCHEMA_VERSION}]
    (index,) = query(db_path, "SELECT sql FROM sqlite_master WHERE name = 'task_history_sync'")
    assert index["sql"].endswith("ON task_history(sync_seq) WHERE sync_seq IS NOT NULL")
    assert seqs(db_path) == {old: None}  # written before version 5: no number
    assert store.changed_rows(0) == ([], 0)  # and not replicated
    fresh = finished(store, 1)[0]
    store.flush()
    assert all_changed(store) == [(fresh, 1)]
    assert [r["task_id"] for r in store.claim_orphans()] == [old]  # rewritten: numbered from now on
    assert all_changed(store) == [(fresh, 1), (old, 2)]
    store.close()
    assert make_store(db_path).changed_rows(0)[1] == 2  # a current file opens as it is


def test_changed_rows_and_adopt_need_an_open_file(core: ModuleType, make_store: StoreFactory, db_path: str) -> None:
    memory = make_store()
    calls: list[Callable[[], object]] = [
        lambda: memory.changed_rows(0),
        lambda: memory.adopt([]),
        lambda: memory.adopt([row()]),
    ]
    for call in calls:
        with pytest.raises(core.SnapshotError, match="has no snapshot file"):
            call()
    assert memory.memory_len() == 0
    with pytest.raises(ValueError, match="limit"):  # bad arguments first, file or not
        memory.changed_rows(0, 0)
    store = make_store(db_path)
    store.close()
    calls = [lambda: store.changed_rows(0), lambda: store.adopt([]), lambda: store.adopt([row()])]
    for call in calls:
        with pytest.raises(core.SnapshotError, match="closed"):
            call()
    assert store.memory_len() == 0


# -- adopt ---------------------------------------------------------------------------------------


def test_adopt_writes_journal_rows_of_this_store(make_store: StoreFactory, db_path: str) -> None:
    store = make_store(db_path)
    running = row("running", created_us=20, encrypted_payload=b"\x00ct", idempotency_key="k")
    waiting = row(created_us=10, retry_of=running["task_id"])
    adopted = store.adopt([running, waiting])
    assert [r["task_id"] for r in adopted] == [waiting["task_id"], running["task_id"]]  # oldest first
    stored = rows(db_path)
    assert set(stored) == {waiting["task_id"], running["task_id"]}
    for given, sync_seq in ((waiting, 1), (running, 2)):
        assert stored[given["task_id"]] == {**given, "owner": store.instance_id, "sync_seq": sync_seq}
    tags = query(db_path, "SELECT task_id, key, value, created_us FROM task_tags ORDER BY created_us, key")
    assert [(t["task_id"], t["key"], t["value"], t["created_us"]) for t in tags] == [
        (waiting["task_id"], "a", "2", 10),
        (waiting["task_id"], "z", "1", 10),
        (running["task_id"], "a", "2", 20),
        (running["task_id"], "z", "1", 20),
    ]
    # Their rows are written: nothing for the next flush; they appear in the outbox as this store's.
    assert store.flush() == 0
    changed, last = store.changed_rows(0)
    assert [(r["task_id"], r["owner"]) for r in changed] == [
        (waiting["task_id"], store.instance_id),
        (running["task_id"], store.instance_id),
    ]
    assert last == 2
    assert changed[1] == {**running, "owner": store.instance_id}


def test_adopted_records_are_held_counted_and_announced(make_store: StoreFactory, db_path: str) -> None:
    store = make_store(db_path, max_log_lines=1)
    mine, _ = store.create("job")
    before = store.last_seq
    running = row("running", created_us=20, tags_json="{}")
    waiting = row(created_us=10, func_name="other", idempotency_key="k")
    adopted = store.adopt([running, waiting])
    assert adopted == [store.get(waiting["task_id"]), store.get(running["task_id"])]
    assert store.memory_len() == 3
    got = adopted[1]
    assert list(got) == GET_KEYS
    assert {k: got[k] for k in ("status", "retries_used", "error", "queue", "executor", "priority", "source")} == {
        "status": "running",
        "retries_used": 1,
        "error": "first try failed",
        "queue": "mail",
        "executor": "thread",
        "priority": 3,
        "source": "manual",
    }
    assert (got["logs"], got["logs_dropped"]) == (["two"], 3)  # this store's bound applies
    assert (got["args_json"], got["kwargs_json"], got["tags"]) == (b"[1]", b"{}", {})
    assert got["start_time"] == "2023-11-14T22:13:20.000100+00:00"
    assert adopted[0]["tags"] == {"z": "1", "a": "2"}
    # Counted as records created here, each with a created event carrying its status.
    metrics = loads(store.metrics_json())
    assert (metrics["total"], metrics["pending"], metrics["running"]) == (3, 2, 1)
    assert (metrics["by_name"]["other"]["total"], metrics["by_name"]["job"]["running"]) == (1, 1)
    assert 'taskflow_queue_depth{queue="mail"} 1' in store.metrics_prometheus().decode()
    events, missed = store.events_since(before)
    assert not missed
    assert [(e["type"], e["task"]["task_id"], e["task"]["status"]) for e in map(loads, (d for _, d in events))] == [
        ("created", waiting["task_id"], "pending"),
        ("created", running["task_id"], "running"),
    ]
    # Journaled records of this store from now on: its key is held, and their rows follow them.
    assert store.create("job", idempotency_key="k") == (waiting["task_id"], False)
    assert store.transition(running["task_id"], "success") is True
    assert store.transition(waiting["task_id"], "running") is True
    assert store.flush() == 2
    stored = rows(db_path)
    assert (stored[running["task_id"]]["status"], stored[running["task_id"]]["owner"]) == ("success", None)
    assert stored[waiting["task_id"]]["owner"] == store.instance_id
    metrics = loads(store.metrics_json())
    assert (metrics["total"], metrics["success"], metrics["running"]) == (3, 1, 1)
    assert mine in {r["task_id"] for r in loads(store.page_json()[0])}


def test_ids_in_memory_or_repeated_are_skipped(make_store: StoreFactory, db_path: str) -> None:
    store = make_store(db_path)
    in_memory, _ = store.create("job")
    twice = row()
    kept = store.adopt([row(task_id=in_memory), twice, {**twice, "status": "running"}])
    assert [(r["task_id"], r["status"]) for r in kept] == [(twice["task_id"], "pending")]  # the first of an id
    assert store.get(in_memory)["func_name"] == "job" and store.get(in_memory)["queue"] == "default"
    assert store.memory_len() == 2
    assert loads(store.metrics_json())["total"] == 2
    assert store.adopt([twice]) == []  # now in memory
    assert store.adopt([]) == []
    assert set(rows(db_path)) == {twice["task_id"]}


def counts(store: Any) -> dict[str, int]:
    metrics = loads(store.metrics_json())
    return {key: metrics[key] for key in COUNT_KEYS}


def test_unfinished_rows_of_this_file_are_taken_over_from_other_owners(make_store: StoreFactory, db_path: str) -> None:
    """A restart on the same file: the backend hands back the rows of the file's previous process."""
    gone = make_store(db_path)
    left, _ = gone.create("job", journal=True, tags={"t": "1"}, args_json=b"[1]")
    wait_for_next_microsecond()
    done, _ = gone.create("job", journal=True)
    gone.flush()
    backend = {r["task_id"]: r for r in gone.changed_rows(0)[0]}  # replicated while both were pending
    gone.transition(left, "running", retries_used=1)
    gone.append_log(left, "only in the file")
    drive(gone, done, "success")
    gone.flush()
    gone.close()
    store = make_store(db_path)
    opened = counts(store)
    # Its owner lock is held, but the backend's word that it is dead is taken as it is.
    alive = make_store(db_path)
    wait_for_next_microsecond()
    live, _ = alive.create("job", journal=True)
    alive.flush()
    # Rows of this store, of a version before the journal (no owner), and of a status unknown here.
    own, legacy, unknown = (str(uuid.uuid4()) for _ in range(3))
    insert = "INSERT INTO task_history (task_id, func_name, status, created_us, owner) VALUES (?, 'job', ?, ?, ?)"
    run_sql(
        db_path,
        (insert, (own, "running", 1, store.instance_id)),
        (insert, (legacy, "pending", 2, None)),
        (insert, (unknown, "paused", 3, "x")),
    )
    before = rows(db_path)
    high = max(seq for seq in seqs(db_path).values() if seq is not None)
    after_seq = store.last_seq
    given = [backend[left], backend[done], row(task_id=own), row(task_id=unknown), row(task_id=legacy)]
    adopted = store.adopt([*given, {**backend[left], "task_id": live, "owner": "x"}])
    assert [r["task_id"] for r in adopted] == [legacy, left, live]  # oldest first
    assert adopted == [store.get(legacy), store.get(left), store.get(live)]
    got = adopted[1]
    # The file's record, not the backend's: running, with the log the backend never saw.
    assert (got["status"], got["retries_used"], got["logs"]) == ("running", 1, ["only in the file"])
    assert (got["tags"], got["args_json"]) == ({"t": "1"}, b"[1]")
    assert [(r["func_name"], r["status"], r["logs"]) for r in (adopted[0], adopted[2])] == [("job", "pending", [])] * 2
    # Rewritten as they were, now owned by this store with new numbers; the others left as they are.
    after = rows(db_path)
    for n, task_id in enumerate([legacy, left, live], high + 1):
        assert after[task_id] == {**before[task_id], "owner": store.instance_id, "sync_seq": n}
    assert [after[task_id] for task_id in (done, own, unknown)] == [before[task_id] for task_id in (done, own, unknown)]
    assert (after[done]["status"], after[done]["owner"]) == ("success", None)
    changed, last = store.changed_rows(high)
    assert [(r["task_id"], r["status"], r["owner"]) for r in changed] == [
        (legacy, "pending", store.instance_id),
        (left, "running", store.instance_id),
        (live, "pending", store.instance_id),
    ]
    assert json.loads(changed[1]["logs_json"]) == ["only in the file"] and last == high + 3
    # A row taken over is counted as a claimed one: by open, when the file held it then (``left`` only; a
    # second count would leave a phantom running task): the counts stay.
    assert counts(store) == opened
    events, _ = store.events_since(after_seq)
    assert [(e["type"], e["task"]["task_id"], e["task"]["status"]) for e in map(loads, (d for _, d in events))] == [
        ("created", legacy, "pending"),
        ("created", left, "running"),
        ("created", live, "pending"),
    ]
    # Journaled records of this store from now on.
    assert store.adopt([backend[left]]) == []
    assert store.transition(left, "success") is True
    assert store.flush() == 1
    assert (rows(db_path)[left]["status"], rows(db_path)[left]["owner"]) == ("success", None)
    assert counts(store) == {**opened, "running": opened["running"] - 1, "success": opened["success"] + 1}


def test_an_adopted_running_record_can_be_requeued(make_store: StoreFactory, db_path: str) -> None:
    store = make_store(db_path)
    running = row("running", queue="fresh")  # the first record of its queue in this store
    assert [r["task_id"] for r in store.adopt([running])] == [running["task_id"]]
    assert store.transition(running["task_id"], "pending") is True
    assert 'taskflow_queue_depth{queue="fresh"} 1' in store.metrics_prometheus().decode()


def test_a_key_adopted_twice_stays_held_while_one_holder_is(make_store: StoreFactory, db_path: str) -> None:
    store = make_store(db_path)
    first, second = row("running", idempotency_key="k", created_us=1), row(idempotency_key="k", created_us=2)
    assert len(store.adopt([first, second])) == 2  # adopt does not check keys: both hold it
    assert store.transition(first["task_id"], "success") is True
    assert store.delete(first["task_id"]) is True
    assert store.create("job", idempotency_key="k") == (second["task_id"], False)


def test_a_deleted_id_adopted_again_is_listed_once(make_store: StoreFactory, db_path: str) -> None:
    store = make_store(db_path)
    task_id, _ = store.create("job")
    drive(store, task_id, "interrupted")
    assert store.delete(task_id) is True
    # The backend still had it unfinished, created at another time (say, by a peer that made it first).
    assert [r["task_id"] for r in store.adopt([row(task_id=task_id, created_us=5)])] == [task_id]
    for limit in (1, 2):
        for filters in ({}, {"status": "pending"}, {"func_name": "job"}):
            listed = all_pages(store, limit, **filters)
            assert [(r["task_id"], r["created_at"]) for r in listed] == [(task_id, "1970-01-01T00:00:00.000005+00:00")]


def spoiled(spoil: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    r = row(task_id="11111111-2222-4333-8444-555555555555")
    spoil(r)
    return r


#: ``(what is wrong, the exact message)``; both cores must say the same.
BAD_ROWS: list[tuple[dict[str, Any], str]] = [
    (
        spoiled(lambda r: r.pop("queue")),
        "adopt: task '11111111-2222-4333-8444-555555555555' has no field 'queue'",
    ),
    (
        spoiled(lambda r: r.pop("task_id")),
        "adopt: row 1 has no field 'task_id'",
    ),
    (
        spoiled(lambda r: r.update(task_id=7)),
        "adopt: row 1: field 'task_id' must be a str, not int",
    ),
    (
        spoiled(lambda r: r.update(func_name=None)),
        "adopt: task '11111111-2222-4333-8444-555555555555': field 'func_name' must be a str, not NoneType",
    ),
    (
        spoiled(lambda r: r.update(created_us="1")),
        "adopt: task '11111111-2222-4333-8444-555555555555': field 'created_us' must be a 64-bit int, not str",
    ),
    (
        spoiled(lambda r: r.update(priority=True)),
        "adopt: task '11111111-2222-4333-8444-555555555555': field 'priority' must be a 64-bit int or None, not bool",
    ),
    (
        spoiled(lambda r: r.update(start_us=2**63)),
        "adopt: task '11111111-2222-4333-8444-555555555555': field 'start_us' must be a 64-bit int or None,"
        " got 9223372036854775808",
    ),
    (
        spoiled(lambda r: r.update(args_json="[1]")),
        "adopt: task '11111111-2222-4333-8444-555555555555': field 'args_json' must be bytes or None, not str",
    ),
    (
        spoiled(lambda r: r.update(owner=1.5)),
        "adopt: task '11111111-2222-4333-8444-555555555555': field 'owner' must be a str or None, not float",
    ),
    (
        spoiled(lambda r: r.update(task_id="T-1")),
        "adopt: task 'T-1': field 'task_id' is not a UUID in canonical form (lowercase, hyphenated)",
    ),
    (
        spoiled(lambda r: r.update(task_id="11111111-2222-4333-8444-55555555555A")),
        "adopt: task '11111111-2222-4333-8444-55555555555A': field 'task_id' is not a UUID in canonical form"
        " (lowercase, hyphenated)",
    ),
    (
        spoiled(lambda r: r.update(status="success", end_us=5)),
        "adopt: task '11111111-2222-4333-8444-555555555555': field 'status' is 'success'; only pending and running"
        " rows can be adopted",
    ),
    (
        spoiled(lambda r: r.update(status="paused")),
        "adopt: task '11111111-2222-4333-8444-555555555555': field 'status' is 'paused'; only pending and running"
        " rows can be adopted",
    ),
    (
        spoiled(lambda r: r.update(retries_used=-1)),
        "adopt: task '11111111-2222-4333-8444-555555555555': field 'retries_used' must be at least 0, got -1",
    ),
    (
        spoiled(lambda r: r.update(logs_json='["a", 1]')),
        "adopt: task '11111111-2222-4333-8444-555555555555': field 'logs_json' must be a JSON array of strings",
    ),
    (
        spoiled(lambda r: r.update(logs_json="not json")),
        "adopt: task '11111111-2222-4333-8444-555555555555': field 'logs_json' must be a JSON array of strings",
    ),
    (
        spoiled(lambda r: r.update(logs_dropped=-3)),
        "adopt: task '11111111-2222-4333-8444-555555555555': field 'logs_dropped' must be at least 0, got -3",
    ),
    (
        spoiled(lambda r: r.update(tags_json='["a"]')),
        "adopt: task '11111111-2222-4333-8444-555555555555': field 'tags_json' must be a JSON object of strings",
    ),
    (
        spoiled(lambda r: r.update(tags_json='{"n": 1}')),
        "adopt: task '11111111-2222-4333-8444-555555555555': field 'tags_json' must be a JSON object of strings",
    ),
]


@pytest.mark.parametrize(("bad", "message"), BAD_ROWS, ids=[m.split(": ")[-1][:40] for _, m in BAD_ROWS])
def test_a_bad_row_adopts_nothing(make_store: StoreFactory, db_path: str, bad: dict[str, Any], message: str) -> None:
    store = make_store(db_path)
    before = store.last_seq
    with pytest.raises(ValueError) as raised:
        store.adopt([row(), bad, row("running")])
    assert str(raised.value) == message
    assert (store.memory_len(), store.last_seq, count(db_path)) == (0, before, 0)
    assert loads(store.metrics_json())["total"] == 0


def test_type_errors_are_found_before_the_other_checks(make_store: StoreFactory, db_path: str) -> None:
    store = make_store(db_path)
    # Row 0 is unfinished only in name; row 1 has a wrong type: the wrong type is reported.
    with pytest.raises(ValueError, match="row 1: field 'task_id' must be a str"):
        store.adopt([row("success"), {**row(), "task_id": None}])
    with pytest.raises(TypeError, match=r"^adopt: row 1 must be a dict, not str$"):
        store.adopt([row(), "not a row"])
    with pytest.raises(ValueError, match=r"^adopt: row 0 has no field 'task_id'$"):  # rows in turn
        store.adopt([{}, "not a row"])
    assert store.memory_len() == 0
    extra = {**row(), "sync_seq": 5, "anything": object()}
    assert [r["task_id"] for r in store.adopt([extra])] == [extra["task_id"]]  # other keys are ignored


@pytest.mark.parametrize(("source", "target"), [("rust", "python"), ("python", "rust"), ("rust", "rust")])
def test_changed_rows_of_one_store_are_adopted_by_another(tmp_path: Any, source: str, target: str) -> None:
    """The replicator's path: one instance's outbox rows, through a backend, into a survivor's store."""
    source_core, target_core = require_cores(source, target)
    # Two files: two cores in one process must never share one (see ``run_sql``).
    a = source_core.TaskStore(str(tmp_path / "a.db"))
    b = target_core.TaskStore(str(tmp_path / "b.db"))
    try:
        waiting, _ = a.create("job", tags={"t": "1"}, idempotency_key="k", args_json=b"[1]", journal=True)
        wait_for_next_microsecond()
        running, _ = a.create("job", encrypted_payload=b"ct", retry_of=waiting, journal=True)
        a.transition(running, "running", retries_used=1)
        a.append_log(running, "half way")
        done = finished(a, 1)[0]
        a.flush()
        changed, _ = a.changed_rows(0)
        unfinished = [r for r in changed if r["status"] in ("pending", "running")]
        assert {r["task_id"] for r in unfinished} == {waiting, running} and done not in {
            r["task_id"] for r in unfinished
        }
        assert b.adopt(unfinished) == [a.get(waiting), a.get(running)]
        again, _ = b.changed_rows(0)
        assert again == [{**r, "owner": b.instance_id} for r in unfinished]
    finally:
        a.close()
        b.close()
