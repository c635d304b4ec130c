"""Runs every workload for one variant and prints the results as one JSON object.

Usage: ``python benches/workload.py starlette|rust|python [--quick]``. The core is
chosen when ``fastapi_taskflow`` is first imported, so ``run.py`` starts one process
per variant with ``FASTAPI_TASKFLOW_CORE`` set; this process checks it got that core.
The rust variant's process also times the Python core's operations (scenario 6), in turns
with the Rust core's, and prints them under keys that begin with ``coreops.PYTHON_CORE``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import tempfile
from dataclasses import dataclass

import targets
from compare import KEPT
from coreops import PYTHON_CORE, core_ops
from enqueue import add_task_us, end_to_end_tps
from observability import observability_costs
from reads import empty_route_us, read_scenarios
from timing import median

VARIANTS = ("starlette", "rust", "python")


@dataclass(frozen=True)
class Scale:
    add_task_calls: int
    tasks_per_run: int
    repeats: int
    read_sizes: tuple[int, ...]
    read_budget_s: float


FULL = Scale(add_task_calls=100_000, tasks_per_run=20_000, repeats=5, read_sizes=(1_000, 100_000), read_budget_s=0.5)
QUICK = Scale(add_task_calls=10_000, tasks_per_run=2_000, repeats=3, read_sizes=(1_000, 10_000), read_budget_s=0.05)


def _core_facts(variant: str) -> dict[str, str]:
    if variant == "starlette":
        return {}
    from fastapi_taskflow import _selected

    if _selected.CORE_NAME != variant:
        raise SystemExit(f"asked for the {variant} core but fastapi_taskflow loaded the {_selected.CORE_NAME} core")
    return {"core": _selected.CORE_NAME, "core_version": _selected.core.__version__}


async def _run(variant: str, scale: Scale) -> dict[str, float]:
    results: dict[str, float] = {}
    if variant == "starlette":
        results["add_task"] = add_task_us(targets.bare, calls=scale.add_task_calls, repeats=scale.repeats)
        (bare,) = await end_to_end_tps(targets.bare, tasks_per_run=scale.tasks_per_run, repeats=scale.repeats)
        results["e2e"] = median(bare)
        results["route.empty"] = await empty_route_us(budget_s=scale.read_budget_s)
        return results
    results["add_task"] = add_task_us(targets.managed, calls=scale.add_task_calls, repeats=scale.repeats)
    with tempfile.TemporaryDirectory(prefix="taskflow-bench-") as tmp:
        files = (os.path.join(tmp, f"run-{n}.db") for n in itertools.count())
        results["add_task.snapshot"] = add_task_us(
            lambda: targets.managed(next(files)), calls=scale.add_task_calls, repeats=scale.repeats
        )
        results["add_task.journal"] = add_task_us(
            lambda: targets.managed(next(files), journal=True), calls=scale.add_task_calls, repeats=scale.repeats
        )
        # In turns, so that the share kept with snapshot_db compares like with like: each
        # repeat's pair of runs gives one share, and the figure is their median.
        memory, snapshot = await end_to_end_tps(
            targets.managed,
            lambda: targets.managed(next(files)),
            tasks_per_run=scale.tasks_per_run,
            repeats=scale.repeats,
        )
        results["e2e"], results["e2e.snapshot"] = median(memory), median(snapshot)
        results[KEPT] = median([s / m for m, s in zip(memory, snapshot, strict=True)])
        (journal,) = await end_to_end_tps(
            lambda: targets.managed(next(files), journal=True),
            tasks_per_run=scale.tasks_per_run,
            repeats=scale.repeats,
        )
        results["e2e.journal"] = median(journal)
    results.update(await read_scenarios(scale.read_sizes, budget_s=scale.read_budget_s))
    if variant == "rust":
        # Both cores, in turns in this one process: see core_ops.
        from fastapi_taskflow import _core, _pycore

        rust, python = core_ops((_core.TaskStore, _pycore.TaskStore), runs=scale.repeats, budget_s=scale.read_budget_s)
        results.update(rust)
        results.update({PYTHON_CORE + key: value for key, value in python.items()})
    results.update(await observability_costs(calls=scale.add_task_calls // 5, repeats=scale.repeats))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("variant", choices=VARIANTS)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    args = parser.parse_args()
    scale = QUICK if args.quick else FULL
    facts = _core_facts(args.variant)
    results = asyncio.run(_run(args.variant, scale))
    meta = {"variant": args.variant, "python": platform.python_version(), **facts}
    print(json.dumps({"meta": meta, "results": results}))


if __name__ == "__main__":
    main()
