"""``make compare``: this package against the published pure-Python ``fastapi-taskflow`` 0.12.1.

Creates (once) a separate venv, ``.venv-upstream``, with ``fastapi-taskflow==0.12.1`` and the
same FastAPI, Starlette, Pydantic and uvicorn versions as this venv, then runs one workload
script (``benches/upstream/workload.py``, written against the shared public API) in four ways:

* **floor**: Starlette's/FastAPI's own ``BackgroundTasks``, no ``fastapi_taskflow`` at all;
* **0.12.1**: in ``.venv-upstream``;
* **Python core**: this package with ``FASTAPI_TASKFLOW_CORE=python``;
* **Rust core**: this package with its compiled core.

It prints one side-by-side table with ratios and writes it to ``benches/compare.md``, plus
``benches/compare.png`` when matplotlib is importable. Every workload runs in a process of
its own, bounded in time; a figure that did not finish in time reads ``n/a (>Ns)``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from compare import KEPT
from machine import commit, describe

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORKDIR = HERE / "upstream"
WORKLOAD = WORKDIR / "workload.py"
CLIENT = WORKDIR / "http_client.py"
UPSTREAM_VENV = Path(os.environ.get("UPSTREAM_VENV", ROOT / ".venv-upstream"))
UPSTREAM_REQUIREMENT = "fastapi-taskflow==0.12.1"
#: Installed in the upstream venv at the versions this venv has, so only the package differs.
SHARED_DEPENDENCIES = ("fastapi", "starlette", "pydantic", "pydantic-core", "uvicorn", "python-multipart")
MARKDOWN = HERE / "compare.md"
CHART = HERE / "compare.png"

FLOOR, UPSTREAM, PYCORE, RUST = "floor", "upstream", "python", "rust"
VARIANTS = (FLOOR, UPSTREAM, PYCORE, RUST)
HEADINGS = {
    FLOOR: "Starlette / FastAPI (floor)",
    UPSTREAM: "fastapi-taskflow 0.12.1",
    PYCORE: "ours, Python core",
    RUST: "ours, Rust core",
}


@dataclass(frozen=True)
class Scale:
    add_task_calls: int = 10_000
    add_task_rounds: int = 2
    e2e_tasks: int = 5_000
    e2e_rounds: int = 2
    e2e_snapshot_budget_s: float = 20.0
    #: An even number, so the order that reverses every round (run_all) gives each variant every place
    #: equally often; more, shorter rounds than 5 of 2 s for about the same time (~2.3 s of each
    #: server's start, warm-up and stop come on top of the window).
    http_rounds: int = 6
    http_seconds: float = 1.5
    read_sizes: tuple[int, ...] = (1_000, 100_000, 1_000_000)
    read_budget_s: float = 1.0
    #: Longest a single read figure may take (the slowest: 0.12.1's ``GET /tasks`` at 1M).
    read_cap_s: float = 30.0
    #: Longest one read process may take, fill included, per million tasks in the store.
    read_timeout_per_million_s: float = 150.0
    memory_tasks: int = 25_000
    memory_chunks: int = 3


FULL = Scale()
QUICK = Scale(
    add_task_calls=2_000,
    add_task_rounds=1,
    e2e_tasks=1_000,
    e2e_rounds=1,
    e2e_snapshot_budget_s=3.0,
    http_rounds=1,
    http_seconds=1.0,
    read_sizes=(1_000, 10_000),
    read_budget_s=0.2,
    read_cap_s=5.0,
    memory_tasks=2_000,
    memory_chunks=1,
)


@dataclass
class Results:
    """Every sample per variant and key; ``timeouts`` holds the limit a figure did not finish within."""

    samples: dict[str, dict[str, list[float]]] = field(default_factory=lambda: {v: {} for v in VARIANTS})
    calls: dict[str, dict[str, int]] = field(default_factory=lambda: {v: {} for v in VARIANTS})
    timeouts: dict[str, dict[str, float]] = field(default_factory=lambda: {v: {} for v in VARIANTS})
    failures: list[str] = field(default_factory=list)
    meta: dict[str, dict[str, str]] = field(default_factory=dict)

    def add(self, variant: str, key: str, values: list[float], calls: int | None = None) -> None:
        self.samples[variant].setdefault(key, []).extend(values)
        if calls is not None:
            self.calls[variant][key] = calls

    def value(self, variant: str, key: str) -> float | None:
        values = self.samples[variant].get(key)
        return statistics.median(values) if values else None


# -- the venvs ------------------------------------------------------------------------------------


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def ensure_upstream_venv() -> Path:
    """The upstream venv's Python, creating or updating the venv when its pins changed."""
    pins = [UPSTREAM_REQUIREMENT]
    for name in SHARED_DEPENDENCIES:
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pins.append(name)
    python = venv_python(UPSTREAM_VENV)
    stamp = UPSTREAM_VENV / ".compare-pins"
    if python.exists() and stamp.exists() and stamp.read_text() == "\n".join(pins):
        return python
    print(f"compare: installing {' '.join(pins)} into {UPSTREAM_VENV}", file=sys.stderr)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(UPSTREAM_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *pins], check=True)
    stamp.write_text("\n".join(pins))
    return python


@dataclass(frozen=True)
class Variant:
    name: str
    python: str
    env: dict[str, str]
    args: tuple[str, ...]


def variants(upstream_python: Path) -> dict[str, Variant]:
    base = {k: v for k, v in os.environ.items() if k != "FASTAPI_TASKFLOW_CORE"}
    base["PYTHONDONTWRITEBYTECODE"] = "1"
    return {
        FLOOR: Variant(FLOOR, sys.executable, base, ("--bare",)),
        UPSTREAM: Variant(UPSTREAM, str(upstream_python), base, ("--expect", UPSTREAM)),
        PYCORE: Variant(PYCORE, sys.executable, {**base, "FASTAPI_TASKFLOW_CORE": "python"}, ("--expect", PYCORE)),
        RUST: Variant(RUST, sys.executable, {**base, "FASTAPI_TASKFLOW_CORE": "rust"}, ("--expect", RUST)),
    }


# -- running the workload -------------------------------------------------------------------------


def run_workload(results: Results, variant: Variant, args: list[str], *, timeout: float, expected: list[str]) -> None:
    """Run one workload process and file its JSON lines; keys in ``expected`` it never printed time out."""
    command = [variant.python, str(WORKLOAD), *args, *variant.args]
    started = time.monotonic()
    process = subprocess.Popen(
        command, cwd=WORKDIR, env=variant.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    timed_out = False
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        timed_out = True
    seen = set()
    for line in out.splitlines():
        record = json.loads(line)
        key = record.pop("key")
        seen.add(key)
        if key == "meta":
            results.meta[variant.name] = record
        elif "runs" in record:
            results.add(variant.name, key, record["runs"])
        else:
            results.add(variant.name, key, [record["value"]], record.get("calls"))
    if not timed_out and process.returncode != 0:
        results.failures.append(f"{variant.name} {' '.join(args)}: exit {process.returncode}: {err.strip()[-500:]}")
    for key in expected:
        if key not in seen and timed_out:
            results.timeouts[variant.name][key] = timeout
    took = time.monotonic() - started
    print(
        f"compare: {variant.name:8} {' '.join(args):40} {took:6.1f} s{' (time limit)' if timed_out else ''}",
        file=sys.stderr,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_up(port: int, server: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"uvicorn exited with code {server.returncode}")
        try:
            request = urllib.request.Request(f"http://127.0.0.1:{port}/enqueue", method="POST")
            with urllib.request.urlopen(request, timeout=2):
                return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
    raise RuntimeError(f"uvicorn did not answer on port {port} within {timeout:.0f} s")


def run_http(results: Results, variant: Variant, seconds: float) -> None:
    """One window of ``POST /enqueue`` requests/s against a fresh uvicorn serving ``http_app.py``."""
    port = free_port()
    env = {**variant.env, "COMPARE_HTTP_APP": "bare" if variant.name == FLOOR else "managed"}
    server = subprocess.Popen(
        [variant.python, "-m", "uvicorn", "http_app:app", "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "warning", "--no-access-log"],
        cwd=WORKDIR, env=env,
    )  # fmt: skip
    try:
        wait_until_up(port, server)
        client = subprocess.run(
            [sys.executable, str(CLIENT), "--port", str(port), "--duration", str(seconds)],
            capture_output=True, text=True, timeout=seconds + 60,
        )  # fmt: skip
        if client.returncode != 0:
            results.failures.append(f"{variant.name} http client: {client.stderr.strip()[-500:]}")
            return
        answer = json.loads(client.stdout)
        if answer["errors"]:
            results.failures.append(f"{variant.name} http: {answer['errors']} non-200 answers")
        results.add(variant.name, "http", [answer["rps"]])
        print(f"compare: {variant.name:8} http {answer['rps']:,.0f} requests/s", file=sys.stderr)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        results.failures.append(f"{variant.name} http: {exc}")
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def run_all(scale: Scale, only: set[str] | None) -> Results:
    results = Results()
    every = variants(ensure_upstream_venv())
    managed = [every[UPSTREAM], every[PYCORE], every[RUST]]
    for variant in managed:
        run_workload(results, variant, ["meta"], timeout=60, expected=[])

    def wanted(name: str) -> bool:
        return only is None or name in only

    if wanted("add_task"):
        for _ in range(scale.add_task_rounds):
            for variant in every.values():
                args = ["add_task", "--n", str(scale.add_task_calls), "--repeats", "5"]
                run_workload(results, variant, args, timeout=120, expected=["add_task"])
    if wanted("e2e"):
        # A package's process takes turns with and without snapshot_db, run by run: the share
        # kept compares runs made under the same load of the shared machine, in one process.
        for _ in range(scale.e2e_rounds):
            args = ["e2e", "--n", str(scale.e2e_tasks), "--repeats", "5", "--budget", "30"]
            run_workload(results, every[FLOOR], args, timeout=120, expected=["e2e"])
            for variant in managed:
                args = ["e2e", "--snapshot", "--n", str(scale.e2e_tasks), "--repeats", "5"]
                args += ["--budget", str(scale.e2e_snapshot_budget_s)]
                timeout = scale.e2e_snapshot_budget_s * 4
                run_workload(results, variant, args, timeout=timeout, expected=["e2e", "e2e.snapshot", KEPT])
    if wanted("http"):
        # The target compares the Rust core with the floor, so every round runs those two back to
        # back: a slow spell of the shared machine lands on both. The order reverses from one round
        # to the next (ABBA), so slow drift, or whatever one server leaves behind for the next, favours
        # neither, and with an even number of rounds every variant holds each place as often.
        order = [every[FLOOR], every[RUST], every[PYCORE], every[UPSTREAM]]
        for round_ in range(scale.http_rounds):
            turn = order if round_ % 2 == 0 else order[::-1]
            print(f"compare: http round {round_ + 1}/{scale.http_rounds}", file=sys.stderr)
            for variant in turn:
                run_http(results, variant, scale.http_seconds)
    if wanted("reads"):
        budget = ["--budget", str(scale.read_budget_s), "--hard-cap", str(scale.read_cap_s)]
        run_workload(results, every[FLOOR], ["reads", *budget], timeout=60, expected=["route.empty"])
        for n in scale.read_sizes:
            timeout = 60 + scale.read_timeout_per_million_s * n / 1e6
            keys = [f"{what}.{n}" for what in ("fill", "metrics", "idem", "tasks")]
            for variant in managed:
                run_workload(results, variant, ["reads", "--n", str(n), *budget], timeout=timeout, expected=keys)
    if wanted("memory"):
        for keep in (True, False):
            for variant in managed:
                key = "memory.kept" if keep else "memory.default"
                if variant.name == UPSTREAM and not keep:
                    # 0.12.1 has no bound to leave at its default: it keeps every task either way.
                    results.add(UPSTREAM, key, results.samples[UPSTREAM].get("memory.kept", []))
                    continue
                args = ["memory", "--n", str(scale.memory_tasks), "--chunks", str(scale.memory_chunks)]
                args += ["--keep"] if keep else []
                run_workload(results, variant, args, timeout=300, expected=[key])
    return results


# -- the table ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    label: str
    key: str
    unit: str
    #: "time": lower is better (also bytes); "rate": higher is better.
    kind: str = "time"
    #: (text, verdict) for the issue-8 target of this row, given the results.
    target: Callable[[Results], tuple[str, bool | None]] | None = None


def faster(results: Results, key: str, kind: str, ours: str, other: str) -> float | None:
    """How many times better ``ours`` is than ``other`` on ``key`` (>1: better)."""
    a, b = results.value(ours, key), results.value(other, key)
    if a is None or b is None or a <= 0 or b <= 0:
        return None
    return b / a if kind == "time" else a / b


def ratio_text(factor: float | None, kind: str = "time") -> str:
    if factor is None:
        return ""
    better, worse = ("smaller", "larger") if kind == "bytes" else ("faster", "slower")
    shown = factor if factor >= 1 else 1 / factor
    text = f"{shown:,.0f}x" if shown >= 100 else f"{shown:.1f}x"
    return f"{text} {better if factor >= 1 else worse}"


def target_vs(
    key: str, kind: str, other: str, at_least: float, what: str
) -> Callable[[Results], tuple[str, bool | None]]:
    def check(results: Results) -> tuple[str, bool | None]:
        factor = faster(results, key, kind, RUST, other)
        return f"≥{at_least:g}x {what}", None if factor is None else factor >= at_least

    return check


def target_add_task(results: Results) -> tuple[str, bool | None]:
    floor = faster(results, "add_task", "time", RUST, FLOOR)
    upstream = faster(results, "add_task", "time", RUST, UPSTREAM)
    ok = None if floor is None or upstream is None else floor >= 0.5 and upstream >= 8
    return "within 2x of floor, ≥8x vs 0.12.1", ok


def target_kept(results: Results) -> tuple[str, bool | None]:
    """The median over every repeat of the ratio of its run with snapshot_db to its run in memory."""
    kept = results.value(RUST, KEPT)
    if kept is None:
        return "keeps ≥80% of in-memory", None
    return f"keeps ≥80% of in-memory (keeps {100 * kept:.0f}%)", kept >= 0.8


def flat_check(
    prefix: str, n: int, sizes: tuple[int, ...], vs_upstream: bool
) -> Callable[[Results], tuple[str, bool | None]]:
    """Targets of a read row: ≥300x vs 0.12.1 at 100k; flat (within 1.5x of the smallest size) elsewhere."""

    def check(results: Results) -> tuple[str, bool | None]:
        parts, verdicts = [], []
        if vs_upstream:
            factor = faster(results, f"{prefix}.{n}", "time", RUST, UPSTREAM)
            parts.append("≥300x vs 0.12.1")
            verdicts.append(None if factor is None else factor >= 300)
        if n != sizes[0]:
            base, here = results.value(RUST, f"{prefix}.{sizes[0]}"), results.value(RUST, f"{prefix}.{n}")
            growth = here / base if base and here else None
            parts.append(f"flat vs {sizes[0]:,} (≤1.5x{'' if growth is None else f'; is {growth:.2f}x'})")
            verdicts.append(None if growth is None else growth <= 1.5)
        if not parts:
            return "", None
        known = [v for v in verdicts if v is not None]
        verdict = None if len(known) < len(verdicts) else all(known)
        return ", ".join(parts), verdict

    return check


def target_memory(results: Results) -> tuple[str, bool | None]:
    value = results.value(RUST, "memory.kept")
    return "< 200 B", None if value is None else value < 200


def rows(sizes: tuple[int, ...]) -> list[Row]:
    out = [
        Row("`add_task(noop, 1, x=2)`", "add_task", "µs", target=target_add_task),
        Row("end-to-end no-op async tasks, in memory", "e2e", "tasks/s", "rate",
            target=target_vs("e2e", "rate", UPSTREAM, 8, "vs 0.12.1")),
        Row("end-to-end, with snapshot_db (final write included)", "e2e.snapshot", "tasks/s", "rate",
            target=target_kept),
        Row("HTTP `POST /enqueue` through uvicorn", "http", "requests/s", "rate",
            target=lambda r: ("≥90% of bare FastAPI", None if (f := faster(r, "http", "rate", RUST, FLOOR)) is None
                              else f >= 0.9)),
        Row("FastAPI route returning `{}` (floor of every route below)", "route.empty", "µs"),
    ]  # fmt: skip
    for prefix, label in (("metrics", "`GET /tasks/metrics`"), ("tasks", "`GET /tasks`")):
        for n in sizes:
            out.append(Row(f"{label}, {n:,} finished tasks", f"{prefix}.{n}", "µs",
                           target=flat_check(prefix, n, sizes, vs_upstream=n == 100_000)))  # fmt: skip
    for n in sizes:
        out.append(Row(f"`add_task` with a new idempotency key, {n:,} in history", f"idem.{n}", "µs",
                       target=flat_check("idem", n, sizes, vs_upstream=False)))  # fmt: skip
    out += [
        Row("memory per finished task, all kept in memory", "memory.kept", "bytes", "bytes", target=target_memory),
        Row("memory per finished task, default settings", "memory.default", "bytes", "bytes"),
    ]
    return out


def cell(results: Results, variant: str, key: str, kind: str) -> str:
    value = results.value(variant, key)
    if value is None:
        limit = results.timeouts[variant].get(key)
        return f"n/a (>{limit:.0f}s)" if limit is not None else ""
    if kind == "bytes" and value < 5:
        return "≈0 (bounded)"  # RSS noise around nothing: the finished tasks left memory
    text = f"{value:,.0f}" if kind == "rate" or value >= 100 else f"{value:.2f}" if value < 10 else f"{value:.1f}"
    calls = results.calls[variant].get(key)
    return f"{text} ({calls} call{'s' if calls > 1 else ''})" if calls is not None and calls < 5 else text


def render_table(results: Results, sizes: tuple[int, ...]) -> str:
    head = ["Scenario", "unit", *(HEADINGS[v] for v in VARIANTS)]
    head += ["Rust vs 0.12.1", "Rust vs Python core", "Rust vs floor", "issue-8 target", "met"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows(sizes):
        if all(results.value(v, row.key) is None and row.key not in results.timeouts[v] for v in VARIANTS):
            continue  # not run (--only)
        ratio_kind = "time" if row.kind == "bytes" else row.kind
        cells = [row.label, row.unit, *(cell(results, v, row.key, row.kind) for v in VARIANTS)]
        near_zero = row.kind == "bytes" and (results.value(RUST, row.key) or 0.0) < 5
        cells += [
            "" if near_zero else ratio_text(faster(results, row.key, ratio_kind, RUST, other), row.kind)
            for other in (UPSTREAM, PYCORE, FLOOR)
        ]
        text, verdict = row.target(results) if row.target else ("", None)
        cells += [text, {True: "yes", False: "**no**", None: "n/a" if text else ""}[verdict]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


METHOD = """\
Method. Every variant runs the same script, `benches/upstream/workload.py`, each scenario in a
process of its own; where a scenario has rounds, the variants alternate between rounds and the
figure is the median of all runs of all rounds (the machine is shared and noisy: expect ±30%;
ratios measured in one run are what to quote).
`add_task`: mean µs over {add_task_calls:,} calls (a fresh tasks object every 1,000 calls, each batch then
run untimed), 5 runs per process, {add_task_rounds} rounds.
End-to-end: {e2e_tasks:,} no-op async tasks added to one tasks object, `await tasks()`, then
`await manager.shutdown()` (inside the timing: it holds the final snapshot write); `startup()` runs
before the clock starts and, with `snapshot_db`, starts 0.12.1's snapshot scheduler and our
snapshot writer (`snapshot_interval=1.0` for both); 5 runs per process, {e2e_rounds} rounds; a process of
0.12.1 or of ours takes turns in memory and with `snapshot_db` (at least 3 of each, fewer than 5 when they
take long), the order reversing every repeat; the share kept is the median, over every repeat of every
round, of the ratio of the repeat's two runs.
HTTP: uvicorn (1 worker, no access log) serving `benches/upstream/http_app.py`; a client process sends
`POST /enqueue` over 8 keep-alive connections on 127.0.0.1 for 1 s of warm-up, then counts answers for
{http_seconds:g} s; a fresh server per variant and round, {http_rounds} rounds, the figure the median of
the rounds. Every round runs the floor and the Rust core back to back, in an order that reverses
from one round to the next (floor, Rust core, Python core, 0.12.1; then 0.12.1, Python core, Rust core, floor), so
the ≥90% target compares runs made under the same load and slow drift favours neither. The route
is the quick start's: a plain `BackgroundTasks` parameter, FastAPI's own for the floor, made a
`ManagedBackgroundTasks` by `TaskAdmin(app, task_manager, auto_install=True)` for the others (no
snapshot file).
Reads: the store is filled with N finished tasks (4 names, 1 in 10 failed, each with an idempotency
key) through the adapter below, then each route is called as an ASGI app directly (no socket): median
µs over {read_budget_s:g} s of calls (at least 5), or over at most 3 calls when one call takes over a fifth of
that, within {read_cap_s:g} s per figure. `GET /tasks` is sent without parameters: 0.12.1 answers with every
task, ours with the newest page (1,000 tasks by default). The idempotency row times `add_task` with a
key that no task holds yet, on the filled store.
Memory: RSS growth per task over {memory_chunks} chunks of {memory_tasks:,} no-op tasks run through `add_task`
and `await tasks()` (after 25,000 warm-up tasks, which fill our bounded event ring), median of the chunks;
"all kept" gives ours
`max_history` above the total, "default settings" leaves ours at `max_history=10000` (finished
tasks beyond it leave memory); 0.12.1 has no such bound and keeps every task, so its one figure
is shown in both rows.
"""

ADAPTERS = """\
Adapters (`benches/upstream/adapters.py`), the only code that is not the shared public API:
(1) ours is given `TaskManager(max_history=N)` where a scenario keeps N finished tasks in memory,
an argument 0.12.1 does not have (it keeps every task anyway); (2) the read scenarios fill the store
below the public API, 0.12.1 through `task_manager.store.restore(TaskRecord(...))` (its snapshot
loader's path), ours through `task_manager.core.create`/`transition` (the task runner's path),
because 1M tasks through `add_task` take minutes on 0.12.1.
"""


def render(results: Results, scale: Scale, elapsed_s: float, quick: bool) -> str:
    packages = sorted({m["distribution"] for m in results.meta.values()})
    fastapi = next(iter(results.meta.values()), {}).get("fastapi", "?")
    blocks = [
        f"## fastapi-taskflow-rs vs fastapi-taskflow 0.12.1 ({datetime.date.today().isoformat()}, {commit()})",
        f"Machine: {describe()}. Packages: {', '.join(packages)}; FastAPI {fastapi} in both venvs. "
        f"The run took {elapsed_s / 60:.1f} min{' (--quick: smaller sizes than stated)' if quick else ''}.",
        render_table(results, scale.read_sizes),
        METHOD.format(**scale.__dict__).replace("\n", " ").strip(),
        ADAPTERS.replace("\n", " ").strip(),
    ]
    if results.failures:
        blocks.append("Failures:\n\n" + "\n".join(f"- {failure}" for failure in results.failures))
    return "\n\n".join(blocks) + "\n"


def chart(results: Results, scale: Scale, path: Path) -> bool:
    """Speed-up over 0.12.1 of both our cores, per scenario, as a PNG; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    labels, py, rs = [], [], []
    for row in rows(scale.read_sizes):
        kind = "time" if row.kind == "bytes" else row.kind
        r = faster(results, row.key, kind, RUST, UPSTREAM)
        if r is None or row.key == "memory.default":  # ours is ~0 there (bounded): no meaningful ratio
            continue
        labels.append(row.label.replace("`", ""))
        rs.append(r)
        py.append(faster(results, row.key, kind, PYCORE, UPSTREAM) or 0.0)
    if not labels:
        return False
    fig, ax = plt.subplots(figsize=(11, 0.45 * len(labels) + 1.8))
    ys = range(len(labels))
    ax.barh([y + 0.2 for y in ys], rs, height=0.4, label=HEADINGS[RUST], color="#b7410e")
    ax.barh([y - 0.2 for y in ys], py, height=0.4, label=HEADINGS[PYCORE], color="#3776ab")
    for y, value in zip(ys, rs, strict=True):
        ax.text(value * 1.1, y + 0.2, f"{value:,.0f}x" if value >= 100 else f"{value:.1f}x", va="center", fontsize=7)
    ax.set_yticks(list(ys), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlim(right=max(rs + py) * 10)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("times better than fastapi-taskflow 0.12.1 (log scale; memory: times smaller)")
    ax.set_title(f"fastapi-taskflow-rs vs fastapi-taskflow 0.12.1 ({describe()})", fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke test; compare.md is kept")
    parser.add_argument("--only", nargs="+", choices=["add_task", "e2e", "http", "reads", "memory"])
    options = parser.parse_args()
    scale = QUICK if options.quick else FULL
    started = time.monotonic()
    results = run_all(scale, set(options.only) if options.only else None)
    report = render(results, scale, time.monotonic() - started, options.quick)
    print(report)
    if options.quick or options.only:
        return
    MARKDOWN.write_text(report)
    made_chart = chart(results, scale, CHART)
    print(f"compare: wrote {MARKDOWN.relative_to(ROOT)}" + (f" and {CHART.relative_to(ROOT)}" if made_chart else
          " (no chart: matplotlib is not installed)"), file=sys.stderr)  # fmt: skip
    if results.failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
