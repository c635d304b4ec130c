"""The SharedBackend contract, run against Redis, PostgreSQL and MySQL alike."""

from __future__ import annotations

import asyncio
import json

import pytest

from fastapi_taskflow.backends import BackendError, SharedBackend

from .rows import finished, ids, scheduled_row, task_row
from .services import Namespace

pytestmark = pytest.mark.anyio

T0 = 1_700_000_000_000_000


# Rows.


async def test_a_row_round_trips_with_bytes_text_and_none(backend: SharedBackend) -> None:
    full = task_row(
        "full",
        func_name="tâche.envoyer",
        status="running",
        created_us=T0,
        start_us=T0 + 5,
        retries_used=2,
        error="ValueError: 💥",
        stacktrace="Traceback ...\n",
        logs_json='["a", "b"]',
        logs_dropped=3,
        tags_json='{"env": "prod", "n": 1}',
        source="scheduled",
        priority=-(2**40),
        executor="thread",
        queue="emails",
        idempotency_key="order-1",
        args_json=b"[1, 2]",
        kwargs_json=b'{"x": "\xc3\xa9"}',
        encrypted_payload=b"\x00\xff\x80 binary \x00",
        retry_of="earlier",
        owner="instance-1",
    )
    empty = task_row("empty", created_us=T0 + 1)
    await backend.upsert([full, empty])
    assert await backend.get("full") == full
    assert await backend.get("empty") == empty
    assert await backend.get("nope") is None


async def test_the_last_write_wins_across_and_within_batches(backend: SharedBackend) -> None:
    await backend.upsert([task_row("a", tags_json='{"k": "1"}')])
    later = task_row("a", status="running", start_us=T0 + 1, retries_used=1, tags_json='{"k": "2"}', owner="i")
    await backend.upsert([later])
    assert await backend.get("a") == later
    first, second = task_row("b", error="first"), task_row("b", error="second")
    await backend.upsert([first, second])
    assert await backend.get("b") == second
    assert ids(await backend.page(tag=("k", "1"))) == []
    assert ids(await backend.page(tag=("k", "2"))) == ["a"]
    assert ids(await backend.page()) == ["b", "a"]


async def test_an_empty_batch_is_nothing(backend: SharedBackend) -> None:
    await backend.upsert([])
    assert await backend.page() == []


# Pages.


async def test_pages_are_newest_first_and_cursors_walk_ties_exactly(backend: SharedBackend) -> None:
    # Groups of three rows share a created_us: the task id breaks the tie, bytewise.
    rows = [task_row(f"t-{i:02d}", created_us=T0 + i // 3) for i in range(25)]
    rows.append(task_row("T-upper", created_us=T0 + 4))  # "T" < "t" in byte order
    await backend.upsert(rows)
    expected = sorted(rows, key=lambda r: (r["created_us"], r["task_id"]), reverse=True)
    seen: list[str] = []
    before: tuple[int, str] | None = None
    while True:
        page = await backend.page(limit=4, before=before)
        if not page:
            break
        assert len(page) <= 4
        seen += ids(page)
        before = (page[-1]["created_us"], page[-1]["task_id"])
    assert seen == ids(expected)
    assert ids(await backend.page(limit=2, before=(T0 + 4, "t-13"))) == ["t-12", "T-upper"]


async def test_filters_by_status_name_and_tag_combine(backend: SharedBackend) -> None:
    await backend.upsert(
        [
            task_row("a", created_us=T0 + 1, tags_json='{"env": "prod", "team": "x"}'),
            task_row("b", created_us=T0 + 2, func_name="other", tags_json='{"env": "prod"}'),
            finished("c", created_us=T0 + 3, end_us=T0 + 9, tags_json='{"env": "dev"}'),
            finished("d", "failed", created_us=T0 + 4, end_us=T0 + 9, tags_json='{"env": "prod"}'),
            task_row("e", created_us=T0 + 5, tags_json='{"env": 1, "x": null}'),  # not strings: not tags
            task_row("f", created_us=T0 + 6, tags_json="not json"),
        ]
    )
    assert ids(await backend.page(status="pending")) == ["f", "e", "b", "a"]
    assert ids(await backend.page(func_name="job")) == ["f", "e", "d", "c", "a"]
    assert ids(await backend.page(tag=("env", "prod"))) == ["d", "b", "a"]
    assert ids(await backend.page(tag=("env", "pro"))) == []
    assert ids(await backend.page(tag=("env", "1"))) == []
    assert ids(await backend.page(status="pending", func_name="job")) == ["f", "e", "a"]
    assert ids(await backend.page(status="pending", tag=("env", "prod"))) == ["b", "a"]
    assert ids(await backend.page(func_name="job", tag=("env", "prod"), status="failed")) == ["d"]
    assert ids(await backend.page(tag=("env", "prod"), limit=1, before=(T0 + 4, "d"))) == ["b"]
    assert ids(await backend.page(func_name="missing")) == []


async def test_a_status_change_moves_the_row_between_status_pages(backend: SharedBackend) -> None:
    await backend.upsert([task_row("a"), task_row("b", created_us=T0 + 1)])
    assert ids(await backend.page(status="pending")) == ["b", "a"]
    await backend.upsert([task_row("a", status="running", start_us=T0 + 2)])
    assert ids(await backend.page(status="pending")) == ["b"]
    assert ids(await backend.page(status="running")) == ["a"]
    await backend.upsert([finished("a", "failed", end_us=T0 + 3)])
    assert ids(await backend.page(status="running")) == []
    assert ids(await backend.page(status="failed")) == ["a"]
    assert (await backend.count_by_status())["failed"] == 1


async def test_a_page_refuses_an_unknown_status_and_a_limit_below_one(backend: SharedBackend) -> None:
    with pytest.raises(ValueError, match="unknown status"):
        await backend.page(status="done")
    with pytest.raises(ValueError, match="limit"):
        await backend.page(limit=0)


async def test_bad_limits_and_durations_are_refused(backend: SharedBackend) -> None:
    for call in (
        backend.load_due(T0, limit=0),
        backend.claim_orphans("me", limit=0),
        backend.acquire_lock("k", 0),
        backend.acquire_lock("k", float("inf")),
        backend.heartbeat("me", -1),
        backend.claim_idempotency_key("k", "a", float("nan")),
    ):
        with pytest.raises(ValueError, match=r"limit must be at least 1|positive number of seconds"):
            await call
    assert await backend.acquire_lock("k", 60) is True  # nothing was taken by the refused calls


async def test_counts_cover_every_status(backend: SharedBackend) -> None:
    assert await backend.count_by_status() == dict.fromkeys(
        ["pending", "running", "success", "failed", "interrupted", "cancelled", "rejected"], 0
    )
    await backend.upsert([task_row("a"), task_row("b"), finished("c", "cancelled", end_us=T0)])
    counts = await backend.count_by_status()
    assert (counts["pending"], counts["cancelled"], counts["success"]) == (2, 1, 0)


# Deletion and retention.


async def test_delete_removes_finished_rows_only(backend: SharedBackend) -> None:
    await backend.upsert(
        [
            task_row("live", tags_json='{"k": "v"}'),
            finished("done", end_us=T0, tags_json='{"k": "v"}'),
            finished("gone", "rejected", end_us=T0),
        ]
    )
    assert await backend.delete(["live", "done", "gone", "unknown"]) == 2
    assert await backend.get("done") is None
    assert await backend.get("live") is not None
    assert ids(await backend.page(tag=("k", "v"))) == ["live"]
    assert ids(await backend.page()) == ["live"]
    assert (await backend.count_by_status())["success"] == 0
    assert await backend.delete([]) == 0


async def test_retention_deletes_finished_rows_that_ended_before_the_cutoff(backend: SharedBackend) -> None:
    statuses = ["success", "failed", "interrupted", "cancelled", "rejected"]
    old = [finished(f"old-{s}", s, end_us=T0 + i, tags_json='{"k": "v"}') for i, s in enumerate(statuses)]
    keep = [
        finished("recent", end_us=T0 + 100),
        finished("at-cutoff", end_us=T0 + 50),
        task_row("pending", owner="someone"),
        task_row("running", status="running", start_us=T0, tags_json='{"k": "v"}'),
    ]
    await backend.upsert(old + keep)
    assert await backend.delete_finished_before(T0 + 50) == len(old)
    assert sorted(ids(await backend.page())) == sorted(ids(keep))
    assert ids(await backend.page(tag=("k", "v"))) == ["running"]
    assert await backend.delete_finished_before(T0 + 50) == 0


async def test_retention_works_through_more_rows_than_one_batch(backend: SharedBackend) -> None:
    await backend.upsert([finished(f"r{i:04d}", end_us=T0 + i) for i in range(1_003)] + [task_row("live")])
    assert await backend.delete_finished_before(T0 + 10_000) == 1_003
    assert ids(await backend.page()) == ["live"]


# Idempotency keys.


async def test_an_idempotency_key_has_one_holder_until_released(backend: SharedBackend) -> None:
    assert await backend.claim_idempotency_key("order-1", "a", None) == "a"
    assert await backend.claim_idempotency_key("order-1", "b", None) == "a"
    assert await backend.claim_idempotency_key("order-1", "a", None) == "a"
    assert await backend.claim_idempotency_key("order-2", "b", 60) == "b"
    await backend.release_idempotency_key("order-1", "b")  # not the holder: nothing happens
    assert await backend.claim_idempotency_key("order-1", "c", None) == "a"
    await backend.release_idempotency_key("order-1", "a")
    assert await backend.claim_idempotency_key("order-1", "c", None) == "c"


async def test_an_expired_idempotency_key_is_taken_over(backend: SharedBackend) -> None:
    assert await backend.claim_idempotency_key("k", "a", 0.3) == "a"
    assert await backend.claim_idempotency_key("k", "b", 0.3) == "a"
    await asyncio.sleep(0.5)
    assert await backend.claim_idempotency_key("k", "b", 60) == "b"
    assert await backend.claim_idempotency_key("k", "c", 60) == "b"


# Leases and orphans.


async def test_orphans_are_rows_of_owners_without_a_live_lease(backend: SharedBackend) -> None:
    await backend.heartbeat("me", 60)
    await backend.heartbeat("alive", 60)
    await backend.upsert(
        [
            task_row("dead-2", created_us=T0 + 2, owner="dead"),
            task_row("dead-1", created_us=T0 + 1, owner="dead", status="running", start_us=T0 + 3),
            task_row("never-leased", created_us=T0 + 3, owner="ghost"),
            task_row("alive-1", owner="alive"),
            task_row("mine", owner="me"),
            task_row("unowned"),
            finished("done", end_us=T0),
        ]
    )
    claimed = await backend.claim_orphans("me")
    assert ids(claimed) == ["dead-1", "dead-2", "never-leased"]  # oldest first
    assert all(row["owner"] == "me" for row in claimed)
    assert claimed[0] == task_row("dead-1", created_us=T0 + 1, owner="me", status="running", start_us=T0 + 3)
    for task_id in ("dead-1", "dead-2", "never-leased", "mine"):
        assert (await backend.get(task_id) or {}).get("owner") == "me"
    assert (await backend.get("alive-1") or {}).get("owner") == "alive"
    assert await backend.claim_orphans("me") == []
    assert await backend.claim_orphans("alive") == []  # the rows are now mine, and I am alive


async def test_claims_respect_the_limit(backend: SharedBackend) -> None:
    await backend.heartbeat("me", 60)
    await backend.upsert([task_row(f"o{i}", created_us=T0 + i, owner=f"dead-{i % 2}") for i in range(5)])
    first = await backend.claim_orphans("me", limit=3)
    second = await backend.claim_orphans("me", limit=3)
    assert (len(first), len(second)) == (3, 2)
    assert sorted(ids(first) + ids(second)) == [f"o{i}" for i in range(5)]


async def test_a_retired_or_expired_lease_frees_the_rows(backend: SharedBackend) -> None:
    await backend.heartbeat("me", 60)
    await backend.heartbeat("leaving", 60)
    await backend.heartbeat("stalling", 0.3)
    await backend.upsert([task_row("l", owner="leaving"), task_row("s", owner="stalling")])
    assert await backend.claim_orphans("me") == []
    await backend.retire("leaving")
    assert ids(await backend.claim_orphans("me")) == ["l"]
    await asyncio.sleep(0.5)
    assert ids(await backend.claim_orphans("me")) == ["s"]


async def test_a_heartbeat_keeps_an_instance_alive(backend: SharedBackend) -> None:
    await backend.heartbeat("me", 60)
    await backend.heartbeat("busy", 0.3)
    await backend.upsert([task_row("b", owner="busy")])
    await asyncio.sleep(0.2)
    await backend.heartbeat("busy", 60)  # renewed before it ran out
    await asyncio.sleep(0.3)
    assert await backend.claim_orphans("me") == []


async def test_a_finished_row_has_no_owner_to_claim_from(backend: SharedBackend) -> None:
    await backend.heartbeat("me", 60)
    await backend.upsert([task_row("t", owner="dead")])
    await backend.upsert([finished("t", end_us=T0)])  # finished: the journal row lost its owner
    assert await backend.claim_orphans("me") == []


# Schedules.


async def test_a_lock_has_one_holder_until_it_expires(backend: SharedBackend) -> None:
    assert await backend.acquire_lock("schedule:report", 0.3) is True
    assert await backend.acquire_lock("schedule:report", 0.3) is False
    assert await backend.acquire_lock("schedule:other", 60) is True
    await asyncio.sleep(0.5)
    assert await backend.acquire_lock("schedule:report", 60) is True
    assert await backend.acquire_lock("schedule:report", 60) is False


async def test_scheduled_runs_are_saved_loaded_in_order_and_replaced(backend: SharedBackend) -> None:
    full = scheduled_row(
        "full",
        T0 + 10,
        func_name="send",
        args_json=b"[1]",
        kwargs_json=b'{"a": 2}',
        encrypted_payload=b"\x00\xff",
        queue="mail",
        priority=5,
        idempotency_key="once",
        tags_json='{"k": "v"}',
    )
    await backend.save_scheduled(full)
    await backend.save_scheduled(scheduled_row("b", T0 + 10))
    await backend.save_scheduled(scheduled_row("a", T0 + 10))
    await backend.save_scheduled(scheduled_row("early", T0 + 1))
    await backend.save_scheduled(scheduled_row("late", T0 + 100))
    due = await backend.load_due(T0 + 10)
    assert [r["run_key"] for r in due] == ["early", "a", "b", "full"]
    assert due[3] == full
    assert [r["run_key"] for r in await backend.load_due(T0 + 10, limit=2)] == ["early", "a"]
    assert await backend.load_due(T0) == []
    await backend.save_scheduled(scheduled_row("early", T0 + 200))  # rescheduled: replaced, not added
    assert [r["run_key"] for r in await backend.load_due(T0 + 1_000)] == ["a", "b", "full", "late", "early"]


async def test_a_scheduled_run_is_deleted_or_claimed_once(backend: SharedBackend) -> None:
    row = scheduled_row("r", T0, args_json=b"[3]")
    await backend.save_scheduled(row)
    await backend.save_scheduled(scheduled_row("s", T0))
    assert await backend.claim_scheduled("r") == row
    assert await backend.claim_scheduled("r") is None
    assert await backend.delete_scheduled("s") is True
    assert await backend.delete_scheduled("s") is False
    assert await backend.load_due(T0 + 1) == []


# Metadata and life cycle.


async def test_metadata_is_saved_and_replaced(backend: SharedBackend) -> None:
    assert await backend.load_metadata("_instance_registry") is None
    value = json.dumps({"a": {"url": "http://x", "last_seen": 1.5}})
    await backend.save_metadata("_instance_registry", value)
    assert await backend.load_metadata("_instance_registry") == value
    await backend.save_metadata("_instance_registry", "{}")
    assert await backend.load_metadata("_instance_registry") == "{}"


async def test_opening_twice_and_closing_twice_are_harmless(namespace: Namespace) -> None:
    backend = namespace.backend()
    await backend.open()
    await backend.open()
    await backend.ping()
    await backend.close()
    await backend.close()
    with pytest.raises(BackendError, match="not open"):
        await backend.get("x")


async def test_a_backend_must_be_opened_first(namespace: Namespace) -> None:
    backend = namespace.backend()
    with pytest.raises(BackendError, match=r"cannot ping the server: the backend is not open"):
        await backend.ping()


async def test_a_server_side_error_becomes_backend_error(namespace: Namespace, backend: SharedBackend) -> None:
    if namespace.kind == "redis":
        client = backend._client  # type: ignore[attr-defined]
        await client.set(f"taskflow-test:{namespace.name}:task:x", "not a hash")
    else:
        await namespace.drop()  # the tables vanish under the open backend
    with pytest.raises(BackendError, match=f"^{namespace.kind} backend at .*: cannot read a task row: ") as caught:
        await backend.get("x")
    assert caught.value.__cause__ is not None


async def test_many_instances_open_the_same_new_namespace_at_once(namespace: Namespace) -> None:
    backends = [namespace.backend() for _ in range(5)]
    try:
        await asyncio.gather(*(b.open() for b in backends))
        await backends[0].upsert([task_row("a")])
        assert ids(await backends[4].page()) == ["a"]
    finally:
        await asyncio.gather(*(b.close() for b in backends))


async def test_a_second_instance_sees_the_first_ones_writes(namespace: Namespace, backend: SharedBackend) -> None:
    async with namespace.backend() as other:
        await backend.upsert([task_row("a", args_json=b"[1]")])
        assert await other.get("a") == await backend.get("a")
