"""page_json(tag="key=value"): paging by tag through memory and disk, and the v2 migration."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
from _corehelpers import StoreFactory, all_pages, drive, loads, query, sort_key, wait_for_next_microsecond

from fastapi_taskflow._pycore.snapshot import MIGRATIONS, SCHEMA_VERSION


def fill(store: Any, n: int) -> dict[str, set[str]]:
    """``n`` finished records tagged env=prod|dev by parity, plus "team": "a=b"; ids by env."""
    ids: dict[str, set[str]] = {"prod": set(), "dev": set()}
    for i in range(n):
        env = "prod" if i % 2 else "dev"
        task_id, _ = store.create("job", tags={"env": env, "team": "a=b"} if i % 3 else {"env": env})
        drive(store, task_id, "success" if i % 4 else "failed")
        ids[env].add(task_id)
        wait_for_next_microsecond()
    return ids


def test_tag_filter_in_memory(make_store: StoreFactory) -> None:
    store = make_store()
    ids = fill(store, 9)
    untagged, _ = store.create("job")
    for env in ("prod", "dev"):
        listed = all_pages(store, 2, tag=f"env={env}")
        assert {r["task_id"] for r in listed} == ids[env]
        assert listed == sorted(listed, key=sort_key, reverse=True)
        assert all(r["tags"]["env"] == env for r in listed)
    # Split at the first "=": the value may hold "=".
    assert {r["task_id"] for r in all_pages(store, 3, tag="team=a=b")} == {
        r["task_id"] for r in all_pages(store, 100) if r["tags"].get("team") == "a=b"
    }
    assert all_pages(store, 5, tag="env=") == []
    assert all_pages(store, 5, tag="nope=x") == []
    failed = all_pages(store, 2, tag="env=dev", status="failed")
    assert failed and all(r["status"] == "failed" and r["tags"]["env"] == "dev" for r in failed)
    assert untagged not in {r["task_id"] for r in all_pages(store, 100, tag="env=prod")}


def test_tag_without_equals_is_rejected(make_store: StoreFactory) -> None:
    with pytest.raises(ValueError):
        make_store().page_json(tag="env")


def test_tag_filter_through_disk_and_memory(make_store: StoreFactory, db_path: str) -> None:
    store = make_store(db_path, max_history=3)
    ids = fill(store, 7)
    assert store.flush() == 7
    assert store.memory_len() == 3
    more = fill(store, 6)  # in memory, not flushed yet
    live, _ = store.create("job", tags={"env": "prod"})
    for env in ("prod", "dev"):
        expected = ids[env] | more[env] | ({live} if env == "prod" else set())
        for limit in (1, 2, 5, 100):
            listed = all_pages(store, limit, tag=f"env={env}")
            assert [r["task_id"] for r in listed] == [r["task_id"] for r in sorted(listed, key=sort_key, reverse=True)]
            assert {r["task_id"] for r in listed} == expected
            assert len(listed) == len(expected)
    store.flush()
    store.close()
    reopened = make_store(db_path)
    on_disk = all_pages(reopened, 2, tag="env=dev", func_name="job")
    assert {r["task_id"] for r in on_disk} == ids["dev"] | more["dev"]
    # Re-flushing a record (a log after it finished) keeps one tag row per tag.
    conn = sqlite3.connect(db_path)
    try:
        dup = conn.execute("SELECT count(*) FROM task_tags GROUP BY key, value, task_id HAVING count(*) > 1").fetchall()
        assert dup == []
    finally:
        conn.close()


def test_version_1_file_gets_its_tags_backfilled(make_store: StoreFactory, db_path: str) -> None:
    conn = sqlite3.connect(db_path)
    try:
        with conn:
            conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            for statement in MIGRATIONS[0]:
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version (version) VALUES (1)")
            for i, tags in enumerate(['{"env":"prod","k":"v"}', '{"env":"dev"}', "{}", "not json", '{"env":"prod"}']):
                conn.execute(
                    "INSERT INTO task_history (task_id, func_name, status, created_us, tags_json)"
                    " VALUES (?, 'job', 'success', ?, ?)",
                    (f"t{i}", 1_700_000_000_000_000 + i, tags),
                )
    finally:
        conn.close()
    store = make_store(db_path)
    assert [r["task_id"] for r in all_pages(store, 1, tag="env=prod")] == ["t4", "t0"]
    assert [r["task_id"] for r in all_pages(store, 1, tag="env=dev")] == ["t1"]
    assert [r["task_id"] for r in all_pages(store, 1, tag="k=v")] == ["t0"]
    assert loads(store.get_json("t0"))["logs_dropped"] == 0  # the column v2 adds, defaulted
    assert query(db_path, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
