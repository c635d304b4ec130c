"""Several instances of ``app.py`` under real uvicorn processes, sharing one namespace of a server.

Each instance has its own directory (local journal ``tasks.db`` and ``uvicorn.log``);
all append to one results file. ``Cluster.start`` launches instances together and
waits until each answers; at the end, those still alive are stopped with SIGTERM and
must exit cleanly, as in production.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from backends.services import Namespace
from e2e.server import free_port

HERE = Path(__file__).parent
BACKENDS = HERE.parent / "backends"
#: Access lines off: the tests poll, and the log is for what the instances say.
UVICORN = (sys.executable, "-m", "uvicorn", "app:app", "--app-dir", str(HERE), "--no-access-log")


@dataclass(frozen=True)
class Result:
    """One line of the results file: one run of a task function."""

    task_id: str
    label: str
    instance: str


def read_results(path: Path) -> list[Result]:
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [Result(*line.split(",", 2)) for line in lines if line]


@dataclass
class Instance:
    name: str
    directory: Path
    port: int
    process: subprocess.Popen[bytes]
    env: dict[str, str]
    client: httpx.Client = field(init=False)
    #: Whether its exit is accounted for: checked, reported, or caused by the test's SIGKILL.
    exit_checked: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.url, timeout=15)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.directory / "uvicorn.log"

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    # -- the routes the tests use -------------------------------------------

    def request(self, method: str, path: str, **options: Any) -> httpx.Response:
        """One request; no answer within the client's timeout fails the test, saying which and where."""
        try:
            return self.client.request(method, path, **options)
        except httpx.TimeoutException as exc:
            raise AssertionError(
                f"{self.name}: {method} {path} got no answer within {self.client.timeout.read} s ({exc!r})"
            ) from exc

    def enqueue(self, label: str, *, key: str | None = None, sleep: float = 0.0, func: str = "record") -> str:
        params: dict[str, Any] = {"label": label, "sleep": sleep, "func": func}
        if key is not None:
            params["key"] = key
        response = self.request("POST", "/enqueue", params=params)
        assert response.status_code == 200, f"{self.name}: {response.status_code} {response.text}"
        return str(response.json()["task_id"])

    def tasks(self, name: str | None = None) -> list[dict[str, Any]]:
        """Every task ``GET /tasks`` lists (all pages), optionally of one function."""
        found: list[dict[str, Any]] = []
        params: dict[str, Any] = {"limit": 10_000}
        if name is not None:
            params["name"] = name
        while True:
            response = self.request("GET", "/tasks", params=params)
            assert response.status_code == 200, f"{self.name}: {response.status_code} {response.text}"
            found += response.json()
            cursor = response.headers.get("X-Next-Cursor")
            if not cursor:
                return found
            params["cursor"] = cursor

    def statuses(self, name: str | None = None) -> dict[str, str]:
        """``{task_id: status}`` of what this instance lists."""
        return {task["task_id"]: task["status"] for task in self.tasks(name)}

    def task(self, task_id: str) -> httpx.Response:
        return self.request("GET", f"/tasks/{task_id}")

    def metrics(self) -> dict[str, Any]:
        response = self.request("GET", "/tasks/metrics")
        assert response.status_code == 200, f"{self.name}: {response.status_code} {response.text}"
        body: dict[str, Any] = response.json()
        return body

    def backend_state(self) -> dict[str, Any]:
        """The ``"backend"`` object of ``/tasks/metrics``."""
        metrics = self.metrics()
        assert "backend" in metrics, f"{self.name}: /tasks/metrics has no 'backend' object: {metrics}"
        state: dict[str, Any] = metrics["backend"]
        return state

    # -- stopping -----------------------------------------------------------------

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, as a process manager does; the process must exit cleanly."""
        self.terminate()
        self.wait_stopped(timeout)

    def terminate(self) -> None:
        if self.alive:
            self.process.send_signal(signal.SIGTERM)

    def wait_stopped(self, timeout: float = 20.0) -> None:
        """Wait for the exit that ``terminate`` asked for; it must be a clean one."""
        try:
            returncode = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.exit_checked = True
            self.process.kill()
            self.process.wait()
            raise AssertionError(
                f"{self.name} did not stop within {timeout} s of SIGTERM:\n{self.log_text()}"
            ) from None
        if self.exit_checked:
            return
        self.exit_checked = True
        # Uvicorn re-raises the SIGTERM it handled once it has shut down gracefully.
        assert returncode in (0, -signal.SIGTERM), f"{self.name} exited with {returncode}:\n{self.log_text()}"

    def kill(self) -> None:
        """SIGKILL: the process dies at once, without any shutdown."""
        self.exit_checked = True
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()


class Cluster:
    """The instances of one test, all on ``namespace`` (None: plain instances without a shared backend)."""

    def __init__(self, root: Path, namespace: Namespace | None) -> None:
        self.root = root
        self.namespace = namespace
        self.results = root / "results.txt"
        self.instances: dict[str, Instance] = {}

    def __enter__(self) -> Cluster:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(check=exc_type is None)

    def __getitem__(self, name: str) -> Instance:
        return self.instances[name]

    def __iter__(self) -> Iterator[Instance]:
        return iter(self.instances.values())

    def environment(self, name: str, directory: Path, extra: dict[str, str]) -> dict[str, str]:
        env = {
            **os.environ,
            # app.py imports services.py as the backend tests' worker does.
            "PYTHONPATH": os.pathsep.join(filter(None, [str(BACKENDS), os.environ.get("PYTHONPATH")])),
            "TASKFLOW_MULTI_DB": str(directory / "tasks.db"),
            "TASKFLOW_MULTI_RESULTS": str(self.results),
            "TASKFLOW_MULTI_INSTANCE": name,
            "TASKFLOW_MULTI_KIND": "",
        }
        if self.namespace is not None:
            env.update(
                TASKFLOW_MULTI_KIND=self.namespace.kind,
                TASKFLOW_MULTI_URL=self.namespace.url,
                TASKFLOW_MULTI_NAMESPACE=self.namespace.name,
            )
        env.update(extra)
        return env

    def start(
        self,
        *names: str,
        timeout: float = 30.0,
        overrides: Mapping[str, Mapping[str, str]] | None = None,
        **extra: str,
    ) -> list[Instance]:
        """Launch one instance per name together, then wait until each answers.

        ``extra``: environment variables for all of them; ``overrides``: by name, for one.
        A name used before restarts that instance on its directory (its journal kept).
        """
        launched = []
        for name in names:
            previous = self.instances.get(name)
            assert previous is None or not previous.alive, f"{name} is still running"
            if previous is not None:
                previous.client.close()
            directory = self.root / name
            directory.mkdir(exist_ok=True)
            env = self.environment(name, directory, {**extra, **(overrides or {}).get(name, {})})
            port = free_port()
            with (directory / "uvicorn.log").open("ab") as log:
                process = subprocess.Popen(
                    [*UVICORN, "--port", str(port)],
                    cwd=directory,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
            instance = self.instances[name] = Instance(name, directory, port, process, env)
            launched.append(instance)
        deadline = time.monotonic() + timeout
        for instance in launched:
            while True:
                if not instance.alive:
                    exited = [i for i in launched if not i.alive]
                    for early in exited:
                        early.exit_checked = True
                    raise AssertionError("\n".join(f"{i.name} exited early:\n{i.log_text()}" for i in exited))
                try:
                    if instance.client.get("/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"{instance.name} does not answer after {timeout} s:\n{instance.log_text()}")
                time.sleep(0.05)
        return launched

    def close(self, check: bool = True) -> None:
        """Stop every instance still running (SIGTERM, all at once); with ``check``, each must exit cleanly."""
        failures = [
            f"{instance.name} exited on its own with {instance.process.returncode}:\n{instance.log_text()}"
            for instance in self.instances.values()
            if not instance.alive
            and not instance.exit_checked
            and instance.process.returncode not in (0, -signal.SIGTERM)
        ]
        running = [instance for instance in self.instances.values() if instance.alive]
        for instance in running:
            instance.terminate()
        for instance in running:
            try:
                instance.wait_stopped()
            except AssertionError as exc:
                failures.append(str(exc))
        for instance in self.instances.values():
            instance.client.close()
        if check and failures:
            raise AssertionError("\n\n".join(failures))

    # -- what the tasks did ---------------------------------------------------------

    def read(self) -> list[Result]:
        return read_results(self.results)

    def runs(self, prefix: str = "") -> collections.Counter[str]:
        """How many times each label starting with ``prefix`` ran, over every instance."""
        return collections.Counter(r.label for r in self.read() if r.label.startswith(prefix))

    def logs(self) -> str:
        """Every instance's log, each under its name (for failure messages)."""
        return "\n".join(f"===== {i.name} =====\n{i.log_text()}" for i in self.instances.values())
