"""The snapshot's health in the metrics: failed flushes show, and clear once a flush succeeds again."""

from __future__ import annotations

import time
from types import ModuleType
from typing import Any

import pytest
from _corehelpers import StoreFactory, drive, iso_to_us, loads, run_sql
from prometheus_client.openmetrics.parser import text_string_to_metric_families

HEALTH_KEYS = ["ok", "unwritten", "failed_writes", "last_error", "last_write_at"]


def health(store: Any) -> dict[str, Any]:
    metrics = loads(store.metrics_json())
    assert list(metrics)[-1] == "snapshot"
    snapshot: dict[str, Any] = metrics["snapshot"]
    assert list(snapshot) == HEALTH_KEYS
    return snapshot


def health_families(store: Any) -> str:
    """The snapshot families of the OpenMetrics text (which a real parser accepts), up to ``# EOF``."""
    text = store.metrics_prometheus().decode()
    assert {f.name for f in text_string_to_metric_families(text)} >= {
        "taskflow_snapshot_ok",
        "taskflow_snapshot_unwritten",
        "taskflow_snapshot_failed_writes",
    }
    return text[text.index("# HELP taskflow_snapshot_ok") :]


def test_no_health_without_a_file(make_store: StoreFactory) -> None:
    store = make_store()
    assert loads(store.metrics_json())["snapshot"] is None
    assert b"taskflow_snapshot" not in store.metrics_prometheus()


def test_fresh_file_is_healthy(make_store: StoreFactory, db_path: str) -> None:
    store = make_store(db_path)
    assert health(store) == {"ok": True, "unwritten": 0, "failed_writes": 0, "last_error": None, "last_write_at": None}
    text = store.metrics_prometheus().decode()
    assert text.index("taskflow_queue_depth") < text.index("taskflow_snapshot_ok")


def test_unwritten_counts_finished_and_journaled_records(make_store: StoreFactory, db_path: str) -> None:
    store = make_store(db_path)
    done, _ = store.create("f")
    drive(store, done, "success")
    store.create("f", journal=True)
    store.create("f")  # neither finished nor journaled: nothing to write
    assert health(store)["unwritten"] == 2
    before = time.time_ns() // 1000
    assert store.flush() == 2
    after = health(store)
    assert after["unwritten"] == 0 and after["ok"] is True
    assert before <= iso_to_us(after["last_write_at"]) <= time.time_ns() // 1000


def test_failed_flushes_show_until_one_succeeds(core: ModuleType, make_store: StoreFactory, db_path: str) -> None:
    store = make_store(db_path)
    ids = []
    for _ in range(3):
        task_id, _ = store.create("f")
        drive(store, task_id, "success")
        ids.append(task_id)
    store.flush()
    first_write = health(store)["last_write_at"]
    for task_id in ids:
        store.append_log(task_id, "changed")  # out of date again
    run_sql(
        db_path, "CREATE TRIGGER refuse BEFORE UPDATE ON task_history BEGIN SELECT RAISE(ABORT, 'disk says no'); END"
    )
    for attempt in (1, 2):
        with pytest.raises(core.SnapshotError):
            store.flush()
        failed = health(store)
        assert (failed["ok"], failed["unwritten"], failed["failed_writes"]) == (False, 3, attempt)
        assert db_path in failed["last_error"] and "disk says no" in failed["last_error"]
        assert failed["last_write_at"] == first_write
    assert health_families(store) == (
        "# HELP taskflow_snapshot_ok Whether the last snapshot write succeeded (1) or failed (0).\n"
        "# TYPE taskflow_snapshot_ok gauge\n"
        "taskflow_snapshot_ok 0\n"
        "# HELP taskflow_snapshot_unwritten Records waiting to be written to the snapshot file.\n"
        "# TYPE taskflow_snapshot_unwritten gauge\n"
        "taskflow_snapshot_unwritten 3\n"
        "# HELP taskflow_snapshot_failed_writes Snapshot writes that failed since the file was opened.\n"
        "# TYPE taskflow_snapshot_failed_writes counter\n"
        "taskflow_snapshot_failed_writes_total 2\n"
        "# EOF\n"
    )

    run_sql(db_path, "DROP TRIGGER refuse")
    assert store.flush() == 3
    recovered = health(store)
    assert (recovered["ok"], recovered["unwritten"], recovered["failed_writes"]) == (True, 0, 2)
    assert recovered["last_error"] is None
    assert iso_to_us(recovered["last_write_at"]) > iso_to_us(first_write)
    assert "taskflow_snapshot_ok 1\n" in health_families(store)
