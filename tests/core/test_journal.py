"""The journal: unfinished rows owned by the store that accepted them, schema version 3, owner locks."""

from __future__ import annotations

import os
import sqlite3
import uuid
from pathlib import Path

import pytest
from _corehelpers import (
    StoreFactory,
    all_pages,
    drive,
    insert_rows,
    loads,
    query,
    require_cores,
    stored,
    wait_for_next_microsecond,
)

from fastapi_taskflow._pycore.owners import owner_alive
from fastapi_taskflow._pycore.snapshot import MIGRATIONS, SCHEMA_VERSION


def test_the_journal_columns_and_the_partial_indexes(make_store: StoreFactory, db_path: str) -> None:
    make_store(db_path)
    assert query(db_path, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    columns = [row[1] for row in query(db_path, "PRAGMA table_info(task_history)")]
    assert columns[-5:-1] == ["logs_dropped", "owner", "encrypted_payload", "retry_of"]
    indexes = dict(query(db_path, "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"))
    assert indexes["task_history_owner"].endswith("(owner) WHERE owner IS NOT NULL")
    assert indexes["task_history_idempotency"].endswith(
        "(idempotency_key, created_us) WHERE idempotency_key IS NOT NULL"
    )
    assert "task_history_end" not in indexes  # dropped by version 6: retention walks the creation index
    assert indexes["task_history_status"].endswith("(status, created_us, task_id) WHERE status <> 'success'")


def test_both_cores_build_the_same_schema(tmp_path: Path) -> None:
    """Identical migration SQL: SQLite keeps each statement's text, so the history schemas compare equal."""
    schemas = []
    for name, core in zip(("rust", "python"), require_cores("rust", "python"), strict=True):
        path = str(tmp_path / f"{name}.db")
        core.TaskStore(path).close()
        sql = "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE tbl_name <> 'schema_version' ORDER BY name"
        schemas.append(query(path, sql))
    assert schemas[0] == schemas[1]


def test_a_version_2_file_is_migrated(make_store: StoreFactory, db_path: str) -> None:
    conn = sqlite3.connect(db_path)
    with conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version (version) VALUES (2)")
        for statement in (*MIGRATIONS[0], *MIGRATIONS[1]):
            conn.execute(statement)
    conn.close()
    insert_rows(db_path, [{"task_id": "old", "func_name": "f", "status": "pending", "created_us": 1}])
    store = make_store(db_path)
    assert query(db_path, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    record = store.get("old")
    assert (record["status"], record["encrypted_payload"], record["retry_of"]) == ("pending", None, None)
    assert stored(db_path) == {"old": ("pending", None)}


def test_journaled_rows_carry_their_owner_until_they_finish(make_store: StoreFactory, db_path: str) -> None:
    store = make_store(db_path)
    journaled, _ = store.create("f", journal=True)
    plain, _ = store.create("f")
    assert stored(db_path) == {}
    assert store.flush() == 1
    me = store.instance_id
    assert stored(db_path) == {journaled: ("pending", me)}  # a plain record waits until it finishes
    assert store.flush() == 0

    store.transition(journaled, "running")
    store.append_log(journaled, "working")  # a log line alone does not make the row out of date
    assert store.flush() == 1
    assert stored(db_path)[journaled] == ("running", me)
    store.append_log(journaled, "still working")
    store.transition(journaled, "running")  # nor does a retry that changes nothing
    assert store.flush() == 0
    store.transition(journaled, "running", retries_used=1)
    assert store.flush() == 1
    assert query(db_path, "SELECT retries_used, logs_json FROM task_history") == [(1, '["working","still working"]')]
    store.transition(journaled, "pending")  # requeued
    assert store.flush() == 1
    assert stored(db_path)[journaled] == ("pending", me)

    store.transition(journaled, "running")
    store.transition(journaled, "success")
    drive(store, plain, "failed")
    assert store.flush() == 2
    assert stored(db_path) == {journaled: ("success", None), plain: ("failed", None)}


def test_pages_list_a_record_as_memory_holds_it_while_its_row_lags(make_store: StoreFactory, db_path: str) -> None:
    other = make_store(db_path)  # pending rows this store does not hold
    theirs = []
    for _ in range(5):
        theirs.append(other.create("f", journal=True)[0])
        wait_for_next_microsecond()
    other.flush()
    store = make_store(db_path)
    mine, _ = store.create("f", journal=True)
    store.flush()
    store.transition(mine, "running")  # its row says pending until the next flush
    assert stored(db_path)[mine] == ("pending", store.instance_id)
    for limit in (1, 2, 5, 6):
        # Not listed as pending; and the row left out does not end the paging early.
        assert [r["task_id"] for r in all_pages(store, limit, status="pending")] == theirs[::-1], limit
        assert [(r["task_id"], r["status"]) for r in all_pages(store, limit, status="running")] == [(mine, "running")]
    assert [r["task_id"] for r in all_pages(store, 2)] == [mine, *theirs[::-1]]


def test_journal_is_ignored_without_a_file(make_store: StoreFactory) -> None:
    store = make_store()
    task_id, created = store.create("f", journal=True)
    assert created and store.get(task_id)["status"] == "pending"
    assert store.flush() == 0


def test_encrypted_payload_and_retry_of_round_trip(make_store: StoreFactory, db_path: str) -> None:
    store = make_store(db_path, max_history=1)
    first, _ = store.create("f", args_json=b"[1]")
    drive(store, first, "failed")
    retry, _ = store.create("f", encrypted_payload=b"\x00ciphertext\xff", retry_of=first, journal=True)
    record = store.get(retry)
    assert (record["encrypted_payload"], record["retry_of"], record["args_json"]) == (
        b"\x00ciphertext\xff",
        first,
        None,
    )
    detail = loads(store.get_json(retry))
    assert list(detail)[-2:] == ["logs_dropped", "retry_of"] and detail["retry_of"] == first
    assert loads(store.get_json(first))["retry_of"] is None
    page, _ = store.page_json()
    assert all("retry_of" not in item for item in loads(page))  # list pages keep the 16 keys
    store.flush()
    store.close()

    reopened = make_store(db_path)
    assert reopened.memory_len() == 0
    assert reopened.get(retry) == record  # from the file
    assert loads(reopened.get_json(retry)) == detail


def test_encrypted_payload_must_be_bytes(make_store: StoreFactory) -> None:
    with pytest.raises(TypeError):
        make_store().create("f", encrypted_payload="not bytes")


def test_instance_id_and_owner_lock(make_store: StoreFactory, db_path: str) -> None:
    store = make_store(db_path)
    other = make_store(db_path)
    ids = {store.instance_id, other.instance_id}
    assert len(ids) == 2
    assert all(uuid.UUID(i).version == 4 and str(uuid.UUID(i)) == i for i in ids)
    assert store.instance_id == store.instance_id  # fixed for the store's life
    owners = db_path + ".owners"
    assert set(os.listdir(owners)) == ids
    assert owner_alive(owners, store.instance_id) and owner_alive(owners, other.instance_id)
    store.close()
    assert not owner_alive(owners, store.instance_id)
    assert owner_alive(owners, other.instance_id)
    assert isinstance(make_store().instance_id, str)  # a store without a file has one too, and no lock


def test_a_private_database_has_no_owner_lock(
    make_store: StoreFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = make_store(":memory:")
    task_id, _ = store.create("f", journal=True)
    assert store.flush() == 1
    assert store.claim_orphans() == []  # no other store can see the database
    store.transition(task_id, "running")
    assert store.get(task_id)["status"] == "running"
    store.close()
    assert os.listdir(tmp_path) == []  # no ":memory:.owners" directory
