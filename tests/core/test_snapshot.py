"""The SQLite snapshot: flush, retention, restart, bad files, failed writes, cross-core compatibility."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from _corehelpers import STATUSES, StoreFactory, all_pages, drive, load_core, loads, query, wait_for_next_microsecond

from fastapi_taskflow._pycore.snapshot import MIGRATIONS, SCHEMA_VERSION, SnapshotDb


def finished_records(store: Any, n: int, name: str = "f") -> list[str]:
    ids = []
    for i in range(n):
        task_id, _ = store.create(name, tags={"i": str(i)})
        drive(store, task_id, "success" if i % 3 else "failed")
        ids.append(task_id)
        wait_for_next_microsecond()
    return ids


def test_db_path_property(make_store: StoreFactory, db_path: str) -> None:
    assert make_store().db_path is None
    assert make_store(db_path).db_path == db_path
    assert Path(db_path).exists()


def test_schema_and_wal(make_store: StoreFactory, db_path: str) -> None:
    make_store(db_path)
    assert query(db_path, "PRAGMA journal_mode") == [("wal",)]
    assert query(db_path, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    columns = [row[1] for row in query(db_path, "PRAGMA table_info(task_history)")]
    assert columns[:3] == ["task_id", "func_name", "status"] and len(columns) == 23
    assert columns[-5:] == ["logs_dropped", "owner", "encrypted_payload", "retry_of", "sync_seq"]
    indexes = {row[0] for row in query(db_path, "SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {
        "task_history_created",
        "task_history_status",
        "task_history_name",
        "task_history_owner",
        "task_history_sync",
    } <= indexes


def test_flush_without_file_returns_zero(make_store: StoreFactory) -> None:
    store = make_store()
    finished_records(store, 3)
    assert store.flush() == 0


def test_flush_writes_only_finished_and_changed_records(make_store: StoreFactory, db_path: str) -> None:
    store = make_store(db_path)
    done = finished_records(store, 5)
    live, _ = store.create("f")
    store.transition(live, "running")
    assert store.flush() == 5
    assert store.flush() == 0
    store.transition(live, "success")
    assert store.flush() == 1
    assert store.flush() == 0
    conn = sqlite3.connect(db_path)
    try:
        on_disk = {row[0] for row in conn.execute("SELECT task_id FROM task_history")}
    finally:
        conn.close()
    assert on_disk == {*done, live}


def test_a_log_line_after_the_end_is_a_change(make_store: StoreFactory, db_path: str) -> None:
    store = make_store(db_path)
    (task_id,) = finished_records(store, 1)
    assert store.flush() == 1
    store.append_log(task_id, "late line")
    assert store.flush() == 1
    store.close()
    assert make_store(db_path).get(task_id)["logs"] == ["late line"]


def test_eviction_beyond_max_history_only_after_flush(make_store: StoreFactory, db_path: str) -> None:
    store = make_store(db_path, max_history=3)
    ids = finished_records(store, 10)
    live, _ = store.create("f")
    assert store.memory_len() == 11  # nothing leaves memory before it is on disk
    assert store.flush() == 10
    assert store.memory_len() == 4  # the 3 newest finished records and the live one
    for task_id in ids[:7]:
        with pytest.raises(KeyError):
            store.transition(task_id, "running")
        with pytest.raises(KeyError):
            store.append_log(task_id, "x")
        assert store.get(task_id)["status"] in ("success", "failed")
    for task_id in ids[7:]:
        store.append_log(task_id, "still in memory")
    assert [r["task_id"] for r in all_pages(store, 4)] == [live, *ids[::-1]]


def test_without_file_finished_records_leave_as_they_finish(make_store: StoreFactory) -> None:
    store = make_store(max_history=3)
    live, _ = store.create("f")
    wait_for_next_microsecond()
    ids = finished_records(store, 10)
    assert store.memory_len() == 4
    assert [r["task_id"] for r in all_pages(store, 2)] == [*ids[:6:-1], live]
    for task_id in ids[:7]:
        assert store.get(task_id) is None


def test_restart_sees_history(make_store: StoreFactory, db_path: str) -> None:
    store = make_store(db_path, max_history=2)
    ids = finished_records(store, 12, name="job")
    store.append_log(ids[-1], "last words")
    live, _ = store.create("job")
    assert store.flush() == 12
    before = {task_id: store.get(task_id) for task_id in ids}
    metrics_before = loads(store.metrics_json())
    store.close()

    reopened = make_store(db_path, max_history=2)
    assert reopened.memory_len() == 0
    assert {task_id: reopened.get(task_id) for task_id in ids} == before
    assert reopened.get(live) is None  # never finished, never written
    assert [r["task_id"] for r in all_pages(reopened, 5)] == ids[::-1]
    assert [r["task_id"] for r in all_pages(reopened, 5, status="failed")] == [ids[i] for i in (9, 6, 3, 0)]
    assert [r["task_id"] for r in all_pages(reopened, 5, func_name="job")] == ids[::-1]
    assert all_pages(reopened, 5, func_name="other") == []
    metrics = loads(reopened.metrics_json())
    assert (metrics["total"], metrics["success"], metrics["failed"], metrics["pending"]) == (12, 8, 4, 0)
    assert metrics_before["total"] == 13
    for key in ("avg_duration_seconds", "p50_seconds", "p95_seconds", "p99_seconds"):
        assert metrics[key] == pytest.approx(metrics_before[key], abs=1e-6)
    assert metrics["by_name"]["job"]["failed"] == 4
    # new work on the reopened file is merged with the old
    (new,) = finished_records(reopened, 1, name="job")
    assert [r["task_id"] for r in all_pages(reopened, 5)] == [new, *ids[::-1]]
    assert loads(reopened.metrics_json())["total"] == 13


def test_records_written_twice_are_updated_not_duplicated(make_store: StoreFactory, db_path: str) -> None:
    store = make_store(db_path)
    (task_id,) = finished_records(store, 1)
    store.flush()
    store.append_log(task_id, "x")
    store.flush()
    store.close()
    reopened = make_store(db_path)
    assert loads(reopened.metrics_json())["total"] == 1
    assert len(all_pages(reopened, 10)) == 1


def test_corrupt_file_is_reported_with_its_path(core: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not a sqlite database, just bytes\n" * 200)
    with pytest.raises(core.SnapshotError) as info:
        core.TaskStore(str(path))
    assert str(path) in str(info.value)
    assert path.read_bytes().startswith(b"this is not")  # left alone


def test_missing_directory_is_reported_with_its_path(core: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "no" / "such" / "dir" / "tasks.db"
    with pytest.raises(core.SnapshotError) as info:
        core.TaskStore(str(path))
    assert str(path) in str(info.value)
    assert isinstance(info.value, RuntimeError)


def test_directory_as_path_is_reported(core: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(core.SnapshotError) as info:
        core.TaskStore(str(tmp_path))
    assert str(tmp_path) in str(info.value)


def test_schema_from_the_future_is_refused(core: ModuleType, make_store: StoreFactory, db_path: str) -> None:
    make_store(db_path).close()
    conn = sqlite3.connect(db_path)
    with conn:
        conn.execute("UPDATE schema_version SET version = 99")
    conn.close()
    with pytest.raises(core.SnapshotError) as info:
        core.TaskStore(db_path)
    assert db_path in str(info.value)
    assert "99" in str(info.value)


def test_failed_write_keeps_records_for_the_next_flush(
    core: ModuleType, make_store: StoreFactory, db_path: str
) -> None:
    store = make_store(db_path, max_history=1)
    ids = finished_records(store, 4)
    conn = sqlite3.connect(db_path)
    conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON task_history BEGIN SELECT RAISE(ABORT, 'disk says no'); END")
    conn.commit()
    with pytest.raises(core.SnapshotError) as info:
        store.flush()
    assert db_path in str(info.value)
    assert store.memory_len() == 4  # nothing left memory: nothing is on disk
    assert conn.execute("SELECT COUNT(*) FROM task_history").fetchone()[0] == 0  # the transaction rolled back
    conn.execute("DROP TRIGGER refuse")
    conn.commit()
    conn.close()
    assert store.flush() == 4
    assert store.memory_len() == 1
    assert [r["task_id"] for r in all_pages(store, 3)] == ids[::-1]


def test_flush_after_close_raises(core: ModuleType, make_store: StoreFactory, db_path: str) -> None:
    store = make_store(db_path)
    finished_records(store, 1)
    store.close()
    with pytest.raises(core.SnapshotError):
        store.flush()
    store.close()  # closing twice is harmless


def test_memory_is_served_after_close(make_store: StoreFactory, db_path: str) -> None:
    store = make_store(db_path)
    (task_id,) = finished_records(store, 1)
    store.close()
    assert store.get(task_id)["task_id"] == task_id


def test_memory_stays_bounded_after_close(make_store: StoreFactory, db_path: str) -> None:
    store = make_store(db_path, max_history=3)
    unwritten = finished_records(store, 5)
    live, _ = store.create("f")
    assert store.memory_len() == 6  # nothing is on disk yet, so nothing has left
    store.close()
    # Without a file to write to, the store keeps what a store without a file keeps.
    assert store.memory_len() == 4
    assert [store.get(task_id) is not None for task_id in unwritten] == [False, False, True, True, True]
    more = finished_records(store, 20)
    assert store.memory_len() == 4
    assert store.get(live) is not None
    for task_id in more[-3:]:
        store.append_log(task_id, "after close")
    assert store.memory_len() == 4
    assert [r["task_id"] for r in all_pages(store, 10)] == [*more[:-4:-1], live]


def test_status_filter_reads_disk(make_store: StoreFactory, db_path: str) -> None:
    store = make_store(db_path, max_history=1)
    ids = []
    for i in range(14):
        task_id, _ = store.create("ab"[i % 2])
        drive(store, task_id, STATUSES[2 + i % 5])
        ids.append(task_id)
        wait_for_next_microsecond()
    store.flush()
    assert store.memory_len() == 1
    for status in STATUSES[2:]:
        want = [t for i, t in enumerate(ids) if STATUSES[2 + i % 5] == status][::-1]
        assert [r["task_id"] for r in all_pages(store, 2, status=status)] == want
    want = [t for i, t in enumerate(ids) if i % 2 == 1 and STATUSES[2 + i % 5] == "success"][::-1]
    assert [r["task_id"] for r in all_pages(store, 1, status="success", func_name="b")] == want


@pytest.mark.parametrize(("writer", "reader"), [("python", "rust"), ("rust", "python")])
def test_a_file_written_by_one_core_is_read_by_the_other(tmp_path: Path, writer: str, reader: str) -> None:
    cores = {name: load_core(name) for name in (writer, reader)}
    missing = [name for name, module in cores.items() if module is None]
    if missing:
        pytest.fail(f"the {missing[0]} core cannot be imported; build it with `maturin develop`")
    path = str(tmp_path / "shared.db")
    source: Any = cores[writer].TaskStore(path, max_history=2)  # type: ignore[union-attr]
    ids = []
    for i in range(6):
        task_id, _ = source.create(
            f"job{i % 2}",
            queue="q",
            executor="thread" if i % 2 else None,
            priority=i if i % 3 else None,
            source="scheduled",
            tags={"n": str(i), "caf\u00e9": "\u2603"},
            idempotency_key=f"k{i}",
            args_json=b"[1]" if i % 2 else None,
            kwargs_json=b'{"x":"\\u00e9"}',
        )
        if i == 1:
            source.transition(task_id, "running", retries_used=2, error="boom", stacktrace="Traceback (most recent)")
        drive(source, task_id, ("success", "failed", "cancelled", "interrupted", "rejected", "success")[i])
        source.append_log(task_id, f"line {i} \u00e9")
        ids.append(task_id)
        wait_for_next_microsecond()
    assert source.flush() == 6
    expected = {task_id: source.get(task_id) for task_id in ids}
    expected_pages = all_pages(source, 4)
    expected_metrics = loads(source.metrics_json())
    source.close()

    target: Any = cores[reader].TaskStore(path, max_history=2)  # type: ignore[union-attr]
    try:
        assert {task_id: target.get(task_id) for task_id in ids} == expected
        assert all_pages(target, 4) == expected_pages
        metrics = loads(target.metrics_json())
        for scope, want in [
            (metrics, expected_metrics),
            *((metrics["by_name"][n], expected_metrics["by_name"][n]) for n in ("job0", "job1")),
        ]:
            for key, value in want.items():
                if key in ("by_name", "snapshot"):  # snapshot: the health of each store's own writes
                    continue
                if isinstance(value, float):
                    assert scope[key] == pytest.approx(value, abs=1e-6), key
                else:
                    assert scope[key] == value, key
        # and the reader can write to it in turn
        (more,) = finished_records(target, 1)
        assert target.flush() == 1
    finally:
        target.close()
    again: Any = cores[writer].TaskStore(path)  # type: ignore[union-attr]
    try:
        assert again.get(more)["status"] in ("success", "failed")
        assert loads(again.metrics_json())["total"] == 7
    finally:
        again.close()


def test_foreign_sqlite_file_is_refused(core: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "someone-elses.db"
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    conn.close()
    with pytest.raises(core.SnapshotError) as info:
        core.TaskStore(str(path))
    assert str(path) in str(info.value)
    conn = sqlite3.connect(path)
    try:  # untouched: no tables of ours were added
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        conn.close()
    assert tables == {"invoices"}


def test_empty_file_becomes_a_snapshot(make_store: StoreFactory, tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.write_bytes(b"")
    store = make_store(str(path))
    finished_records(store, 1)
    assert store.flush() == 1


def file_at_version(path: str, version: int, rows: list[tuple[str, str, str, int]]) -> None:
    """A file at schema ``version``, as that version made it, holding ``(task_id, func_name, status, created_us)``
    rows, each started at its creation and ended 1 µs later."""
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for statements in MIGRATIONS[:version]:
            for statement in statements:
                conn.execute(statement)
        conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
        conn.executemany(
            "INSERT INTO task_history (task_id, func_name, status, created_us, start_us, end_us)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [(task_id, name, status, created, created, created + 1) for task_id, name, status, created in rows],
        )
    conn.close()


def test_a_version_6_file_is_migrated_to_slim_indexes_that_page_ties_in_order(
    make_store: StoreFactory, db_path: str
) -> None:
    """Version 7: the task id leaves the creation and name indexes; pages keep their order across ties."""
    # Two creation times for six rows: pages of two end inside a run of ties.
    rows = [
        (f"00000000-0000-4000-8000-00000000000{n}", "g" if n % 3 == 0 else "f", "success", (n + 2) // 3)
        for n in range(1, 7)
    ]
    file_at_version(db_path, 6, rows)
    store = make_store(db_path)
    assert query(db_path, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    indexes = dict(query(db_path, "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"))
    assert indexes["task_history_created"].endswith("(created_us)")
    assert indexes["task_history_name"].endswith("(func_name, created_us)")
    newest_first = [row[0] for row in rows][::-1]
    assert [r["task_id"] for r in all_pages(store, 2)] == newest_first
    assert [r["task_id"] for r in all_pages(store, 2, func_name="f")] == [
        task_id for task_id, name, _, _ in rows[::-1] if name == "f"
    ]


def test_a_version_5_file_is_migrated_to_cheaper_indexes(make_store: StoreFactory, db_path: str) -> None:
    """Version 6: no ``task_history_end``, a status index without successes; pages and retention unchanged."""
    rows = [
        (f"00000000-0000-4000-8000-00000000000{n}", "f", status, n * 10) for n, status in enumerate(STATUSES[2:], 1)
    ]
    file_at_version(db_path, 5, rows)
    store = make_store(db_path)
    assert query(db_path, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    indexes = dict(query(db_path, "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"))
    assert "task_history_end" not in indexes
    assert indexes["task_history_status"].endswith("WHERE status <> 'success'")
    for task_id, _, status, _ in rows:
        assert [r["task_id"] for r in all_pages(store, 2, status=status)] == [task_id]
    assert [r["task_id"] for r in all_pages(store, 2)] == [row[0] for row in rows][::-1]
    # Rows 1 and 2 ended at 11 and 21: only they ended before 22.
    assert store.delete_finished_before(22) == (0, 2)
    assert [r["status"] for r in all_pages(store, 10)] == ["rejected", "cancelled", "interrupted"]


def test_the_python_cores_reads_walk_the_partial_status_index(tmp_path: Path) -> None:
    """SQLite uses a partial index only when the query states its condition: the pages and claims of ``_pycore`` do."""
    db = SnapshotDb(str(tmp_path / "tasks.db"))
    statements: list[str] = []
    conn = db._conn
    assert conn is not None
    conn.set_trace_callback(statements.append)
    db.page(None, "failed", None, 10)
    db.page(None, "success", None, 10)
    with db.lock:
        db.claim_locked("me", lambda row: True)
    conn.set_trace_callback(None)
    selects = [s for s in statements if s.startswith("SELECT") and "FROM task_history" in s and "max(" not in s]
    plans = [" ".join(str(row[3]) for row in conn.execute("EXPLAIN QUERY PLAN " + s)) for s in selects]
    assert len(plans) == 3
    failed, success, claim = plans
    assert "USING INDEX task_history_status" in failed
    assert "USING INDEX task_history_created" in success
    assert "USING INDEX task_history_status" in claim
    db.close()
