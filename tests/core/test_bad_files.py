"""Damaged snapshot files, a read-only filesystem and a full disk: named, explained, and recovered from."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from _corehelpers import StoreFactory, drive, loads, query, run_sql


def test_garbage_is_a_corrupt_snapshot(core: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not a sqlite database, just bytes\n" * 200)
    with pytest.raises(core.CorruptSnapshotError) as info:
        core.TaskStore(str(path))
    message = str(info.value)
    assert str(path) in message and "backup" in message and "move it aside" in message
    assert isinstance(info.value, core.SnapshotError)
    assert path.read_bytes().startswith(b"this is not")  # left alone


def test_a_damaged_snapshot_is_a_corrupt_snapshot(core: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "damaged.db"
    store = core.TaskStore(str(path))
    for i in range(300):
        task_id, _ = store.create("f", tags={"i": str(i)})
        drive(store, task_id, "success")
        store.append_log(task_id, "x" * 100)
    store.flush()
    store.close()  # the last connection checkpoints: every page is in the main file
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 8 * page
    data[2 * page :] = b"\xa5" * (len(data) - 2 * page)  # page 1 (header and schema) survives
    path.write_bytes(bytes(data))
    with pytest.raises(core.CorruptSnapshotError) as info:
        core.TaskStore(str(path))
    assert str(path) in str(info.value)


def test_a_foreign_database_is_not_corrupt(core: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "foreign.db"
    run_sql(str(path), "CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    with pytest.raises(core.SnapshotError) as info:
        core.TaskStore(str(path))
    assert not isinstance(info.value, core.CorruptSnapshotError)


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=False)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs of its own (requested before ``make_store``, so that the stores close before it goes)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("mounting a tmpfs needs Linux")
    mount = tmp_path / "mnt"
    mount.mkdir()
    done = run("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount))
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here (needs root): {done.stderr.strip().splitlines()[0]}")
    try:
        yield mount
    finally:
        run("umount", "-l", str(mount))


def test_a_full_disk_fails_flushes_until_space_returns(
    core: ModuleType, small_tmpfs: Path, make_store: StoreFactory
) -> None:
    # A read-only remount would be the other real fault, but Linux refuses it (EBUSY) while the store
    # holds its files open for writing; a full disk fails the same writes.
    path = str(small_tmpfs / "tasks.db")
    store = make_store(path)
    ids = []
    for i in range(20):
        task_id, _ = store.create("f", tags={"i": str(i)})
        drive(store, task_id, "success")
        store.append_log(task_id, "y" * 500)
        ids.append(task_id)
    filler = small_tmpfs / "filler"
    with filler.open("wb", buffering=0) as out:
        with pytest.raises(OSError, match="No space left"):
            while True:
                out.write(b"\0" * 65536)
    with pytest.raises(core.SnapshotError) as info:
        store.flush()
    assert path in str(info.value)
    failed = loads(store.metrics_json())["snapshot"]
    assert (failed["ok"], failed["unwritten"], failed["failed_writes"]) == (False, 20, 1)
    assert store.memory_len() == 20

    filler.unlink()
    assert store.flush() == 20
    recovered = loads(store.metrics_json())["snapshot"]
    assert (recovered["ok"], recovered["unwritten"], recovered["last_error"]) == (True, 0, None)
    assert query(path, "SELECT COUNT(*) FROM task_history") == [(20,)]


def test_a_read_only_filesystem_is_refused_at_open(core: ModuleType, small_tmpfs: Path) -> None:
    path = str(small_tmpfs / "tasks.db")
    store = core.TaskStore(path)
    task_id, _ = store.create("f")
    drive(store, task_id, "success")
    store.flush()
    store.close()
    assert run("mount", "-o", "remount,ro", str(small_tmpfs)).returncode == 0
    try:
        with pytest.raises(core.SnapshotError) as info:
            core.TaskStore(path)
        assert path in str(info.value)
        assert not isinstance(info.value, core.CorruptSnapshotError)
    finally:
        assert run("mount", "-o", "remount,rw", str(small_tmpfs)).returncode == 0
    reopened = core.TaskStore(path)
    try:
        assert reopened.get(task_id)["status"] == "success"
    finally:
        reopened.close()
