"""create / get / get_json: the record shapes, ids, timestamps."""

from __future__ import annotations

import os
import uuid
from types import ModuleType
from typing import Any

import pytest
from _corehelpers import DETAIL_KEYS, GET_KEYS, STATUSES, StoreFactory, insert_rows, iso_to_us, loads


def test_module_exports(core: ModuleType) -> None:
    assert core.STATUSES == STATUSES
    assert isinstance(core.__version__, str) and core.__version__
    assert issubclass(core.SnapshotError, RuntimeError)


def test_capacities_below_one_are_refused(make_store: StoreFactory) -> None:
    for option in ("max_history", "ring_capacity", "max_log_lines"):
        with pytest.raises(ValueError):
            make_store(**{option: 0})


def test_new_record_is_pending_with_defaults(make_store: StoreFactory) -> None:
    store = make_store()
    task_id, created = store.create("send_email")
    assert created is True
    assert str(uuid.UUID(task_id)) == task_id
    assert uuid.UUID(task_id).version == 4
    record = loads(store.get_json(task_id))
    assert list(record) == DETAIL_KEYS
    assert record["logs_dropped"] == 0
    assert record["task_id"] == task_id
    assert record["func_name"] == "send_email"
    assert record["status"] == "pending"
    assert record["start_time"] is None and record["end_time"] is None and record["duration"] is None
    assert record["retries_used"] == 0
    assert record["error"] is None and record["stacktrace"] is None
    assert record["logs"] == []
    assert record["tags"] == {}
    assert (record["source"], record["priority"], record["executor"], record["queue"]) == (
        "manual",
        None,
        None,
        "default",
    )


def test_ids_are_distinct(make_store: StoreFactory) -> None:
    store = make_store()
    ids = {store.create("f")[0] for _ in range(2000)}
    assert len(ids) == 2000
    assert store.memory_len() == 2000


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_forked_children_draw_ids_of_their_own(make_store: StoreFactory) -> None:
    # A preloading server (gunicorn --preload) forks workers after the parent drew ids:
    # each child must still draw fresh random ids, not the parent's next ones.
    parent = make_store()
    parent.create("warm-up")
    drawn: list[str] = []
    for _ in range(3):
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: one id, back through the pipe, and out
            os.write(write_end, make_store().create("job")[0].encode())
            os._exit(0)
        os.close(write_end)
        drawn.append(os.read(read_end, 64).decode())
        os.close(read_end)
        os.waitpid(pid, 0)
    drawn.append(parent.create("job")[0])
    assert len(set(drawn)) == 4, drawn


def test_create_stores_every_option(make_store: StoreFactory) -> None:
    store = make_store()
    task_id, _ = store.create(
        "report",
        queue="slow",
        executor="thread",
        priority=7,
        source="scheduled",
        tags={"tenant": "acme", "kind": "pdf"},
        idempotency_key="k-1",
        args_json=b"[1,2]",
        kwargs_json=b'{"a":1}',
    )
    record = store.get(task_id)
    assert list(record) == GET_KEYS
    assert record["queue"] == "slow"
    assert record["executor"] == "thread"
    assert record["priority"] == 7
    assert record["source"] == "scheduled"
    assert record["tags"] == {"tenant": "acme", "kind": "pdf"}
    assert record["idempotency_key"] == "k-1"
    assert record["args_json"] == b"[1,2]"
    assert record["kwargs_json"] == b'{"a":1}'
    as_json = loads(store.get_json(task_id))
    assert {k: v for k, v in record.items() if k in DETAIL_KEYS} == as_json


def test_create_plain_is_create_with_queue_and_executor(make_store: StoreFactory, db_path: str) -> None:
    store = make_store(db_path)
    plain_id = store.create_plain("send_email", "emails", "thread")
    full_id, _ = store.create("send_email", queue="emails", executor="thread")
    assert isinstance(plain_id, str) and uuid.UUID(plain_id).version == 4
    assert plain_id != full_id
    plain, full = store.get(plain_id), store.get(full_id)
    for record in (plain, full):
        del record["task_id"], record["created_at"]
    assert plain == full
    assert plain["source"] == "manual" and plain["status"] == "pending" and plain["queue"] == "emails"
    created = [loads(data) for _, data in store.events_since(0)[0]]
    assert [event["task"]["task_id"] for event in created] == [plain_id, full_id]
    assert loads(store.metrics_json())["total"] == 2
    assert store.flush() == 0  # not journaled, as create() without journal=True


def test_tags_are_copied(make_store: StoreFactory) -> None:
    store = make_store()
    tags = {"a": "1"}
    task_id, _ = store.create("f", tags=tags)
    tags["a"] = "changed"
    assert store.get(task_id)["tags"] == {"a": "1"}


def test_get_of_unknown_id_is_none(make_store: StoreFactory, db_path: str) -> None:
    for store in (make_store(), make_store(db_path)):
        assert store.get("nope") is None
        assert store.get_json("nope") is None


def test_created_at_is_now_in_iso_utc(make_store: StoreFactory) -> None:
    import time

    before = time.time_ns() // 1000
    store = make_store()
    task_id, _ = store.create("f")
    after = time.time_ns() // 1000
    created_at = store.get(task_id)["created_at"]
    assert created_at.endswith("+00:00")
    assert before <= iso_to_us(created_at) <= after


@pytest.mark.parametrize(
    ("micros", "text"),
    [
        (1_704_110_400_000_000, "2024-01-01T12:00:00+00:00"),
        (1_704_110_400_123_456, "2024-01-01T12:00:00.123456+00:00"),
        (1_704_110_400_000_001, "2024-01-01T12:00:00.000001+00:00"),
        (1_704_110_400_100_000, "2024-01-01T12:00:00.100000+00:00"),
        (951_825_600_000_000, "2000-02-29T12:00:00+00:00"),
    ],
)
def test_timestamps_match_datetime_isoformat(make_store: StoreFactory, db_path: str, micros: int, text: str) -> None:
    make_store(db_path).close()
    insert_rows(
        db_path,
        [{"task_id": "t", "func_name": "f", "status": "success", "created_us": micros, "start_us": micros,
          "end_us": micros + 1_500_000}],
    )  # fmt: skip
    record: dict[str, Any] = make_store(db_path).get("t")
    assert record["created_at"] == text
    assert record["start_time"] == text
    assert record["duration"] == 1.5
    assert iso_to_us(record["end_time"]) == micros + 1_500_000


def test_get_returns_a_snapshot_not_a_view(make_store: StoreFactory) -> None:
    store = make_store()
    task_id, _ = store.create("f")
    record = store.get(task_id)
    record["logs"].append("mine")
    record["tags"]["x"] = "y"
    assert store.get(task_id)["logs"] == []
    assert store.get(task_id)["tags"] == {}
