"""One instance in another OS process, for the concurrency tests.

``python worker.py KIND URL NAMESPACE OP ARGS_JSON`` opens a backend on the namespace,
prints ``ready``, waits for a line on stdin (so that every worker starts at once), runs
``OP`` and prints its result as JSON.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from services import Namespace

from fastapi_taskflow.backends import SharedBackend


async def claim_keys(backend: SharedBackend, key: str, task_ids: list[str]) -> list[str]:
    return list(await asyncio.gather(*(backend.claim_idempotency_key(key, t, None) for t in task_ids)))


async def claim_orphans(backend: SharedBackend, instance_id: str, limit: int) -> list[str]:
    """Keep claiming (as a live instance) until nothing is left."""
    await backend.heartbeat(instance_id, 60)
    claimed: list[str] = []
    while rows := await backend.claim_orphans(instance_id, limit=limit):
        claimed += [row["task_id"] for row in rows]
    return claimed


async def acquire_locks(backend: SharedBackend, key: str, calls: int) -> list[bool]:
    return list(await asyncio.gather(*(backend.acquire_lock(key, 60) for _ in range(calls))))


async def claim_runs(backend: SharedBackend, run_key: str, calls: int) -> list[bool]:
    rows = await asyncio.gather(*(backend.claim_scheduled(run_key) for _ in range(calls)))
    return [row is not None for row in rows]


OPS = {
    "claim_keys": claim_keys,
    "claim_orphans": claim_orphans,
    "acquire_locks": acquire_locks,
    "claim_runs": claim_runs,
}


async def main(kind: str, url: str, name: str, op: str, arguments: dict[str, Any]) -> None:
    async with Namespace(kind, url, name).backend() as backend:
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        result = await OPS[op](backend, **arguments)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    kind, url, name, op, arguments = sys.argv[1:]
    asyncio.run(main(kind, url, name, op, json.loads(arguments)))
