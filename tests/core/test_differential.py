"""Differential test: the Rust and the Python core, driven by the same operations, answer alike.

Ids are random and timestamps are real, so answers are compared after mapping each
task id to its creation index and dropping timestamps (keeping only whether each is set).
Runs only when both cores import; the per-core tests report a missing extension.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from _corehelpers import STATUSES, iso_to_us, load_core, loads, wait_for_next_microsecond
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

CORES: dict[str, ModuleType | None] = {name: load_core(name) for name in ("rust", "python")}
pytestmark = pytest.mark.skipif(
    any(module is None for module in CORES.values()), reason="needs both cores (the Rust one is not built)"
)

NAMES = ("alpha", "beta", "gamma")
RUN_KEYS = ("r1", "r2", "r3")
TIME_KEYS = ("created_at", "start_time", "end_time", "duration")
OUTCOME = tuple[str, Any]


def call(fn: Any, *args: Any, **kwargs: Any) -> OUTCOME:
    """("ok", result) or ("raised", exception type name)."""
    try:
        return "ok", fn(*args, **kwargs)
    except (KeyError, ValueError, RuntimeError) as exc:
        kind = "SnapshotError" if type(exc).__name__ == "SnapshotError" else type(exc).__name__
        return "raised", kind


class Differential(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="taskflow-diff-"))
        self.stores: dict[str, Any] = {}
        self.ids: dict[str, list[str]] = {"rust": [], "python": []}
        self.index: dict[str, dict[str, int]] = {"rust": {}, "python": {}}
        self.created_us: dict[str, list[int]] = {"rust": [], "python": []}
        self.options: dict[str, Any] = {}

    # -- plumbing -----------------------------------------------------------------------

    def open_stores(self) -> None:
        for name, module in CORES.items():
            assert module is not None
            db = str(self.tmp / f"{name}.db") if self.options["use_db"] else None
            self.stores[name] = module.TaskStore(
                db,
                max_history=self.options["max_history"],
                ring_capacity=self.options["ring_capacity"],
                max_log_lines=self.options["max_log_lines"],
            )

    def teardown(self) -> None:
        for store in self.stores.values():
            store.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def both(self, method: str, *args: Any, **kwargs: Any) -> dict[str, OUTCOME]:
        return {name: call(getattr(store, method), *args, **kwargs) for name, store in self.stores.items()}

    def norm_id(self, core: str, task_id: str) -> int | str:
        return self.index[core].get(task_id, f"unknown:{task_id}")

    def norm_task(self, core: str, task: dict[str, Any]) -> dict[str, Any]:
        out = dict(task)
        out["task_id"] = self.norm_id(core, task["task_id"])
        if task.get("retry_of") is not None:
            out["retry_of"] = self.norm_id(core, task["retry_of"])
        for key in TIME_KEYS:
            out[key] = task[key] is not None
        return out

    def norm_cursor(self, core: str, cursor: str | None) -> Any:
        if cursor is None:
            return None
        created, _, task_id = cursor.partition(":")
        index = self.index[core][task_id]
        assert int(created) == self.created_us[core][index]
        return index

    def norm_metrics(self, metrics: dict[str, Any]) -> dict[str, Any]:
        def scope(obj: dict[str, Any]) -> dict[str, Any]:
            out = dict(obj)
            for key in ("avg_duration_seconds", "p50_seconds", "p95_seconds", "p99_seconds"):
                out[key] = obj[key] is None or obj[key] >= 0
            out["has_durations"] = obj["p50_seconds"] is not None
            return out

        out = scope({k: v for k, v in metrics.items() if k not in ("by_name", "snapshot")})
        out["by_name"] = [(name, scope(value)) for name, value in metrics["by_name"].items()]
        health = metrics["snapshot"]
        if health is not None:  # the message and the time differ between cores; whether they are set does not
            health = {
                **health,
                "last_error": health["last_error"] is not None,
                "last_write_at": bool(health["last_write_at"]),
            }
        out["snapshot"] = health
        return out

    def norm_created(self, core: str, task_id: str, created: bool) -> tuple[int | str, bool]:
        """A ``(task_id, created)`` answer with the id normalised; a new id is remembered first."""
        if created:
            self.index[core][task_id] = len(self.ids[core])
            self.ids[core].append(task_id)
            record = self.stores[core].get(task_id)
            self.created_us[core].append(iso_to_us(record["created_at"]))
        return self.norm_id(core, task_id), created

    def pick(self, i: int) -> dict[str, str]:
        n = len(self.ids["rust"])
        return {core: self.ids[core][i % n] for core in self.stores}

    def same(self, results: dict[str, Any]) -> None:
        assert results["rust"] == results["python"], results

    # -- rules ---------------------------------------------------------------------------

    @initialize(
        use_db=st.booleans(),
        max_history=st.integers(1, 6),
        ring_capacity=st.integers(1, 24),
        max_log_lines=st.integers(1, 4),
    )
    def start(self, use_db: bool, max_history: int, ring_capacity: int, max_log_lines: int) -> None:
        self.options = {
            "use_db": use_db,
            "max_history": max_history,
            "ring_capacity": ring_capacity,
            "max_log_lines": max_log_lines,
        }
        self.open_stores()

    @rule(
        func_name=st.sampled_from(NAMES),
        key=st.none() | st.sampled_from(["k1", "k2"]),
        tags=st.dictionaries(st.sampled_from(["x", "y"]), st.text(max_size=3), max_size=2),
        priority=st.none() | st.integers(-3, 3),
        executor=st.none() | st.sampled_from(["thread", "async"]),
        args=st.none() | st.binary(max_size=4),
        encrypted=st.none() | st.binary(max_size=4),
        retry=st.none() | st.integers(0, 10_000),
        journal=st.booleans(),
    )
    def create(
        self,
        func_name: str,
        key: str | None,
        tags: dict[str, str],
        priority: int | None,
        executor: str | None,
        args: bytes | None,
        encrypted: bytes | None,
        retry: int | None,
        journal: bool,
    ) -> None:
        retry_of = self.pick(retry) if retry is not None and self.ids["rust"] else {}
        results = {
            core: call(
                store.create,
                func_name,
                tags=tags or None,
                idempotency_key=key,
                priority=priority,
                executor=executor,
                args_json=args,
                encrypted_payload=encrypted,
                retry_of=retry_of.get(core),
                journal=journal,
            )
            for core, store in self.stores.items()
        }
        normalised = {}
        for core, (kind, value) in results.items():
            assert kind == "ok", results
            normalised[core] = self.norm_created(core, *value)
        self.same(normalised)
        wait_for_next_microsecond()  # creation order is key order in both cores

    @rule(
        func_name=st.sampled_from(NAMES),
        queue=st.sampled_from(["default", "emails"]),
        executor=st.sampled_from(["thread", "async"]),
    )
    def create_plain(self, func_name: str, queue: str, executor: str) -> None:
        results = {core: call(store.create_plain, func_name, queue, executor) for core, store in self.stores.items()}
        normalised = {}
        for core, (kind, value) in results.items():
            assert kind == "ok", results
            normalised[core] = self.norm_created(core, value, True)
        self.same(normalised)
        wait_for_next_microsecond()

    @precondition(lambda self: self.ids["rust"])
    @rule(
        i=st.integers(0, 10_000),
        status=st.sampled_from([*STATUSES, "running", "running", "success", "bogus"]),
        error=st.none() | st.text(max_size=3),
        stacktrace=st.none() | st.just("Traceback"),
        retries=st.none() | st.integers(0, 3),
    )
    def transition(self, i: int, status: str, error: str | None, stacktrace: str | None, retries: int | None) -> None:
        ids = self.pick(i)
        self.same(
            {
                core: call(
                    self.stores[core].transition,
                    ids[core],
                    status,
                    error=error,
                    stacktrace=stacktrace,
                    retries_used=retries,
                )
                for core in self.stores
            }
        )
        wait_for_next_microsecond()  # end times in the same order in both cores (deletion by end time)

    @rule(status=st.sampled_from(STATUSES))
    def transition_unknown_id(self, status: str) -> None:
        self.same(self.both("transition", "00000000-0000-4000-8000-000000000000", status))

    @precondition(lambda self: self.ids["rust"])
    @rule(i=st.integers(0, 10_000), line=st.text(max_size=5))
    def append_log(self, i: int, line: str) -> None:
        ids = self.pick(i)
        self.same({core: call(self.stores[core].append_log, ids[core], line) for core in self.stores})

    @rule()
    def flush(self) -> None:
        self.same(self.both("flush"))

    @rule()
    def claim_orphans(self) -> None:
        self.same(
            {
                core: [self.norm_task(core, record) for record in store.claim_orphans()]
                for core, store in self.stores.items()
            }
        )

    @precondition(lambda self: self.ids["rust"])
    @rule(i=st.integers(0, 10_000))
    def delete(self, i: int) -> None:
        ids = self.pick(i)
        self.same({core: call(self.stores[core].delete, ids[core]) for core in self.stores})

    @rule(before=st.sampled_from(["nothing", "everything", "a record's end"]), i=st.integers(0, 10_000))
    def delete_finished_before(self, before: str, i: int) -> None:
        if before == "nothing":
            cutoffs = dict.fromkeys(self.stores, 0)
        elif before == "everything":
            wait_for_next_microsecond()
            cutoffs = dict.fromkeys(self.stores, time.time_ns() // 1000)
        else:
            if not self.ids["rust"]:
                return
            ids = self.pick(i)
            ends = {core: (self.stores[core].get(ids[core]) or {}).get("end_time") for core in self.stores}
            self.same({core: end is None for core, end in ends.items()})
            if ends["rust"] is None:
                return
            cutoffs = {core: iso_to_us(end) for core, end in ends.items()}
        self.same({core: call(store.delete_finished_before, cutoffs[core]) for core, store in self.stores.items()})

    @rule(
        run_key=st.sampled_from(RUN_KEYS),
        func_name=st.sampled_from(NAMES),
        fire_us=st.integers(-2, 2),
        key=st.none() | st.sampled_from(["k1", "k2"]),
        tags=st.dictionaries(st.sampled_from(["x", "y"]), st.text(max_size=3), max_size=2),
        priority=st.none() | st.integers(-3, 3),
        queue=st.sampled_from(["default", "q"]),
        args=st.none() | st.binary(max_size=4),
        encrypted=st.none() | st.binary(max_size=4),
    )
    def save_scheduled(
        self,
        run_key: str,
        func_name: str,
        fire_us: int,
        key: str | None,
        tags: dict[str, str],
        priority: int | None,
        queue: str,
        args: bytes | None,
        encrypted: bytes | None,
    ) -> None:
        self.same(
            self.both(
                "save_scheduled",
                run_key,
                func_name,
                fire_us,
                args_json=args,
                encrypted_payload=encrypted,
                queue=queue,
                priority=priority,
                idempotency_key=key,
                tags=tags or None,
            )
        )

    @rule(before=st.integers(-3, 3), limit=st.integers(-1, 4))
    def load_due(self, before: int, limit: int) -> None:
        results = {}
        for core, store in self.stores.items():
            kind, value = call(store.load_due, before, limit)
            if kind == "ok":  # the time of saving differs between the cores; it is set
                value = [{**entry, "created_us": entry["created_us"] > 0} for entry in value]
            results[core] = (kind, value)
        self.same(results)

    @rule(run_key=st.sampled_from(RUN_KEYS))
    def delete_scheduled(self, run_key: str) -> None:
        self.same(self.both("delete_scheduled", run_key))

    @rule(run_key=st.sampled_from(RUN_KEYS), executor=st.none() | st.just("thread"), journal=st.booleans())
    def fire_scheduled(self, run_key: str, executor: str | None, journal: bool) -> None:
        results = self.both("fire_scheduled", run_key, executor=executor, journal=journal)
        normalised = {}
        for core, (kind, value) in results.items():
            normalised[core] = (kind, value if kind != "ok" or value is None else self.norm_created(core, *value))
        self.same(normalised)
        wait_for_next_microsecond()  # creation order is key order in both cores

    @rule(key=st.sampled_from(["l1", "l2"]), ttl=st.sampled_from([60.0, 1e300, 0.0, -1.0, math.inf, math.nan]))
    def acquire_lock(self, key: str, ttl: float) -> None:
        self.same(self.both("acquire_lock", key, ttl))

    def norm_row(self, core: str, row: dict[str, Any]) -> dict[str, Any]:
        """A changed_rows() row with ids normalised, times reduced to whether they are set, and the owner to
        whether it is this store (an earlier store of the file has another instance id in each core)."""
        out = dict(row)
        out["task_id"] = self.norm_id(core, row["task_id"])
        if row["retry_of"] is not None:
            out["retry_of"] = self.norm_id(core, row["retry_of"])
        for key in ("created_us", "start_us", "end_us"):
            out[key] = row[key] is not None
        owner = row["owner"]
        out["owner"] = None if owner is None else owner == self.stores[core].instance_id
        return out

    @rule(after=st.integers(0, 8), limit=st.integers(0, 5))
    def changed_rows(self, after: int, limit: int) -> None:
        results = {}
        for core, store in self.stores.items():
            kind, value = call(store.changed_rows, after, limit)
            if kind == "ok":  # the same writes, numbered alike
                rows, last = value
                value = ([self.norm_row(core, row) for row in rows], last)
            results[core] = (kind, value)
        self.same(results)

    @rule(
        rows=st.lists(
            st.fixed_dictionaries(
                {
                    "task_id": st.uuids(version=4).map(str),
                    "func_name": st.sampled_from(NAMES),
                    "status": st.sampled_from(["pending", "running"]),
                    "retries_used": st.integers(0, 2),
                    "logs_json": st.sampled_from(["[]", '["a"]', '["a","b","c","d","e"]']),
                    "logs_dropped": st.integers(0, 2),
                    "tags_json": st.sampled_from(["{}", '{"x":"1"}']),
                    "priority": st.none() | st.integers(-3, 3),
                    "idempotency_key": st.none() | st.sampled_from(["k1", "k2"]),
                    "args_json": st.none() | st.binary(max_size=4),
                }
            ),
            max_size=3,
        ),
        existing=st.none() | st.integers(0, 10_000),
        spoil=st.sampled_from(
            [None, None, None, ("status", "success"), ("retries_used", -1), ("tags_json", '{"x":1}')]
        ),
    )
    def adopt(self, rows: list[dict[str, Any]], existing: int | None, spoil: tuple[str, Any] | None) -> None:
        now = time.time_ns() // 1000
        base = {
            "created_us": now,
            "start_us": None,
            "end_us": None,
            "error": None,
            "stacktrace": None,
            "source": "manual",
            "executor": None,
            "queue": "default",
            "kwargs_json": None,
            "encrypted_payload": None,
            "retry_of": None,
            "owner": "00000000-0000-4000-8000-0000000000dd",
        }
        per_core = {core: [{**base, **r, "created_us": now + i} for i, r in enumerate(rows)] for core in self.stores}
        if existing is not None and self.ids["rust"] and per_core["rust"]:
            for core, task_id in self.pick(existing).items():  # an id the store holds, or held: skipped
                per_core[core][0]["task_id"] = task_id
        if spoil is not None and rows:  # one bad row: nothing is adopted
            for core_rows in per_core.values():
                core_rows[-1][spoil[0]] = spoil[1]
        results = {}
        for core, store in self.stores.items():
            kind, value = call(store.adopt, per_core[core])
            if kind == "ok":
                value = [(self.norm_created(core, r["task_id"], True), self.norm_task(core, r)) for r in value]
            results[core] = (kind, value)
        self.same(results)
        while time.time_ns() // 1000 <= now + len(rows):  # records created later are newer in both cores
            pass

    @rule(key=st.sampled_from(["m1", "m2"]), value=st.none() | st.text(max_size=3))
    def metadata(self, key: str, value: str | None) -> None:
        if value is not None:
            self.same(self.both("save_metadata", key, value))
        self.same(self.both("load_metadata", key))

    @precondition(lambda self: self.options.get("use_db"))
    @rule()
    def restart(self) -> None:
        for store in self.stores.values():
            store.close()
        self.open_stores()

    @rule(
        status=st.none() | st.sampled_from(STATUSES),
        func_name=st.none() | st.sampled_from(NAMES),
        limit=st.integers(1, 4),
        anchor=st.none() | st.integers(0, 10_000),
    )
    def page(self, status: str | None, func_name: str | None, limit: int, anchor: int | None) -> None:
        cursors: dict[str, str | None] = {core: None for core in self.stores}
        if anchor is not None and self.ids["rust"]:
            n = len(self.ids["rust"])
            cursors = {core: f"{self.created_us[core][anchor % n]}:{self.ids[core][anchor % n]}" for core in cursors}
        for _ in range(200):
            pages = {}
            for core, store in self.stores.items():
                body, cursors[core] = store.page_json(
                    status=status, func_name=func_name, limit=limit, cursor=cursors[core]
                )
                pages[core] = (
                    [self.norm_task(core, r) for r in loads(body)],
                    self.norm_cursor(core, cursors[core]),
                )
            self.same(pages)
            if cursors["rust"] is None:
                return
        raise AssertionError("paging did not end")

    @rule(cursor=st.sampled_from(["", "x", "12", "a:b"]), limit=st.integers(-1, 0))
    def bad_page(self, cursor: str, limit: int) -> None:
        self.same(self.both("page_json", cursor=cursor))
        self.same(self.both("page_json", limit=limit))
        self.same(self.both("page_json", status="bogus"))

    @precondition(lambda self: self.ids["rust"])
    @rule(i=st.integers(0, 10_000))
    def get(self, i: int) -> None:
        ids = self.pick(i)
        records = {core: self.stores[core].get(ids[core]) for core in self.stores}
        as_json = {core: self.stores[core].get_json(ids[core]) for core in self.stores}
        normalised = {}
        for core in self.stores:
            record, data = records[core], as_json[core]
            assert (record is None) == (data is None)
            if record is not None:
                assert loads(data) == {k: v for k, v in record.items() if k in loads(data)}
                record = self.norm_task(core, record)
            normalised[core] = record
        self.same(normalised)

    @rule()
    def metrics(self) -> None:
        self.same({core: self.norm_metrics(loads(store.metrics_json())) for core, store in self.stores.items()})

    @rule(after=st.integers(0, 80), limit=st.integers(1, 30))
    def events(self, after: int, limit: int) -> None:
        results = {}
        for core, store in self.stores.items():
            events, missed = store.events_since(after, limit)
            normalised = []
            for seq, data in events:
                event = loads(data)
                assert event["seq"] == seq
                if event["type"] == "log":
                    event["task_id"] = self.norm_id(core, event["task_id"])
                else:
                    event["task"] = self.norm_task(core, event["task"])
                normalised.append(event)
            results[core] = (normalised, missed)
        self.same(results)

    @invariant()
    def sizes_agree(self) -> None:
        if self.stores:
            self.same({core: (store.memory_len(), store.last_seq) for core, store in self.stores.items()})


Differential.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestDifferential = Differential.TestCase
