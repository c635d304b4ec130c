"""Memory stays flat: a million no-op tasks through a ``TaskManager`` with ``snapshot_db``.

Tasks are enqueued and run in batches, the way requests bring them, with the manager's
snapshot writer running; the resident set size is read after each checkpoint. With the
default ``max_history`` (10,000) only that many finished tasks stay in memory, so the
curve should be flat after the first checkpoint, whatever the number of tasks run.

Usage: ``python benches/memory_flat.py [--tasks 1000000] [--journal]``; ``make bench-memory``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import resource
import sys
import tempfile
import time
from pathlib import Path

from machine import describe


def rss_mib() -> tuple[float, float]:
    """Resident memory in MiB: (anonymous, file-backed).

    Anonymous memory is the heap: records, indexes, SQLite's page cache. File-backed pages
    are the snapshot file mapped into memory by SQLite (``mmap_size``): the kernel's page
    cache, shared and dropped under pressure, growing with the file, not with the process.
    Elsewhere than Linux, the peak RSS from getrusage and 0.
    """
    fields: dict[str, float] = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile", "RssShmem"):
                fields[key] = int(value.split()[0]) / 1024
    except OSError:
        pass
    if "RssAnon" in fields:
        return fields["RssAnon"], fields.get("RssFile", 0.0) + fields.get("RssShmem", 0.0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 0.0


async def run(tasks: int, journal: bool, checkpoints: int) -> list[tuple[int, tuple[float, float], int]]:
    from fastapi_taskflow import ManagedBackgroundTasks, TaskManager

    async def noop(n: int) -> None:
        return None

    batch = 1_000
    rows: list[tuple[int, tuple[float, float], int]] = []
    with tempfile.TemporaryDirectory(prefix="taskflow-memory-") as tmp:
        manager = TaskManager(snapshot_db=str(Path(tmp) / "tasks.db"), snapshot_interval=0.5, requeue_pending=journal)
        manager.task(name="noop")(noop)
        await manager.startup()
        every = max(1, tasks // batch // checkpoints)
        for i in range(tasks // batch):
            background = ManagedBackgroundTasks(manager)
            for n in range(batch):
                background.add_task(noop, n)
            await background()
            if (i + 1) % every == 0:
                await manager.flush()
                gc.collect()
                done, (anon, mapped), held = (i + 1) * batch, rss_mib(), manager.core.memory_len()
                rows.append((done, (anon, mapped), held))
                print(
                    f"{done:>9,} tasks: {anon:7.1f} MiB anonymous, {mapped:7.1f} MiB file-backed, {held:,} in memory",
                    flush=True,
                )
        await manager.shutdown()
        manager.core.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--checkpoints", type=int, default=10)
    parser.add_argument("--journal", action="store_true", help="requeue_pending=True: every task journaled")
    args = parser.parse_args()
    from fastapi_taskflow._selected import CORE_NAME

    print(f"{describe()}; {CORE_NAME} core; journal {'on' if args.journal else 'off'}", flush=True)
    started = time.monotonic()
    rows = asyncio.run(run(args.tasks, args.journal, args.checkpoints))
    (first_n, (first_anon, _), _), (last_n, (last_anon, last_mapped), _) = rows[0], rows[-1]
    print(
        f"anonymous memory {first_anon:.1f} MiB after {first_n:,} tasks, {last_anon:.1f} MiB after {last_n:,} "
        f"({last_anon - first_anon:+.1f} MiB); file-backed {last_mapped:.1f} MiB; {time.monotonic() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
