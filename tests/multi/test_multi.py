"""Several real instances behind one shared backend (Redis, PostgreSQL, MySQL/MariaDB), end to end.

Each test starts its own uvicorn processes of ``app.py`` on a fresh namespace, drives
them over HTTP and reads the results file, in which every run of a task function left
one line. Waits have deadlines (``wait_for``); nothing asserts how long anything took.
"""

from __future__ import annotations

import collections
import shutil
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from backends.services import Namespace
from polling import wait_for

from .cluster import Cluster, Instance

pytestmark = pytest.mark.e2e

FINISHED = {"success", "failed", "interrupted", "cancelled", "rejected"}


def labelled(tasks: list[dict[str, object]], prefix: str) -> dict[str, dict[str, object]]:
    """The listed tasks whose label tag starts with ``prefix``, by task id."""
    found = {}
    for task in tasks:
        tags = task.get("tags")
        if isinstance(tags, dict) and str(tags.get("label", "")).startswith(prefix):
            found[str(task["task_id"])] = task
    return found


def lists_as_succeeded(instance: Instance, ids: set[str]) -> bool:
    statuses = instance.statuses("record")
    return all(statuses.get(task_id) == "success" for task_id in ids)


def fired_and_succeeded(instance: Instance, label: str) -> bool:
    """Whether ``instance`` lists a run of ``label`` and all its runs succeeded."""
    runs = labelled(instance.tasks("record"), label)
    return bool(runs) and {task["status"] for task in runs.values()} == {"success"}


def test_the_harness_runs_a_plain_instance(tmp_path: Path) -> None:
    """Without a shared backend: the app starts, runs what it is given, lists it, and stops cleanly."""
    with Cluster(tmp_path, None) as cluster:
        (solo,) = cluster.start("solo")
        ids = [solo.enqueue(f"plain-{i}") for i in range(3)]
        wait_for(lambda: len(cluster.runs("plain-")) == 3, what="three runs")
        wait_for(lambda: set(solo.statuses("record").values()) == {"success"}, what="three successes")
        assert set(solo.statuses("record")) == set(ids)
        assert {r.task_id for r in cluster.read()} == set(ids)


def test_one_key_over_instances_runs_once(cluster: Cluster) -> None:
    """30 concurrent requests with one idempotency key, spread over 3 instances: the function runs once."""
    instances = cluster.start("a", "b", "c")
    start = threading.Barrier(30)

    def request(n: int) -> str:
        instance = instances[n % len(instances)]
        start.wait()
        # A short sleep: the holder is still running while the others ask.
        return instance.enqueue("keyed", key="one-key", sleep=0.3)

    with ThreadPoolExecutor(max_workers=30) as pool:
        returned = set(pool.map(request, range(30)))

    def converged() -> bool:
        listed = [instance.statuses("record") for instance in instances]
        return all(set(statuses) == returned and set(statuses.values()) <= FINISHED for statuses in listed)

    wait_for(converged, what="every instance listing every returned id as finished")
    runs = [r for r in cluster.read() if r.label == "keyed"]
    assert len(runs) == 1, f"the function ran {len(runs)} times: {runs}\n{cluster.logs()}"
    holder = runs[0].task_id
    assert holder in returned
    for instance in instances:
        statuses = instance.statuses("record")
        assert set(statuses.values()) == {"success"}, f"{instance.name}: {statuses}"
    # Every record that did not run names the task that holds the key (in its logs, or in its instance's log).
    all_logs = cluster.logs()
    for task_id in returned - {holder}:
        body = instances[0].task(task_id).json()
        assert holder in " ".join(body["logs"]) or holder in all_logs, (
            f"no log line of {task_id} names the holder {holder}: {body}"
        )


def test_every_instance_lists_all_tasks(cluster: Cluster) -> None:
    """Tasks enqueued on one instance are listed, and served by id, by another once finished (both ways)."""
    a, b = cluster.start("a", "b")
    on_a = {a.enqueue(f"from-a-{i}") for i in range(10)}
    on_b = {b.enqueue(f"from-b-{i}") for i in range(10)}
    wait_for(lambda: len(cluster.runs("from-")) == 20, what="20 runs")

    for reader, ids in ((b, on_a), (a, on_b)):
        wait_for(partial(lists_as_succeeded, reader, ids), what=f"{reader.name} listing the other instance's tasks")
        for task_id in ids:
            response = reader.task(task_id)
            assert response.status_code == 200, f"{reader.name} GET /tasks/{task_id}: {response.text}"
            body = response.json()
            assert (body["task_id"], body["func_name"], body["status"]) == (task_id, "record", "success")
    # Each ran once, where it was enqueued.
    by_label = {r.label: r for r in cluster.read()}
    assert len(by_label) == 20 and len(cluster.read()) == 20
    assert {by_label[f"from-a-{i}"].instance for i in range(10)} == {"a"}
    assert {by_label[f"from-b-{i}"].instance for i in range(10)} == {"b"}


def test_killed_instance_tasks_run_once_elsewhere(cluster: Cluster) -> None:
    """A is SIGKILLed with most of its 50 slow tasks still waiting: B and C take them over after its lease.

    Every task ends finished; none runs twice. Those that had started on A (their line is
    written first thing) are not run again: they end interrupted, or success if A finished
    them; those still waiting run once on B or C.
    """
    # A runs 2 at a time, so that most wait when it dies; B and C take them over 10 at a time each.
    a, b, c = cluster.start(
        "a", "b", "c", TASKFLOW_MULTI_SLOW_CONCURRENCY="10", overrides={"a": {"TASKFLOW_MULTI_SLOW_CONCURRENCY": "2"}}
    )
    ids = {a.enqueue(f"slow-{i:02d}", func="slow", sleep=0.5): f"slow-{i:02d}" for i in range(50)}

    # Precondition: every task reached the backend, and A has started some.
    wait_for(lambda: set(ids) <= set(b.statuses("slow")), what="B listing all 50 tasks of A")
    wait_for(lambda: len(cluster.runs("slow-")) >= 3, what="A starting a few tasks")
    a.kill()
    started_on_a = set(cluster.runs("slow-"))
    # What the backend said of them when A died (B has none of them itself), for the failure messages.
    at_kill = {ids[t]: s for t, s in b.statuses("slow").items() if t in ids and ids[t] in started_on_a}
    assert len(started_on_a) < 50, "A ran everything before it was killed: nothing left to take over"

    def all_finished() -> bool:
        return all(
            set(ids) <= set(statuses) and {statuses[t] for t in ids} <= FINISHED
            for statuses in (b.statuses("slow"), c.statuses("slow"))
        )

    wait_for(all_finished, what="B and C listing all 50 tasks as finished")
    final = {t: s for t, s in b.statuses("slow").items() if t in ids}
    assert final == {t: s for t, s in c.statuses("slow").items() if t in ids}, "B and C disagree"
    runs = cluster.runs("slow-")
    where = collections.defaultdict(list)
    for r in cluster.read():
        where[r.label].append(r.instance)
    report = {label: (final[t], where[label]) for t, label in sorted(ids.items(), key=lambda item: item[1])}

    twice = {label: w for label, w in where.items() if len(w) > 1}
    assert not twice, (
        f"ran more than once: {twice}; the backend's status of the tasks started on A when it died: {at_kill}\n"
        f"{report}\n{cluster.logs()}"
    )
    assert set(final.values()) <= {"success", "interrupted"}, report
    for task_id, label in ids.items():
        if label in started_on_a:
            assert runs[label] == 1, f"{label} started on A and was run again: {report}"
        elif final[task_id] == "success":
            assert runs[label] == 1 and where[label][0] in ("b", "c"), f"{label}: {report}"
        else:  # marked running on A, killed before it wrote its line: interrupted, never run again
            assert runs[label] == 0, f"{label}: {report}"
    # At most the two A was running can have been cut short without a line.
    assert sum(1 for t, label in ids.items() if runs[label] == 0) <= 2, report
    assert any(w[0] in ("b", "c") for w in where.values()), f"nothing was taken over: {report}"


def test_schedule_fires_once_per_tick_across_instances(cluster: Cluster) -> None:
    """Three instances with the same every-second schedule: each tick fires once, on one of them."""
    cluster.start("a", "b", "c", TASKFLOW_MULTI_TICKS="1")

    def ticks() -> list[str]:
        return [r.label for r in cluster.read() if r.label.startswith("tick-")]

    def no_tick_twice() -> None:
        seen = collections.Counter(ticks())
        twice = {label: n for label, n in seen.items() if n > 1}
        assert not twice, f"ticks fired more than once: {twice}\n{cluster.read()}"

    wait_for(lambda: len(set(ticks())) >= 3, what="3 ticks")
    no_tick_twice()
    seen = len(set(ticks()))
    wait_for(lambda: len(set(ticks())) >= seen + 2, what="2 more ticks")
    no_tick_twice()
    task_ids = [r.task_id for r in cluster.read() if r.label.startswith("tick-")]
    assert len(task_ids) == len(set(task_ids))


def test_one_off_fires_once_across_instances_and_survives_restart(cluster: Cluster) -> None:
    """A one-off saved on A lives in the backend: A stops before it is due, B or C fires it once, A restarted not."""
    a, b, c = cluster.start("a", "b", "c")
    response = a.request("POST", "/schedule_once", params={"label": "once-1", "delay": 3})
    assert response.status_code == 200, response.text

    def listed_by_b() -> bool:
        schedules = b.request("GET", "/tasks/schedules").json()
        return any(entry["run_key"] == "once-once-1" for entry in schedules["one_off"])

    wait_for(listed_by_b, timeout=10, what="B listing the one-off saved on A")
    a.stop()
    assert cluster.runs("once-1")["once-1"] == 0, "A fired the one-off before it stopped: start it further ahead"

    wait_for(lambda: cluster.runs("once-1")["once-1"] >= 1, timeout=20, what="B or C firing the one-off")
    for instance in (b, c):
        wait_for(partial(fired_and_succeeded, instance, "once-1"), what=f"{instance.name} listing the one-off's run")
    (a,) = cluster.start("a")  # on its own journal again
    wait_for(lambda: len(labelled(a.tasks("record"), "once-1")) >= 1, what="A listing the fired one-off")
    for instance in (a, b, c):
        fired = labelled(instance.tasks("record"), "once-1")
        assert len(fired) == 1, f"{instance.name} lists {len(fired)} firings: {fired}"
    runs = [r for r in cluster.read() if r.label == "once-1"]
    assert len(runs) == 1 and runs[0].instance in ("b", "c"), f"{runs}\n{cluster.logs()}"
    assert not b.request("GET", "/tasks/schedules").json()["one_off"]


# -- the shared server going away -----------------------------------------------------------------------------------


def _run(*command: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"


def _answers(*command: str) -> bool:
    return subprocess.run(command, capture_output=True, check=False, timeout=30).returncode == 0


def _server_control(namespace: Namespace) -> tuple[list[list[str]], list[list[str]], list[str]]:
    """``(stop commands, start commands, readiness check)`` of the server on this machine (as .ci/run starts it)."""
    url = urlsplit(namespace.url)
    host = url.hostname or "127.0.0.1"
    if namespace.kind == "redis":
        port = str(url.port or 6379)
        cli = ["redis-cli", "-h", host, "-p", port]
        start = ["redis-server", "--daemonize", "yes", "--bind", host, "--port", port, "--save", ""]
        return [[*cli, "shutdown", "nosave"]], [start], [*cli, "ping"]
    if namespace.kind == "postgres":
        clusters = Path("/etc/postgresql")
        version = max((p.name for p in clusters.iterdir()), default="?") if clusters.is_dir() else "?"
        control = ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main"]
        ready = ["pg_isready", "-q", "-h", host, "-p", str(url.port or 5432)]
        return [[*control, "stop"]], [[*control, "start"]], ready
    # Not `service mariadb stop|start`: Debian's script stops, and checks that it started, through
    # /etc/mysql/debian.cnf, which a server set up for root over TCP may lack. So: mysqladmin
    # (it waits until the server has stopped), and the script's own start command.
    admin = ["mysqladmin", "-h", host, "-P", str(url.port or 3306), "-u", unquote(url.username or "root")]
    if url.password:
        admin.append(f"--password={unquote(url.password)}")
    start = "test -e /run/mysqld || install -m 755 -o mysql -g root -d /run/mysqld; mysqld_safe >/dev/null 2>&1 &"
    return [[*admin, "shutdown"]], [["sh", "-c", start]], [*admin, "ping"]


@contextmanager
def server_down(namespace: Namespace) -> Iterator[None]:
    """Stop the shared server for the block; it is started again (and answers) whatever happens in it."""
    stop, start, ready = _server_control(namespace)
    host = urlsplit(namespace.url).hostname
    if host not in ("127.0.0.1", "localhost", "::1") or not all(shutil.which(c[0]) for c in (*stop, *start, ready)):
        pytest.skip(f"the {namespace.kind} server is not one this machine can stop and start ({namespace.url})")
    assert _answers(*ready), f"the {namespace.kind} server does not answer before the test"
    try:
        for command in stop:
            _run(*command)
        wait_for(lambda: not _answers(*ready), what=f"the {namespace.kind} server stopping")
        yield
    finally:
        if not _answers(*ready):
            for command in start:
                _run(*command)
        wait_for(lambda: _answers(*ready), what=f"the {namespace.kind} server answering again")


@pytest.mark.restarts_server
def test_backend_restart_loses_nothing(cluster: Cluster, namespace: Namespace) -> None:
    """With the server down, tasks still run and stay in the local journal; once it is back they all reach it."""
    a, b = cluster.start("a", "b")
    wait_for(lambda: a.backend_state()["ok"] is True, what="A's backend healthy at first")
    with server_down(namespace):
        ids = {a.enqueue(f"down-{i:02d}") for i in range(20)}
        wait_for(lambda: len(cluster.runs("down-")) == 20, what="the 20 tasks running with the server down")
        wait_for(lambda: a.backend_state()["ok"] is False, what="A reporting its backend down")
        state = a.backend_state()
        assert state["kind"] == namespace.kind and state["failed_rounds"] >= 1 and state["last_error"], state
        assert set(a.statuses("record")) >= ids, "A does not list what it ran"  # with the backend away
    wait_for(lambda: a.backend_state()["ok"] is True, what="A reporting its backend back")
    wait_for(
        lambda: {t: s for t, s in b.statuses("record").items() if t in ids} == dict.fromkeys(ids, "success"),
        what="B listing all 20 tasks as succeeded",
    )
    assert a.backend_state()["last_push_at"] is not None
    assert cluster.runs("down-") == collections.Counter({f"down-{i:02d}": 1 for i in range(20)})
