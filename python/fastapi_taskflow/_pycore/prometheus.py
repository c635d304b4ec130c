"""OpenMetrics 1.0 text of the incremental metrics, O(task names + queues) per read.

Twin of ``prometheus.rs`` in the Rust core: the same state renders to the same bytes.
Floats are written with ``repr``, which is also the canonical form OpenMetrics parsers
require for ``le`` labels.
"""

from __future__ import annotations

from typing import Final

from .metrics import BOUNDS, Aggregate
from .statuses import FINISHED, STATUSES

#: Every BUCKET_STEP-th internal histogram bound is exported (10 ** (k / 20) with k a multiple
#: of 10: two buckets per decade). Twin: ``BUCKET_STEP`` in ``prometheus.rs``.
BUCKET_STEP: Final[int] = 10
_LIVE: Final[tuple[str, ...]] = STATUSES[:2]
_LE: Final[list[tuple[int, str]]] = [(i, repr(b)) for i, b in enumerate(BOUNDS) if i % BUCKET_STEP == 0]


def _label(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _family(out: list[str], name: str, kind: str, help_text: str, unit: str | None = None) -> None:
    out.append(f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n")
    if unit is not None:
        out.append(f"# UNIT {name} {unit}\n")


def render(
    groups: list[tuple[str, Aggregate]], queues: list[tuple[str, int]], health: tuple[bool, int, int] | None
) -> bytes:
    """The exposition of per-name groups (sorted by name), pending depth per queue (sorted) and,
    with a snapshot file, its health as ``(ok, unwritten, failed_writes)``."""
    out: list[str] = []
    labelled = [(_label(name), agg) for name, agg in groups]
    _family(out, "taskflow_tasks_created", "counter", "Tasks created, by function name.")
    for name, agg in labelled:
        out.append(f"taskflow_tasks_created_total{{func_name={name}}} {agg.total}\n")
    _family(out, "taskflow_tasks_finished", "counter", "Tasks that reached a finished status.")
    for name, agg in labelled:
        for status in FINISHED:
            out.append(f'taskflow_tasks_finished_total{{func_name={name},status="{status}"}} {agg.counts[status]}\n')
    _family(out, "taskflow_tasks_live", "gauge", "Tasks pending or running now.")
    for name, agg in labelled:
        for status in _LIVE:
            out.append(f'taskflow_tasks_live{{func_name={name},status="{status}"}} {agg.counts[status]}\n')
    metric = "taskflow_task_duration_seconds"
    _family(out, metric, "histogram", "Run time of finished tasks.", "seconds")
    for name, agg in labelled:
        buckets = agg.hist.buckets
        cumulative = 0
        start = 0
        for i, le in _LE:
            cumulative += sum(buckets[start : i + 1])
            start = i + 1
            out.append(f'{metric}_bucket{{func_name={name},le="{le}"}} {cumulative}\n')
        count = agg.hist.count
        out.append(f'{metric}_bucket{{func_name={name},le="+Inf"}} {count}\n')
        out.append(f"{metric}_count{{func_name={name}}} {count}\n")
        out.append(f"{metric}_sum{{func_name={name}}} {agg.hist.total!r}\n")
    _family(out, "taskflow_queue_depth", "gauge", "Pending tasks per queue.")
    for queue, depth in queues:
        out.append(f"taskflow_queue_depth{{queue={_label(queue)}}} {depth}\n")
    if health is not None:
        ok, unwritten, failed_writes = health
        _family(out, "taskflow_snapshot_ok", "gauge", "Whether the last snapshot write succeeded (1) or failed (0).")
        out.append(f"taskflow_snapshot_ok {int(ok)}\n")
        _family(out, "taskflow_snapshot_unwritten", "gauge", "Records waiting to be written to the snapshot file.")
        out.append(f"taskflow_snapshot_unwritten {unwritten}\n")
        _family(
            out,
            "taskflow_snapshot_failed_writes",
            "counter",
            "Snapshot writes that failed since the file was opened.",
        )
        out.append(f"taskflow_snapshot_failed_writes_total {failed_writes}\n")
    out.append("# EOF\n")
    return "".join(out).encode()
