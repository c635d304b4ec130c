"""Executors and time limits: ``timeout=`` on async, thread and process tasks, ``jitter=``, the process executor.

Tasks run through the runner directly (a record created in the core, then a
``TrackedTask``), so these tests do not depend on how ``add_task`` dispatches.
Process tasks are module-level functions: a spawned worker imports this module by name.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

from fastapi_taskflow import (
    ManagedBackgroundTasks,
    TaskAdmin,
    TaskManager,
    get_task_context,
    process_executor,
    task_log,
)
from fastapi_taskflow import execution as execution_module
from fastapi_taskflow.errors import TaskArgumentError
from fastapi_taskflow.execution import retry_delay
from fastapi_taskflow.wrapper import TrackedTask

pytestmark = pytest.mark.anyio


def make_task(manager: TaskManager, func: Callable[..., Any], *args: Any, **kwargs: Any) -> TrackedTask:
    spec = manager.spec_for(func)
    task_id, _ = manager.core.create(spec.name, executor=spec.executor)
    return TrackedTask(manager.runner, spec, task_id, args, kwargs, contextvars.copy_context())


async def run_task(manager: TaskManager, func: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Run every attempt of ``func(*args, **kwargs)`` and return its record."""
    task = make_task(manager, func, *args, **kwargs)
    await task()
    record = manager.core.get(task.task_id)
    assert record is not None
    return record


def message(line: str) -> str:
    """A log line without its timestamp (retry separators have none)."""
    return line if line.startswith("---") else line.split(" ", 1)[1]


def pid_in(logs: list[str]) -> int:
    (line,) = [line for line in logs if "pid=" in line][:1]
    return int(line.rsplit("pid=", 1)[1].split()[0])


def process_is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


# -- timeout: async ------------------------------------------------------------------


async def test_a_timeout_really_stops_an_async_task() -> None:
    manager = TaskManager()
    reached: list[str] = []

    @manager.task(timeout=0.2)
    async def slow() -> None:
        try:
            await asyncio.Event().wait()
            reached.append("after the await")
        finally:
            reached.append("finally")

    record = await run_task(manager, slow)
    assert record["status"] == "failed"
    assert record["error"] == "TimeoutError: attempt exceeded timeout=0.2s and was cancelled"
    assert "await asyncio.Event().wait()" in record["stacktrace"], "the trace shows where it was stuck"
    assert record["stacktrace"].endswith("TimeoutError: attempt exceeded timeout=0.2s and was cancelled\n")
    assert reached == ["finally"], "cancelled at the deadline: the line after the await never runs"


async def test_timeouts_are_retried_like_failures() -> None:
    manager = TaskManager()

    @manager.task(timeout=0.2, retries=2)
    async def hangs_once() -> None:
        context = get_task_context()
        assert context is not None
        if context.attempt == 0:
            await asyncio.Event().wait()
        task_log(f"attempt {context.attempt} done")

    record = await run_task(manager, hangs_once)
    assert record["status"] == "success"
    assert record["retries_used"] == 1
    assert record["error"] is None
    assert [message(line) for line in record["logs"]] == ["--- Retry 1 ---", "attempt 1 done"]


async def test_an_async_task_within_its_timeout_is_untouched() -> None:
    manager = TaskManager(max_concurrent_tasks=1)

    @manager.task(timeout=30.0)
    async def quick(value: int) -> None:
        await asyncio.sleep(0)
        task_log(f"value {value}")

    record = await run_task(manager, quick, 7)
    assert record["status"] == "success"
    assert record["logs"][0].endswith("value 7")
    assert asyncio.current_task() is not None
    if sys.version_info >= (3, 11):
        assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_an_api_cancel_is_a_cancel_not_a_timeout() -> None:
    manager = TaskManager()
    started = asyncio.Event()

    @manager.task(timeout=30.0)
    async def waits() -> None:
        started.set()
        await asyncio.Event().wait()

    task = make_task(manager, waits)
    running = asyncio.create_task(task())
    await started.wait()
    assert manager.runner.cancel(task.task_id)
    await running  # an API cancel ends the task quietly
    record = manager.core.get(task.task_id)
    assert record is not None
    assert record["status"] == "cancelled"


async def test_api_cancel_at_the_deadline_wins_over_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both cancellations land before the coroutine sees either: the API's is honoured."""
    manager = TaskManager()
    task_ids: list[str] = []
    expire = execution_module._Deadline._expire

    def expire_and_cancel(deadline: Any) -> None:
        expire(deadline)
        manager.runner.cancel(task_ids[0])

    monkeypatch.setattr(execution_module._Deadline, "_expire", expire_and_cancel)

    @manager.task(timeout=0.1, retries=3)
    async def waits() -> None:
        await asyncio.Event().wait()

    task = make_task(manager, waits)
    task_ids.append(task.task_id)
    await task()
    record = manager.core.get(task.task_id)
    assert record is not None
    assert record["status"] == "cancelled"
    assert record["retries_used"] == 0


async def test_shutdown_at_the_deadline_wins_over_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    manager = TaskManager()
    runners: list[asyncio.Task[None]] = []
    expire = execution_module._Deadline._expire

    def expire_and_shut_down(deadline: Any) -> None:
        expire(deadline)
        runners[0].cancel()  # what a server shutdown does to the task running it

    monkeypatch.setattr(execution_module._Deadline, "_expire", expire_and_shut_down)
    cleaned_up = []

    @manager.task(timeout=0.1, retries=3)
    async def waits() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cleaned_up.append(True)

    task = make_task(manager, waits)
    runners.append(asyncio.create_task(task()))
    with pytest.raises(asyncio.CancelledError):
        await runners[0]
    record = manager.core.get(task.task_id)
    assert record is not None
    assert record["status"] == "interrupted"
    assert record["retries_used"] == 0
    assert cleaned_up == [True], "the attempt unwound before the task was marked"


async def test_a_shutdown_during_a_timed_attempt_interrupts_it() -> None:
    manager = TaskManager()
    started = asyncio.Event()
    reached: list[str] = []

    @manager.task(timeout=30.0)
    async def waits() -> None:
        started.set()
        await asyncio.Event().wait()
        reached.append("after the await")

    task = make_task(manager, waits)
    running = asyncio.create_task(task())
    await started.wait()
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    record = manager.core.get(task.task_id)
    assert record is not None
    assert record["status"] == "interrupted"
    assert reached == []


# -- timeout: thread -------------------------------------------------------------------


async def test_a_thread_task_past_its_timeout_is_reported_and_its_late_result_ignored() -> None:
    manager = TaskManager()
    release = threading.Event()
    finished = threading.Event()

    @manager.task(timeout=0.2)
    def stuck() -> str:
        task_log("before")
        release.wait(60)
        task_log("late line")
        finished.set()
        return "late result"

    try:
        record = await run_task(manager, stuck)
        assert record["status"] == "failed"
        assert record["error"].startswith("TimeoutError: attempt exceeded timeout=0.2s; a thread cannot be stopped")
        assert "release.wait(60)" in record["stacktrace"], "the trace shows where the thread was"
        release.set()
        assert await asyncio.to_thread(finished.wait, 30)
        for _ in range(5):  # let the thread's completion reach the loop
            await asyncio.sleep(0)
        record = manager.core.get(record["task_id"])
        assert record is not None
        assert record["status"] == "failed", "the late result changes nothing"
        assert [message(line) for line in record["logs"]] == ["before"]
    finally:
        release.set()
        manager.runner.shutdown()


async def test_tasks_within_their_timeout_succeed_or_fail_as_usual() -> None:
    manager = TaskManager()

    @manager.task(timeout=30.0)
    def fine() -> None:
        task_log("ok")

    @manager.task(timeout=30.0)
    def broken() -> None:
        raise KeyError("gone")

    @manager.task(timeout=30.0)
    async def broken_async() -> None:
        await asyncio.sleep(0)
        raise KeyError("gone too")

    try:
        assert (await run_task(manager, fine))["status"] == "success"
        for func, error in ((broken, "'gone'"), (broken_async, "'gone too'")):
            record = await run_task(manager, func)
            assert record["status"] == "failed"
            assert record["error"] == error
            assert f"in {func.__name__}" in record["stacktrace"]
            assert "fastapi_taskflow" not in record["stacktrace"], "the runner's own frames are left out"
    finally:
        manager.runner.shutdown()


# -- jitter --------------------------------------------------------------------------------


def test_jitter_zero_is_the_exact_formula(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_randomness(a: float, b: float) -> float:
        raise AssertionError("jitter=0 must not draw a random number")

    monkeypatch.setattr(execution_module.random, "uniform", no_randomness)
    assert [retry_delay(0.5, 3.0, k, 0.0) for k in (1, 2, 3)] == [0.5, 1.5, 4.5]


def test_jitter_stays_within_its_bounds() -> None:
    for attempt in range(1, 6):
        exact = retry_delay(2.0, 1.5, attempt)
        for _ in range(200):
            assert exact <= retry_delay(2.0, 1.5, attempt, 0.25) <= exact * 1.25


async def test_the_runner_sleeps_the_jittered_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    manager = TaskManager()
    draws: list[tuple[float, float]] = []
    sleeps: list[float] = []
    real_sleep = asyncio.sleep

    def top_of_range(a: float, b: float) -> float:
        draws.append((a, b))
        return b

    async def recording_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr(execution_module.random, "uniform", top_of_range)
    monkeypatch.setattr(execution_module.asyncio, "sleep", recording_sleep)

    @manager.task(retries=2, delay=1.0, backoff=2.0, jitter=0.5)
    async def always_fails() -> None:
        raise RuntimeError("no")

    @manager.task(retries=2, delay=1.0, backoff=2.0)
    async def always_fails_exactly() -> None:
        raise RuntimeError("no")

    assert (await run_task(manager, always_fails))["retries_used"] == 2
    assert [s for s in sleeps if s] == [1.5, 3.0]
    assert draws == [(0, 0.5), (0, 0.5)]
    sleeps.clear()
    draws.clear()
    assert (await run_task(manager, always_fails_exactly))["retries_used"] == 2
    assert [s for s in sleeps if s] == [1.0, 2.0]
    assert draws == []


# -- the process executor -----------------------------------------------------------------

PROCESSES = TaskManager()


@PROCESSES.task(executor="process")
def add_in_process(a: int, b: int) -> None:
    context = get_task_context()
    assert context is not None
    task_log(f"sum={a + b} pid={os.getpid()} task={context.task_id} attempt={context.attempt} name={context.func_name}")


@PROCESSES.task(executor="process")
async def greet_in_process(word: str) -> None:
    await asyncio.sleep(0)
    context = get_task_context()
    assert context is not None
    task_log(f"async {word} pid={os.getpid()} task={context.task_id}", level="warning")


@PROCESSES.task(executor="process", retries=1)
def fails_in_process() -> None:
    task_log("about to fail")
    raise ValueError("bad input")


@PROCESSES.task(executor="process", timeout=1.0)
def sleeps_in_process() -> None:
    task_log(f"pid={os.getpid()}")
    time.sleep(60)
    task_log("woke up")


@PROCESSES.task(executor="process", timeout=1.0, retries=1)
def sleeps_once_in_process() -> None:
    context = get_task_context()
    assert context is not None
    if context.attempt == 0:
        time.sleep(60)
    task_log(f"attempt {context.attempt} finished")


@PROCESSES.task(executor="process")
def crashes_in_process() -> None:
    task_log(f"crashing pid={os.getpid()}")
    os._exit(3)


@PROCESSES.task(executor="process")
def refused_in_process() -> None:
    task_log(f"pid={os.getpid()}")
    raise ConnectionRefusedError("nobody listens")


@PROCESSES.task(executor="process")
def returns_unpicklable() -> threading.Lock:
    return threading.Lock()  # results are not sent back, so this is fine


@PROCESSES.task(executor="process")
async def waits_in_process() -> None:
    task_log(f"pid={os.getpid()}")
    await asyncio.sleep(60)


@pytest.fixture(scope="module", autouse=True)
def _stop_worker_processes() -> Iterator[None]:
    yield
    PROCESSES.runner.shutdown()


async def test_process_tasks_run_in_a_worker_and_see_their_context() -> None:
    first = await run_task(PROCESSES, add_in_process, 2, b=3)
    assert first["status"] == "success", first["error"]
    assert first["executor"] == "process"
    (line,) = first["logs"]
    assert f"task={first['task_id']} attempt=0 name=add_in_process" in line
    assert message(line).startswith("sum=5 pid=")
    assert pid_in(first["logs"]) != os.getpid()

    second = await run_task(PROCESSES, greet_in_process, "hello")
    assert second["status"] == "success", second["error"]
    assert [message(line) for line in second["logs"]] == [
        f"async hello pid={pid_in(second['logs'])} task={second['task_id']}"
    ]
    assert pid_in(second["logs"]) == pid_in(first["logs"]), "an idle worker takes the next task"


async def test_a_process_task_error_has_the_worker_traceback_and_its_logs() -> None:
    record = await run_task(PROCESSES, fails_in_process)
    assert record["status"] == "failed"
    assert record["retries_used"] == 1
    assert record["error"] == "ValueError: bad input"
    assert 'raise ValueError("bad input")' in record["stacktrace"]
    assert "process_executor" not in record["stacktrace"], "the worker's own frames are left out"
    assert [message(line) for line in record["logs"]] == ["about to fail", "--- Retry 1 ---", "about to fail"]


async def test_a_task_error_that_looks_like_a_broken_pipe_keeps_the_worker() -> None:
    record = await run_task(PROCESSES, refused_in_process)
    assert record["status"] == "failed"
    assert record["error"] == "ConnectionRefusedError: nobody listens"
    after = await run_task(PROCESSES, add_in_process, 1, 2)
    assert after["status"] == "success", after["error"]
    assert pid_in(after["logs"]) == pid_in(record["logs"])


async def test_a_process_task_over_its_timeout_has_its_worker_killed() -> None:
    record = await run_task(PROCESSES, sleeps_in_process)
    pid = pid_in(record["logs"])
    assert record["status"] == "failed"
    assert record["error"] == f"TimeoutError: attempt exceeded timeout=1.0s; worker process {pid} was killed"
    assert "woke up" not in " ".join(record["logs"])
    assert process_is_gone(pid), "the worker was killed and reaped"
    after = await run_task(PROCESSES, add_in_process, 1, 1)
    assert after["status"] == "success", "the next task gets a fresh worker"


async def test_a_process_timeout_is_retried() -> None:
    record = await run_task(PROCESSES, sleeps_once_in_process)
    assert record["status"] == "success", record["error"]
    assert record["retries_used"] == 1
    assert [message(line) for line in record["logs"]] == ["--- Retry 1 ---", "attempt 1 finished"]


async def test_a_crashed_worker_fails_the_attempt_and_the_next_task_still_runs() -> None:
    record = await run_task(PROCESSES, crashes_in_process)
    pid = pid_in(record["logs"])
    assert record["status"] == "failed"
    assert record["error"] == f"WorkerDiedError: worker process {pid} died while running the task (exit code 3)"
    assert process_is_gone(pid)
    after = await run_task(PROCESSES, add_in_process, 4, 5)
    assert after["status"] == "success", after["error"]
    assert pid_in(after["logs"]) != pid


async def test_results_of_process_tasks_need_not_pickle() -> None:
    record = await run_task(PROCESSES, returns_unpicklable)
    assert record["status"] == "success", record["error"]


async def test_cancelling_a_running_process_task_kills_its_worker() -> None:
    task = make_task(PROCESSES, waits_in_process)
    running = asyncio.create_task(task())
    for _ in range(600):  # until the worker has logged its pid (spawning takes a moment)
        record = PROCESSES.core.get(task.task_id)
        assert record is not None
        if record["logs"]:
            break
        await asyncio.sleep(0.05)
    pid = pid_in(record["logs"])
    assert PROCESSES.runner.cancel(task.task_id)
    await running
    record = PROCESSES.core.get(task.task_id)
    assert record is not None
    assert record["status"] == "cancelled"
    for _ in range(200):  # the pipe's reader thread reaps the killed worker
        if process_is_gone(pid):
            break
        await asyncio.sleep(0.05)
    assert process_is_gone(pid)


async def test_the_pool_never_runs_more_tasks_than_workers_and_reuses_them() -> None:
    pool = process_executor.ProcessPool(1, shutdown_timeout=5.0)
    spec = PROCESSES.spec_for(add_in_process)
    lines: list[str] = []

    def on_log(message: str, level: str, extra: dict[str, Any]) -> None:
        lines.append(message)

    try:
        calls = [
            pool.run(process_executor.encode_call(spec, f"task-{i}", 0, {}, (i, i), {}), on_log=on_log)
            for i in range(3)
        ]
        await asyncio.gather(*calls)
        assert len(pool.worker_pids) == 1
    finally:
        pool.shutdown()
    assert sorted(line.split()[0] for line in lines) == ["sum=0", "sum=2", "sum=4"]
    assert len({pid_in([line]) for line in lines}) == 1, "one worker took the three tasks in turn"
    with pytest.raises(RuntimeError, match="shut down"):
        await pool.run(process_executor.encode_call(spec, "late", 0, {}, (1, 1), {}))


async def test_unpicklable_arguments_are_a_task_argument_error_naming_the_argument() -> None:
    spec = PROCESSES.spec_for(add_in_process)
    with pytest.raises(TaskArgumentError, match=r"argument 'b' \(lock\) of process task 'add_in_process'"):
        process_executor.validate_process_args(spec, (1,), {"b": threading.Lock()})
    with pytest.raises(ValueError, match=r"positional argument 1 \(generator\)"):
        process_executor.validate_process_args(spec, (1, (i for i in range(3))), {})
    process_executor.validate_process_args(spec, (1, 2), {})  # fine
    thread_spec = PROCESSES.spec_for(plain_helper)
    process_executor.validate_process_args(thread_spec, (threading.Lock(),), {})  # other executors: no check
    # Arguments that reach the runner anyway (e.g. restored from elsewhere) fail the attempt, named too.
    record = await run_task(PROCESSES, add_in_process, 1, b=threading.Lock())
    assert record["status"] == "failed"
    assert (
        "argument 'b' (lock) of process task 'add_in_process' cannot be sent to a worker process" in (record["error"])
    )


def plain_helper(lock: Any) -> None:
    pass


def test_nested_functions_and_lambdas_are_refused_without_cloudpickle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(process_executor, "_cloudpickle", None)
    manager = TaskManager()

    with pytest.raises(ValueError, match="nested function or lambda"):

        @manager.task(executor="process")
        def nested() -> None: ...

    with pytest.raises(ValueError, match="nested function or lambda"):
        manager.task(executor="process")(lambda: None)

    manager.task(executor="process")(add_in_process)  # module level: fine
    manager.task(executor="process")(greet_in_process)  # coroutine functions too


async def test_shutdown_stops_idle_workers() -> None:
    manager = TaskManager()
    manager.task(executor="process")(add_in_process)
    record = await run_task(manager, add_in_process, 1, 2)
    assert record["status"] == "success", record["error"]
    pool = manager.runner._processes
    assert pool is not None
    pids = pool.worker_pids
    assert pids == [pid_in(record["logs"])]
    manager.runner.shutdown()
    assert all(process_is_gone(pid) for pid in pids)
    # A later process task starts a new pool.
    again = await run_task(manager, add_in_process, 2, 2)
    assert again["status"] == "success", again["error"]
    manager.runner.shutdown()


async def test_with_cloudpickle_nested_functions_and_lambdas_run_in_a_process() -> None:
    pytest.importorskip("cloudpickle")
    factor = 10

    @PROCESSES.task(executor="process")
    def nested(x: int) -> None:
        task_log(f"nested {x * factor} pid={os.getpid()}")

    record = await run_task(PROCESSES, nested, 3)
    assert record["status"] == "success", record["error"]
    assert message(record["logs"][0]).startswith("nested 30 pid=")
    assert pid_in(record["logs"]) != os.getpid()
    record = await run_task(PROCESSES, PROCESSES.task(executor="process")(lambda: task_log("from a lambda")))
    assert record["status"] == "success", record["error"]
    assert [message(line) for line in record["logs"]] == ["from a lambda"]


def test_timed_and_process_tasks_through_a_fastapi_app() -> None:
    manager = TaskManager()
    manager.task(executor="process")(add_in_process)
    reached: list[str] = []

    @manager.task(timeout=0.2)
    async def hangs() -> None:
        await asyncio.Event().wait()
        reached.append("after the await")

    app = FastAPI()
    TaskAdmin(app, manager)

    @app.post("/go")
    def go(tasks: ManagedBackgroundTasks = Depends(manager.get_tasks)) -> dict[str, str]:
        return {"hangs": tasks.add_task(hangs), "adds": tasks.add_task(add_in_process, 20, 22)}

    with TestClient(app) as client:
        ids = client.post("/go").json()
        hung = client.get(f"/tasks/{ids['hangs']}").json()
        added = client.get(f"/tasks/{ids['adds']}").json()
        pool = manager.runner._processes
        assert pool is not None
        pids = pool.worker_pids
    assert hung["status"] == "failed"
    assert hung["error"] == "TimeoutError: attempt exceeded timeout=0.2s and was cancelled"
    assert added["status"] == "success", added["error"]
    assert added["executor"] == "process"
    assert message(added["logs"][0]).startswith("sum=42 pid=")
    assert reached == []
    assert pids and all(process_is_gone(pid) for pid in pids), "the app's shutdown stopped the workers"


def test_add_task_refuses_unpicklable_process_arguments() -> None:
    manager = TaskManager()
    manager.task(executor="process")(add_in_process)
    tasks = ManagedBackgroundTasks(manager)
    with pytest.raises(TaskArgumentError, match=r"argument 'b' \(lock\) of process task 'add_in_process'"):
        tasks.add_task(add_in_process, 1, b=threading.Lock())
    assert tasks.tasks == [] and manager.core.memory_len() == 0
