"""``make bench``: runs the workload once per variant, each in its own process, and prints one report.

The core is chosen at import time, so every variant gets a fresh interpreter. The report
goes to stdout and, for a full run, to ``benches/results.md``. Its last section (shared
backends, ``backends.py``) runs in one more process, on the Rust core; ``--only`` runs one
section alone (the report is then printed only).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import backends
from compare import KEPT, Results, render
from coreops import PYTHON_CORE
from machine import commit, describe

HERE = Path(__file__).resolve().parent
WORKLOAD = HERE / "workload.py"
BACKENDS = HERE / "backends.py"
#: What ``--only`` can pick: the core workload (sections 1-7), or the shared backends (section 8).
SECTIONS = ("workload", "backends")
RESULTS_FILE = HERE / "results.md"
#: Variant -> value of FASTAPI_TASKFLOW_CORE (None: the variant does not import the package).
VARIANTS: dict[str, str | None] = {"starlette": None, "rust": "rust", "python": "python"}

METHOD = (
    "Each variant runs in its own process; the variants alternate for 2 rounds and each number is the "
    "better of the 2 (lowest time, highest rate), as a shared VM only ever slows a run down. "
    "add_task: mean over 100k calls "
    "(a fresh tasks object every 1,000; the store kept at steady size by finishing each batch "
    "untimed), median of 5 runs. End-to-end: 20k no-op tasks in batches of 1,000 (each enqueued on a "
    "fresh tasks object, then `await tasks()`, then one turn of the event loop, as between requests), "
    "median of 5 runs; with snapshot_db the manager is started first (`snapshot_interval` = 0.05 s), so "
    "finished tasks are written while tasks run (by the core's own thread from 256 unwritten, and by the "
    "periodic writer), and the final `await manager.flush()` is inside the timing; in-memory and "
    "snapshot_db runs take turns in one process, the order reversing every repeat, and the share kept is "
    "the median over the repeats of the ratio of a repeat's two runs (over rounds: their median). "
    "Reads: median per-call latency; the store is filled through `core.create`/`transition` "
    "(4 task names, 1 in 10 failed); in memory with `max_history` = store size; on disk with the default "
    "`max_history` (10,000) after `await manager.flush()`. Routes are called as an ASGI app directly, "
    "no HTTP client; with snapshot_db, `GET /tasks` hops to a thread. "
    "Core operations: `TaskStore` methods called directly on a store of 10,000 records (create and "
    "transition: mean over runs of 1,000 calls; reads: median per call, 400 calls a run at most; snapshot "
    "write: one flush of 10,000 new records into a new file), median of 5 runs; both cores run in turns in "
    "one process (the Rust variant's), each of the 5 runs timing one core then the other, the order "
    "flipping every run, so their ratio compares runs made under the same load. "
    "Expect ±30% between runs on a shared 2-vCPU VM: ratios within 1.5x are not a verdict."
)


def machine(method: bool = True) -> str:
    """The report's heading, the machine and (unless only section 8 runs) how sections 1-7 measure."""
    today = datetime.date.today().isoformat()
    header = f"## fastapi_taskflow benchmarks ({today}, {commit()})\n\nMachine: {describe()}."
    return f"{header}\n{METHOD}" if method else header


def run_variant(variant: str, core: str | None, quick: bool) -> Results:
    env = dict(os.environ)
    env.pop("FASTAPI_TASKFLOW_CORE", None)
    if core is not None:
        env["FASTAPI_TASKFLOW_CORE"] = core
    command = [sys.executable, str(WORKLOAD), variant, *(["--quick"] if quick else [])]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    print(f"{variant}: {time.monotonic() - started:.0f} s", file=sys.stderr)
    if done.returncode != 0:
        print(f"{variant} failed (exit {done.returncode}):\n{done.stderr}", file=sys.stderr)
        return None
    results: dict[str, float] = json.loads(done.stdout)["results"]
    return results


def run_backends(quick: bool) -> str:
    """Section 8, measured in a process of its own on the Rust core; a failed process is reported, not raised."""
    env = dict(os.environ, FASTAPI_TASKFLOW_CORE="rust")
    command = [sys.executable, str(BACKENDS), "--json", *(["--quick"] if quick else [])]
    scale = backends.QUICK if quick else backends.FULL
    started = time.monotonic()
    # stderr is not captured: the per-backend progress lines and any traceback show as they come.
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=env)
    print(f"backends: {time.monotonic() - started:.0f} s", file=sys.stderr)
    if done.returncode != 0:
        print(f"backends failed (exit {done.returncode})", file=sys.stderr)
        return backends.render(None, scale)
    return backends.render(json.loads(done.stdout)["results"], scale)


def with_python_core_ops(rust: Results, python: Results) -> tuple[Results, Results]:
    """Move the Python core's operations, which the rust process timed in turns with its own, to the python results."""
    if rust is None:
        return rust, python
    own = {key: value for key, value in rust.items() if not key.startswith(PYTHON_CORE)}
    ops = {key.removeprefix(PYTHON_CORE): value for key, value in rust.items() if key.startswith(PYTHON_CORE)}
    return own, {**(python or {}), **ops}


def best(rounds: list[Results]) -> Results:
    """Per number, the best of the rounds (lowest time, highest rate): neighbours only ever slow a run down.

    Not the share kept with snapshot_db: a slow spell slows both runs of its ratio, so the best
    of the rounds would only pick the luckier estimate; it is their median.
    """
    done = [r for r in rounds if r is not None]
    if not done:
        return None
    keys = set().union(*done)
    pick: dict[str, Callable[[Iterable[float]], float]] = {
        key: statistics.median if key == KEPT else max if key.startswith("e2e") else min for key in keys
    }
    return {key: pick[key](r[key] for r in done if key in r) for key in keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test; results.md is kept")
    parser.add_argument("--rounds", type=int, default=2, help="processes per variant, run in alternation")
    parser.add_argument(
        "--only", choices=SECTIONS, help="run one section: the workload (1-7) or the shared backends (8); prints only"
    )
    args = parser.parse_args()
    quick = " (--quick: smaller sizes than stated)" if args.quick else ""
    if args.only == "backends":
        print(machine(method=False) + "\n\n" + run_backends(args.quick))  # the section states its own sizes
        return
    rounds: dict[str, list[Results]] = {variant: [] for variant in VARIANTS}
    for _ in range(args.rounds):
        for variant, core in VARIANTS.items():
            rounds[variant].append(run_variant(variant, core, args.quick))
        rounds["rust"][-1], rounds["python"][-1] = with_python_core_ops(rounds["rust"][-1], rounds["python"][-1])
    results = {variant: best(runs) for variant, runs in rounds.items()}
    report = render(results, machine() + quick)
    if args.only is None:
        report += "\n" + run_backends(args.quick) + "\n"
    print(report)
    if not args.quick and args.only is None:
        RESULTS_FILE.write_text(report)


if __name__ == "__main__":
    main()
