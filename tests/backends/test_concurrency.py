"""Atomic primitives under concurrency: coroutines of one instance, and instances in separate processes."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from fastapi_taskflow.backends import SharedBackend

from .rows import finished, ids, scheduled_row, task_row
from .services import Namespace

pytestmark = pytest.mark.anyio

WORKER = Path(__file__).with_name("worker.py")


def run_workers(namespace: Namespace, op: str, arguments: list[dict[str, Any]]) -> list[Any]:
    """Run one worker process per item of ``arguments``, released together once all are ready."""
    workers = [
        subprocess.Popen(
            [sys.executable, str(WORKER), namespace.kind, namespace.url, namespace.name, op, json.dumps(args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for args in arguments
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None
            assert worker.stdout.readline().strip() == "ready", "a worker failed to start"
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        outputs = [worker.communicate(timeout=60)[0] for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    assert [worker.returncode for worker in workers] == [0] * len(workers)
    return [json.loads(output) for output in outputs]


async def test_twenty_concurrent_claims_of_a_key_have_one_winner(backend: SharedBackend) -> None:
    task_ids = [f"t{i}" for i in range(20)]
    holders = await asyncio.gather(*(backend.claim_idempotency_key("order-7", t, 60) for t in task_ids))
    assert len(set(holders)) == 1
    assert holders[0] in task_ids


async def test_claims_of_a_key_from_several_processes_have_one_winner(namespace: Namespace) -> None:
    arguments = [{"key": "order-7", "task_ids": [f"p{p}-t{i}" for i in range(5)]} for p in range(4)]
    results = await anyio.to_thread.run_sync(run_workers, namespace, "claim_keys", arguments)
    holders = {holder for result in results for holder in result}
    assert len(holders) == 1
    assert holders <= {t for args in arguments for t in args["task_ids"]}


async def test_concurrent_claimants_take_each_orphan_once_and_no_live_row(
    namespace: Namespace, backend: SharedBackend
) -> None:
    await backend.heartbeat("alive", 60)
    orphans = [task_row(f"o{i:02d}", created_us=i, owner=f"dead-{i % 3}") for i in range(40)]
    live = [task_row(f"l{i}", owner="alive") for i in range(10)]
    await backend.upsert(orphans + live)
    arguments = [{"instance_id": f"claimant-{c}", "limit": 7} for c in range(3)]
    results = await anyio.to_thread.run_sync(run_workers, namespace, "claim_orphans", arguments)
    claimed = [task_id for result in results for task_id in result]
    assert len(claimed) == len(set(claimed)), "a row was claimed twice"
    # A claimant that found every row locked by the others stopped early; those rows went to them.
    await backend.heartbeat("sweeper", 60)
    assert await backend.claim_orphans("sweeper") == []
    assert sorted(claimed) == ids(orphans)
    for args, result in zip(arguments, results, strict=True):
        for task_id in result:
            assert (await backend.get(task_id) or {}).get("owner") == args["instance_id"]
    for row in live:
        assert (await backend.get(row["task_id"]) or {}).get("owner") == "alive"


async def test_coroutines_of_one_instance_claim_each_orphan_once(backend: SharedBackend) -> None:
    await backend.heartbeat("me", 60)
    await backend.upsert([task_row(f"o{i:02d}", created_us=i, owner="dead") for i in range(30)])
    results = await asyncio.gather(*(backend.claim_orphans("me", limit=4) for _ in range(10)))
    claimed = [task_id for rows in results for task_id in ids(rows)]
    assert len(claimed) == len(set(claimed))
    claimed += ids(await backend.claim_orphans("me"))  # what the busy moments left over
    assert sorted(claimed) == [f"o{i:02d}" for i in range(30)]


@pytest.mark.usefixtures("backend")  # the schema exists before the workers start
async def test_one_process_of_many_acquires_a_lock(namespace: Namespace) -> None:
    results = await anyio.to_thread.run_sync(run_workers, namespace, "acquire_locks", [{"key": "s", "calls": 3}] * 5)
    assert sorted(acquired for result in results for acquired in result) == [False] * 14 + [True]


async def test_one_process_of_many_claims_a_scheduled_run(namespace: Namespace, backend: SharedBackend) -> None:
    await backend.save_scheduled(scheduled_row("run", 1))
    results = await anyio.to_thread.run_sync(run_workers, namespace, "claim_runs", [{"run_key": "run", "calls": 3}] * 5)
    assert sorted(won for result in results for won in result) == [False] * 14 + [True]


async def test_overlapping_batches_leave_every_row_consistent_with_its_indexes(backend: SharedBackend) -> None:
    statuses = ["pending", "running", "success", "failed"]

    def batch(version: int) -> list[Any]:
        status = statuses[version % len(statuses)]
        rows = [
            finished(f"t{i:02d}", status, end_us=100 + version, tags_json=f'{{"v": "{version}"}}')
            if status in ("success", "failed")
            else task_row(f"t{i:02d}", status=status, tags_json=f'{{"v": "{version}"}}')
            for i in range(40)
        ]
        random.Random(version).shuffle(rows)
        return rows

    await asyncio.gather(*(backend.upsert(batch(v)) for v in range(8)))
    counts = await backend.count_by_status()
    assert sum(counts.values()) == 40
    for status in statuses:
        listed = ids(await backend.page(status=status, limit=100))
        assert len(listed) == counts[status]
        for task_id in listed:
            row = await backend.get(task_id)
            assert row is not None and row["status"] == status
    # Each row is in the tag index of its last version only.
    tagged = [ids(await backend.page(tag=("v", str(v)), limit=100)) for v in range(8)]
    for task_id in [f"t{i:02d}" for i in range(40)]:
        row = await backend.get(task_id)
        assert row is not None
        assert [v for v in range(8) if task_id in tagged[v]] == [int(json.loads(row["tags_json"])["v"])]
