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


def rss_mib() -> float:
    """Current resident set size in MiB (Linux: /proc; elsewhere the peak from getrusage)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)


async def run(tasks: int, journal: bool, checkpoints: int) -> list[tuple[int, float, int]]:
    from fastapi_taskflow import ManagedBackgroundTasks, TaskManager

    async def noop(n: int) -> None:
        return None

    batch = 1_000
    rows: list[tuple[int, float, int]] = []
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
                rows.append(((i + 1) * batch, rss_mib(), manager.core.memory_len()))
                print(f"{rows[-1][0]:>9,} tasks: {rows[-1][1]:7.1f} MiB RSS, {rows[-1][2]:,} in memory", flush=True)
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
    first, last = rows[0], rows[-1]
    print(
        f"RSS {first[1]:.1f} MiB after {first[0]:,} tasks, {last[1]:.1f} MiB after {last[0]:,} "
        f"({last[1] - first[1]:+.1f} MiB); {time.monotonic() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
