"""The Python core's lazy indexes stay bounded (the Rust core's memory is checked by its own tests)."""

from __future__ import annotations

from _corehelpers import load_core


def test_lazy_indexes_are_compacted() -> None:
    pycore = load_core("python")
    assert pycore is not None
    store = pycore.TaskStore(max_history=100)
    ids = [store.create(f"f{i % 3}")[0] for i in range(5000)]
    for task_id in ids:
        store.transition(task_id, "running")
    for task_id in ids[:4000]:
        store.transition(task_id, "success")
    assert store.memory_len() == 1000 + 100
    for index in (store._all, *store._by_status.values(), *store._by_name.values()):
        assert len(index.keys) <= 2 * index.live() + 64
        assert index.live() >= 0
    assert store._by_status["pending"].live() == 0
    assert store._by_status["running"].live() == 1000
    assert store._by_status["success"].live() == 100
    assert len(store._finished) == 100
