"""Renders the workload results of every variant as side-by-side Markdown tables."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

#: Results of one variant, or None when its process failed.
Results = Mapping[str, float] | None

#: The share of in-memory end-to-end throughput kept with snapshot_db: the median of the
#: ratios of the runs made in turns, in memory and with the file.
KEPT = "e2e.snapshot.kept"


@dataclass(frozen=True)
class Row:
    label: str
    key: str
    #: "time": lower is better; "rate": higher is better.
    kind: str = "time"


@dataclass(frozen=True)
class Table:
    title: str
    rows: tuple[Row, ...]


def _number(value: float | None, kind: str) -> str:
    if value is None:
        return "n/a"
    if kind == "rate" or value >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def _speed(rust: float | None, other: float | None, kind: str) -> str:
    """How much faster (or slower) Rust is than ``other``."""
    if rust is None or other is None or rust <= 0 or other <= 0:
        return ""
    factor = other / rust if kind == "time" else rust / other
    return f"{factor:.1f}x faster" if factor >= 1 else f"{1 / factor:.1f}x slower"


def _sizes(results: Mapping[str, Results]) -> list[int]:
    keys = {key for values in results.values() if values for key in values}
    return sorted(int(key.split(".")[1]) for key in keys if key.startswith("fill."))


def tables(results: Mapping[str, Results]) -> list[Table]:
    sizes = _sizes(results)
    where = {"mem": "in memory", "disk": "snapshot_db, after flush"}
    reads = {
        what: tuple(
            Row(f"{n:,} tasks, {where[place]}: {layer}", f"{place}.{n}.{what}.{layer}")
            for n in sizes
            for place in ("mem", "disk")
            for layer in ("core", "route")
        )
        for what in ("metrics", "page")
    }
    return [
        Table(
            "1. `add_task(noop, 1, x=2)`, µs per call",
            (
                Row("`BackgroundTasks` (bare) / `ManagedBackgroundTasks`", "add_task"),
                Row("with snapshot_db, journal off (the default)", "add_task.snapshot"),
                Row("with the journal (`requeue_pending=True`: arguments serialised, row queued)", "add_task.journal"),
            ),
        ),
        Table(
            "2. End-to-end no-op async tasks (enqueue, `await tasks()`), tasks/s",
            (
                Row("in memory", "e2e", "rate"),
                Row("with snapshot_db (periodic writer running, final flush included)", "e2e.snapshot", "rate"),
                Row("with the journal (each task marked running on disk before it runs)", "e2e.journal", "rate"),
            ),
        ),
        Table(
            "3. `GET /tasks/metrics`, median µs (core: `metrics_json()`, route: ASGI call)",
            (Row("FastAPI route returning `{}` (the floor; Starlette column)", "route.empty"), *reads["metrics"]),
        ),
        Table("4. `GET /tasks?limit=100`, median µs (core: `page_json(limit=100)`, route: ASGI call)", reads["page"]),
        Table(
            "5. Store fill (create, running, finished: µs per task) and one flush of all of them (ms)",
            tuple(Row(f"fill {n:,}", f"fill.{n}") for n in sizes)
            + tuple(Row(f"flush {n:,}", f"flush.{n}") for n in sizes),
        ),
        Table(
            "6. Core operations on `TaskStore` alone (10,000 records), µs per call",
            tuple(Row(label, key) for key, label in CORE_OPS.items()),
        ),
        Table(
            "7. Observability, µs per call: enqueues (`add_task(noop, 1, x=2)`) and `task_log` inside a task",
            tuple(Row(label, key) for key, label in OBSERVABILITY.items()),
        ),
    ]


#: Keys and labels of the observability costs (scenario 7).
OBSERVABILITY = {
    "obs.plain": "plain enqueue",
    "obs.tags": "enqueue with `tags={...}` (2 tags)",
    "obs.encrypted": "enqueue with `encrypt_args_key` set (Fernet)",
    "obs.task_log": "`task_log(message, level=..., row=n)`, no observers",
}


#: Keys and labels of the core operations (scenario 6).
CORE_OPS = {
    "ops.create": "`create(name)`",
    "ops.transition": "`transition(id, status)` (running, then success)",
    "ops.metrics": "`metrics_json()`",
    "ops.page": "`page_json(limit=100)`, in memory",
    "ops.flush": "snapshot write: `flush()` of 10,000 records, per record",
    "ops.flush.grown": "snapshot write into a file of 100,000 records: `flush()` of 1,000, per record",
}


def core_ratios(results: Mapping[str, Results]) -> str:
    """One line: how many times faster the Rust core is than the Python core at each operation."""
    short = {"ops.create": "create", "ops.transition": "transition", "ops.metrics": "metrics read"}
    short |= {"ops.page": "page read", "ops.flush": "snapshot write"}
    parts = []
    for key, name in short.items():
        rust, python = _value(results.get("rust"), key), _value(results.get("python"), key)
        if rust and python:
            parts.append(f"{name} {python / rust:.1f}x")
    return "Core operations, Rust vs Python (times faster): " + (", ".join(parts) or "n/a") + "."


def _value(results: Results, key: str) -> float | None:
    return None if results is None else results.get(key)


def render_table(table: Table, results: Mapping[str, Results]) -> str:
    """One Markdown table; the Starlette columns appear only where a bare Starlette number exists."""
    variants = ("starlette", "rust", "python")
    values = {row.key: {v: _value(results.get(v), row.key) for v in variants} for row in table.rows}
    with_bare = any(v["starlette"] is not None for v in values.values())
    with_bare_ratio = any(v["starlette"] is not None and v["rust"] is not None for v in values.values())
    head = ["Workload", *(["Starlette"] if with_bare else []), "Rust", "Python", "Rust vs Python"]
    head += ["Rust vs Starlette"] if with_bare_ratio else []
    lines = [f"### {table.title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table.rows:
        bare, rust, python = values[row.key]["starlette"], values[row.key]["rust"], values[row.key]["python"]
        cells = [row.label, *([_number(bare, row.kind) if bare is not None else ""] if with_bare else [])]
        cells += [_number(rust, row.kind), _number(python, row.kind), _speed(rust, python, row.kind)]
        cells += [_speed(rust, bare, row.kind)] if with_bare_ratio else []
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def snapshot_kept(results: Mapping[str, Results]) -> str:
    """The share of in-memory end-to-end throughput each core keeps with a snapshot file."""
    parts = []
    for variant in ("rust", "python"):
        if (kept := _value(results.get(variant), KEPT)) is not None:
            parts.append(f"{variant.capitalize()} {100 * kept:.0f}%")
    return (
        "Throughput kept with snapshot_db on (median over the repeats of the ratio of a repeat's two runs): "
        + (", ".join(parts) or "n/a")
        + "."
    )


def render(results: Mapping[str, Results], machine: str) -> str:
    blocks = [machine]
    for table in tables(results):
        blocks.append(render_table(table, results))
        if table.title.startswith("2."):
            blocks.append(snapshot_kept(results))
        if table.title.startswith("6."):
            blocks.append(core_ratios(results))
    return "\n\n".join(blocks) + "\n"
