"""Schedule locks, one-off schedules and metadata in the snapshot file (schema version 4), on both cores."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from _corehelpers import GET_KEYS, StoreFactory, loads, require_cores, run_sql, stored
from sqlite_peek import query

from fastapi_taskflow._pycore.snapshot import MIGRATIONS, SCHEMA_VERSION

FAR = 2**62  # a before_us later than every fire_us of these tests

SCHEDULED_KEYS = [
    "run_key",
    "func_name",
    "fire_us",
    "created_us",
    "args_json",
    "kwargs_json",
    "encrypted_payload",
    "queue",
    "priority",
    "idempotency_key",
    "tags",
]

#: Every argument a one-off carries into the task it creates.
FULL: dict[str, Any] = {
    "args_json": b"[1,2]",
    "kwargs_json": b'{"to":"x"}',
    "encrypted_payload": b"\x00cipher",
    "queue": "mail",
    "priority": 3,
    "idempotency_key": "once",
    "tags": {"z": "1", "a": "2"},
}


def now_us() -> int:
    return time.time_ns() // 1000


def due_keys(store: Any, before_us: int = FAR, limit: int = 1_000) -> list[str]:
    return [entry["run_key"] for entry in store.load_due(before_us, limit)]


def calls(store: Any) -> dict[str, Any]:
    """Each method of this file, called with valid arguments."""
    return {
        "acquire_lock": lambda: store.acquire_lock("k", 1.0),
        "save_scheduled": lambda: store.save_scheduled("r", "f", 0),
        "load_due": lambda: store.load_due(0),
        "delete_scheduled": lambda: store.delete_scheduled("r"),
        "fire_scheduled": lambda: store.fire_scheduled("r"),
        "save_metadata": lambda: store.save_metadata("k", "v"),
        "load_metadata": lambda: store.load_metadata("k"),
    }


def test_every_method_needs_a_file(core: ModuleType, make_store: StoreFactory) -> None:
    store = make_store()
    for name, call in calls(store).items():
        with pytest.raises(core.SnapshotError, match="has no snapshot file") as raised:
            call()
        assert not isinstance(raised.value, core.CorruptSnapshotError), name
    assert store.memory_len() == 0


def test_every_method_refuses_a_closed_file(core: ModuleType, make_store: StoreFactory, db_path: str) -> None:
    store = make_store(db_path)
    store.close()
    for call in calls(store).values():
        with pytest.raises(core.SnapshotError, match="closed"):
            call()


@pytest.mark.parametrize("ttl", [0, -1.0, math.nan, math.inf, -math.inf])
def test_a_lock_ttl_must_be_positive_and_finite(make_store: StoreFactory, db_path: str, ttl: float) -> None:
    for store in (make_store(), make_store(db_path)):
        with pytest.raises(ValueError, match="ttl"):
            store.acquire_lock("k", ttl)


def test_bad_arguments(make_store: StoreFactory, db_path: str) -> None:
    store = make_store(db_path)
    for limit in (0, -1):
        with pytest.raises(ValueError, match="limit"):
            store.load_due(0, limit)
    with pytest.raises(TypeError):
        store.save_scheduled("r", "f", 0, tags={"k": 1})
    with pytest.raises(TypeError):
        store.save_scheduled("r", "f", 0, args_json="[1]")
    assert due_keys(store) == []


def test_a_lock_is_held_until_it_expires(make_store: StoreFactory, db_path: str) -> None:
    first, second = make_store(db_path), make_store(db_path)
    assert first.acquire_lock("tick", 0.2) is True
    assert second.acquire_lock("tick", 60) is False
    assert first.acquire_lock("tick", 60) is False  # not re-entrant
    assert second.acquire_lock("tock", 1e300) is True  # a huge ttl is clamped, not an overflow
    (row,) = query(db_path, "SELECT expires_us FROM task_schedule_locks WHERE lock_key = 'tick'")
    assert 0 < row["expires_us"] - now_us() <= 200_000
    time.sleep(0.25)
    assert second.acquire_lock("tick", 60) is True
    assert first.acquire_lock("tick", 60) is False
    locks = {row["lock_key"] for row in query(db_path, "SELECT lock_key FROM task_schedule_locks")}
    assert locks == {"tick", "tock"}


def test_save_load_and_reschedule(make_store: StoreFactory, db_path: str) -> None:
    store = make_store(db_path)
    before = now_us()
    store.save_scheduled("full", "send", 100, **FULL)
    after = now_us()
    (entry,) = store.load_due(100)
    assert list(entry) == SCHEDULED_KEYS
    assert before <= entry.pop("created_us") <= after
    assert entry == {"run_key": "full", "func_name": "send", "fire_us": 100, **FULL}
    assert list(entry["tags"]) == ["z", "a"]  # in the order given
    assert store.load_due(99) == []  # fire_us <= before_us

    # The same run key again replaces every column.
    store.save_scheduled("full", "other", 50)
    (entry,) = store.load_due(FAR)
    assert entry["created_us"] >= after
    assert {k: v for k, v in entry.items() if k != "created_us"} == {
        "run_key": "full",
        "func_name": "other",
        "fire_us": 50,
        "args_json": None,
        "kwargs_json": None,
        "encrypted_payload": None,
        "queue": "default",
        "priority": None,
        "idempotency_key": None,
        "tags": {},
    }
    assert [row["tags_json"] for row in query(db_path, "SELECT tags_json FROM task_scheduled_once")] == ["{}"]


def test_due_order_and_limit(make_store: StoreFactory, db_path: str) -> None:
    store = make_store(db_path)
    for run_key, fire_us in [("d", 30), ("b", 10), ("c", 10), ("a", 20), ("e", -5)]:
        store.save_scheduled(run_key, "f", fire_us)
    assert due_keys(store) == ["e", "b", "c", "a", "d"]  # by (fire_us, run_key)
    assert due_keys(store, limit=2) == ["e", "b"]
    assert due_keys(store, before_us=10) == ["e", "b", "c"]
    assert due_keys(store, before_us=-6) == []
    assert store.delete_scheduled("c") is True
    assert store.delete_scheduled("c") is False
    assert store.delete_scheduled("never") is False
    assert due_keys(store) == ["e", "b", "a", "d"]
    assert store.fire_scheduled("c") is None


def test_firing_creates_a_journaled_record(make_store: StoreFactory, db_path: str) -> None:
    store = make_store(db_path)
    store.save_scheduled("r", "send", 0, **FULL)
    seq = store.last_seq
    fired = store.fire_scheduled("r", executor="thread")
    assert fired is not None
    task_id, created = fired
    assert created is True
    assert store.load_due(FAR) == []
    assert store.fire_scheduled("r") is None  # consumed

    record = store.get(task_id)
    assert list(record) == GET_KEYS
    # As create() makes it, with the one-off's fields.
    reference = make_store()
    ref_id, _ = reference.create("send", executor="thread", source="scheduled", journal=True, **FULL)
    expected = {**reference.get(ref_id), "task_id": task_id, "created_at": record["created_at"]}
    assert record == expected

    (event_seq, data), *rest = store.events_since(seq)[0]
    assert rest == [] and event_seq == seq + 1
    assert loads(data)["type"] == "created" and loads(data)["task"]["task_id"] == task_id
    metrics = loads(store.metrics_json())
    assert (metrics["total"], metrics["pending"], metrics["by_name"]["send"]["pending"]) == (1, 1, 1)
    assert metrics["snapshot"]["unwritten"] == 0  # its journal row is written already
    assert 'taskflow_queue_depth{queue="mail"} 1' in store.metrics_prometheus().decode()

    (row,) = query(db_path, "SELECT * FROM task_history WHERE task_id = ?", (task_id,))
    assert {k: row[k] for k in ("status", "owner", "source", "func_name", "queue", "priority", "executor")} == {
        "status": "pending",
        "owner": store.instance_id,
        "source": "scheduled",
        "func_name": "send",
        "queue": "mail",
        "priority": 3,
        "executor": "thread",
    }
    assert (row["args_json"], row["kwargs_json"], row["encrypted_payload"]) == (
        FULL["args_json"],
        FULL["kwargs_json"],
        FULL["encrypted_payload"],
    )
    assert (row["idempotency_key"], json.loads(row["tags_json"])) == ("once", FULL["tags"])
    tags = query(db_path, "SELECT key, value FROM task_tags WHERE task_id = ? ORDER BY key", (task_id,))
    assert [(t["key"], t["value"]) for t in tags] == [("a", "2"), ("z", "1")]
    body, _ = store.page_json(tag="z=1")
    assert [r["task_id"] for r in loads(body)] == [task_id]

    assert store.flush() == 0  # nothing to rewrite
    store.transition(task_id, "running")
    assert store.flush() == 1  # from here on an ordinary journaled record
    assert stored(db_path)[task_id] == ("running", store.instance_id)


def test_firing_without_the_journal(make_store: StoreFactory, db_path: str) -> None:
    store = make_store(db_path)
    store.save_scheduled("r", "f", 0)
    task_id, created = store.fire_scheduled("r", journal=False)
    assert created and store.get(task_id)["source"] == "scheduled"
    assert stored(db_path) == {}
    assert store.flush() == 0
    store.transition(task_id, "running")
    store.transition(task_id, "success")
    assert store.flush() == 1
    assert stored(db_path) == {task_id: ("success", None)}


def test_firing_a_held_key_consumes_the_one_off_only(make_store: StoreFactory, db_path: str) -> None:
    store = make_store(db_path)
    holder, _ = store.create("f", idempotency_key="k")
    store.save_scheduled("r", "f", 0, idempotency_key="k")
    seq, size = store.last_seq, store.memory_len()
    assert store.fire_scheduled("r") == (holder, False)
    assert (store.last_seq, store.memory_len()) == (seq, size)
    assert store.load_due(FAR) == []
    assert stored(db_path) == {}

    # A holder only the file knows of (journaled by another store) holds it too.
    other = make_store(db_path)
    journaled, _ = other.create("f", idempotency_key="j", journal=True)
    other.flush()
    store.save_scheduled("r", "f", 0, idempotency_key="j")
    assert store.fire_scheduled("r") == (journaled, False)

    # Once the holder fails, the key is free: the firing creates, and the new task holds it.
    store.transition(holder, "cancelled")
    store.save_scheduled("r", "f", 0, idempotency_key="k")
    new_id, created = store.fire_scheduled("r")
    assert created and new_id != holder
    assert store.create("f", idempotency_key="k") == (new_id, False)


def test_a_fired_task_survives_a_restart(make_store: StoreFactory, db_path: str) -> None:
    first = make_store(db_path)
    first.save_scheduled("r", "job", 0, **FULL)
    task_id, _ = first.fire_scheduled("r")
    fired = first.get(task_id)
    first.close()  # without running it

    second = make_store(db_path)
    assert second.load_due(FAR) == []
    assert second.claim_orphans() == [fired]
    assert second.get(task_id)["source"] == "scheduled"


def test_a_failed_firing_leaves_the_one_off_scheduled(core: ModuleType, make_store: StoreFactory, db_path: str) -> None:
    store = make_store(db_path)
    store.save_scheduled("r", "f", 0, tags={"t": "1"})
    run_sql(db_path, "DROP TABLE task_tags")  # the journal row's tags cannot be written
    seq = store.last_seq
    with pytest.raises(core.SnapshotError, match=re.escape(db_path)):
        store.fire_scheduled("r")
    assert due_keys(store) == ["r"]
    assert (store.memory_len(), store.last_seq) == (0, seq)
    assert stored(db_path) == {}


def test_unusable_tables_are_reported_with_the_path(core: ModuleType, make_store: StoreFactory, db_path: str) -> None:
    store = make_store(db_path)
    run_sql(db_path, "DROP TABLE task_schedule_locks", "DROP TABLE task_scheduled_once", "DROP TABLE task_metadata")
    for call in calls(store).values():
        with pytest.raises(core.SnapshotError, match=re.escape(db_path)):
            call()


def test_metadata_round_trip(make_store: StoreFactory, db_path: str) -> None:
    store = make_store(db_path)
    assert store.load_metadata("registry") is None
    store.save_metadata("registry", "{}")
    store.save_metadata("registry", '{"a": "ünïcode"}')
    store.save_metadata("empty", "")
    assert store.load_metadata("registry") == '{"a": "ünïcode"}'
    assert store.load_metadata("empty") == ""
    store.close()
    assert make_store(db_path).load_metadata("registry") == '{"a": "ünïcode"}'


def test_a_version_3_file_is_migrated_to_the_current_version(make_store: StoreFactory, db_path: str) -> None:
    run_sql(
        db_path,
        "CREATE TABLE schema_version (version INTEGER NOT NULL)",
        "INSERT INTO schema_version (version) VALUES (3)",
        *(statement for version in MIGRATIONS[:3] for statement in version),
        "INSERT INTO task_history (task_id, func_name, status, created_us) VALUES ('old', 'f', 'success', 1)",
    )
    tables = "SELECT name FROM sqlite_master WHERE name LIKE 'task_%' ORDER BY name"
    assert "task_metadata" not in {row["name"] for row in query(db_path, tables)}
    store = make_store(db_path)
    assert query(db_path, "SELECT version FROM schema_version") == [{"version": SCHEMA_VERSION}]
    assert {"task_metadata", "task_schedule_locks", "task_scheduled_once", "task_scheduled_once_fire"} <= {
        row["name"] for row in query(db_path, tables)
    }
    assert store.get("old")["status"] == "success"
    store.save_scheduled("r", "f", 7)
    store.save_metadata("k", "v")
    assert store.acquire_lock("l", 60)
    store.close()

    again = make_store(db_path)  # a file of the current version opens as it is
    assert (due_keys(again), again.load_metadata("k"), again.acquire_lock("l", 60)) == (["r"], "v", False)
    assert query(db_path, "SELECT version FROM schema_version") == [{"version": SCHEMA_VERSION}]


#: Answers each line "lock <key>" or "fire <key>" with the outcome of that one call, as JSON.
RACER = """
import importlib, json, sys, warnings
warnings.simplefilter("ignore")
core = importlib.import_module(sys.argv[1])
store = core.TaskStore(sys.argv[2])
print("ready", flush=True)
for line in sys.stdin:
    op, key = line.split()
    print(json.dumps(store.acquire_lock(key, 60) if op == "lock" else store.fire_scheduled(key)), flush=True)
store.close()
"""


def race(children: list[subprocess.Popen[str]], op: str, key: str) -> list[Any]:
    """Both racers try ``op`` on ``key`` at the same moment; their answers."""
    for child in children:
        assert child.stdin is not None
        child.stdin.write(f"{op} {key}\n")
        child.stdin.flush()
    answers = []
    for child in children:
        assert child.stdout is not None and child.stderr is not None
        line = child.stdout.readline()
        assert line, child.stderr.read()
        answers.append(json.loads(line))
    return answers


@pytest.mark.parametrize("racers", [("rust", "rust"), ("python", "python"), ("rust", "python")], ids="-".join)
def test_two_processes_never_both_win(tmp_path: Path, racers: tuple[str, str]) -> None:
    cores = require_cores(*racers)
    path = str(tmp_path / "race.db")
    keys = [f"key-{i:03}" for i in range(150)]
    setup = cores[0].TaskStore(path)
    try:
        for key in keys:
            setup.save_scheduled(key, "job", 0, tags={"run_key": key})
    finally:
        setup.close()
    children = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, core.__name__, path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for core in cores
    ]
    try:
        for child in children:
            assert child.stdout is not None and child.stderr is not None
            assert child.stdout.readline() == "ready\n", child.stderr.read()
        # In lockstep, key by key, so that both try each key together (run freely, one racer runs ahead and
        # finds every key taken, which would prove nothing about the transactions).
        locks = [race(children, "lock", key) for key in keys]
        fired = [race(children, "fire", key) for key in keys]
        for child in children:
            _, err = child.communicate(timeout=60)  # closes stdin: the racer closes its store and exits
            assert child.returncode == 0, err
    finally:
        for child in children:
            child.kill()
            child.communicate()

    assert all(sorted(answers) == [False, True] for answers in locks), locks
    winners: dict[str, tuple[str, bool]] = {}
    for key, answers in zip(keys, fired, strict=True):
        (won,) = [answer for answer in answers if answer is not None]
        assert answers.count(None) == 1
        winners[key] = tuple(won)
    assert all(created for _, created in winners.values())
    assert len({task_id for task_id, _ in winners.values()}) == len(keys)

    # Both racers are gone: their journaled tasks are orphans, one per one-off.
    store = cores[1].TaskStore(path)
    try:
        assert store.load_due(FAR) == []
        claimed = store.claim_orphans()
    finally:
        store.close()
    assert {r["task_id"]: r["tags"]["run_key"] for r in claimed} == {winners[key][0]: key for key in keys}
    assert {r["source"] for r in claimed} == {"scheduled"}
