"""metrics_prometheus(): OpenMetrics text that a real parser accepts, counts, buckets, queue depth."""

from __future__ import annotations

from typing import Any

from _corehelpers import FINISHED, StoreFactory, drive, insert_rows, load_core
from prometheus_client.openmetrics.parser import text_string_to_metric_families

BASE_US = 1_700_000_000_000_000


def parse(text: bytes) -> dict[str, Any]:
    assert text.endswith(b"# EOF\n")
    return {family.name: family for family in text_string_to_metric_families(text.decode())}


def values(family: Any, sample_name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(s.labels.items())): s.value for s in family.samples if s.name == sample_name}


def test_empty_store_has_every_family(make_store: StoreFactory) -> None:
    families = parse(make_store().metrics_prometheus())
    assert set(families) == {
        "taskflow_tasks_created",
        "taskflow_tasks_finished",
        "taskflow_tasks_live",
        "taskflow_task_duration_seconds",
        "taskflow_queue_depth",
    }
    assert families["taskflow_task_duration_seconds"].unit == "seconds"
    assert all(not f.samples for f in families.values())


def test_counts_per_name_and_status(make_store: StoreFactory) -> None:
    store = make_store()
    plan = {"a": ["success", "success", "failed", "pending", "running"], 'we"ird\\na\nme': ["cancelled", "pending"]}
    for name, statuses in plan.items():
        for status in statuses:
            task_id, _ = store.create(name, queue="q-" + name[:1])
            drive(store, task_id, status)
    families = parse(store.metrics_prometheus())
    created = values(families["taskflow_tasks_created"], "taskflow_tasks_created_total")
    assert created == {(("func_name", name),): len(statuses) for name, statuses in plan.items()}
    finished = values(families["taskflow_tasks_finished"], "taskflow_tasks_finished_total")
    live = values(families["taskflow_tasks_live"], "taskflow_tasks_live")
    for name, statuses in plan.items():
        for status in FINISHED:
            assert finished[(("func_name", name), ("status", status))] == statuses.count(status)
        for status in ("pending", "running"):
            assert live[(("func_name", name), ("status", status))] == statuses.count(status)
    depth = values(families["taskflow_queue_depth"], "taskflow_queue_depth")
    assert depth == {(("queue", "q-a"),): 1, (("queue", "q-w"),): 1}


def test_finished_counter_is_monotonic_under_retention(make_store: StoreFactory) -> None:
    store = make_store(max_history=2)
    for _ in range(5):
        task_id, _ = store.create("job")
        drive(store, task_id, "success")
    assert store.memory_len() == 2
    finished = values(parse(store.metrics_prometheus())["taskflow_tasks_finished"], "taskflow_tasks_finished_total")
    assert finished[(("func_name", "job"), ("status", "success"))] == 5


def test_queue_depth_follows_pending_moves(make_store: StoreFactory) -> None:
    store = make_store()
    ids = [store.create("job", queue=q)[0] for q in ("x", "x", "y")]

    def depth() -> dict[str, float]:
        family = parse(store.metrics_prometheus())["taskflow_queue_depth"]
        return {s.labels["queue"]: s.value for s in family.samples}

    assert depth() == {"x": 2, "y": 1}
    store.transition(ids[0], "running")
    store.transition(ids[2], "cancelled")
    assert depth() == {"x": 1, "y": 0}
    store.transition(ids[0], "pending")  # requeue
    assert depth() == {"x": 2, "y": 0}


def histogram_store(make_store: StoreFactory, db_path: str) -> Any:
    make_store(db_path).close()
    durations = [0, 1, 3, 40, 900, 25_000, 1_000_000, 3_000_000, 20_000_000_000]
    insert_rows(
        db_path,
        [
            {
                "task_id": f"t{i:05d}",
                "func_name": "slow" if i % 2 else "fast",
                "status": "success",
                "created_us": BASE_US + i,
                "start_us": BASE_US + i,
                "end_us": BASE_US + i + micros,
            }
            for i, micros in enumerate(durations)
        ],
    )
    return make_store(db_path)


def test_histogram_is_cumulative_and_consistent(make_store: StoreFactory, db_path: str) -> None:
    store = histogram_store(make_store, db_path)
    family = parse(store.metrics_prometheus())["taskflow_task_duration_seconds"]
    for name in ("fast", "slow"):
        samples = {s.name: s.value for s in family.samples if s.labels == {"func_name": name}}
        bucket_samples = [
            (float(s.labels["le"]), s.value)
            for s in family.samples
            if s.name.endswith("_bucket") and s.labels["func_name"] == name
        ]
        bounds = [b for b, _ in bucket_samples]
        assert bounds == sorted(bounds) and bounds[-1] == float("inf")
        assert len(bounds) == 22 and bounds[0] == 1e-06 and bounds[-2] == 10_000.0
        counts = [v for _, v in bucket_samples]
        assert counts == sorted(counts)
        assert counts[-1] == samples["taskflow_task_duration_seconds_count"]
    fast = [s for s in family.samples if s.labels.get("func_name") == "fast"]
    by_name = {s.name: s.value for s in fast if "le" not in s.labels}
    assert by_name["taskflow_task_duration_seconds_count"] == 5
    assert by_name["taskflow_task_duration_seconds_sum"] == (0 + 3 + 900 + 1_000_000 + 20_000_000_000) / 1e6
    le_one = next(s.value for s in fast if s.labels.get("le") == "1.0")
    assert le_one == 4


def test_both_cores_render_the_same_bytes(tmp_path: Any) -> None:
    texts = []
    for name in ("rust", "python"):
        module = load_core(name)
        assert module is not None
        path = str(tmp_path / f"{name}.db")
        module.TaskStore(path).close()
        insert_rows(
            path,
            [
                {
                    "task_id": f"t{i:05d}",
                    "func_name": ("a", 'b"\\\n', "c")[i % 3],
                    "status": FINISHED[i % 5],
                    "created_us": BASE_US + i,
                    "start_us": BASE_US + i,
                    "end_us": BASE_US + i + i * 7_919,
                }
                for i in range(60)
            ],
        )
        store = module.TaskStore(path)
        for queue in ("z", "y", "y"):
            store.create("a", queue=queue)
        texts.append(store.metrics_prometheus())
        store.close()
    assert texts[0] == texts[1]
    assert 'le="3.162277660168379e-06"' in texts[0].decode()
