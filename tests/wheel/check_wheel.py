"""``make test-wheel``: the release wheel and the sdist work on their own, away from the source tree.

1. ``maturin build --release`` builds the wheel and ``maturin sdist`` the sdist (or ``--wheel-dir``
   names a directory holding wheels that are already built, as the wheels workflow does).
2. A fresh venv in a temporary directory installs the wheel from the file (its dependencies and
   uvicorn come from the package index); the compiled core must load there
   (``fastapi_taskflow._selected.CORE_NAME == "rust"``, imported from the venv, not the tree).
3. The README quick start (``examples/quickstart.py``) runs in that venv under uvicorn with
   ``-W error::RuntimeWarning``, so a fallback to the Python core would stop it. It is sent a
   signup, its task must succeed, and after a restart the task is still served from ``tasks.db``:
   SQLite is bundled in the wheel, nothing else is needed.
4. Unless ``--skip-sdist``: a second fresh venv runs ``pip install`` on the sdist, which compiles
   the extension from source (dev profile: this proves the sdist builds, not how fast it is);
   the compiled core must load there too. ``--skip-wheel`` leaves out steps 1 to 3.

Only the standard library is used here, so the script runs with any Python 3.10+.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart.py"

CHECK_CORE = """
import sys
import fastapi_taskflow
from fastapi_taskflow._selected import CORE_NAME
assert CORE_NAME == "rust", f"the compiled core did not load: CORE_NAME={CORE_NAME!r}"
location = fastapi_taskflow.__file__
assert location.startswith(sys.prefix), f"fastapi_taskflow came from {location}, not from the venv {sys.prefix}"
print(f"fastapi_taskflow {fastapi_taskflow.__version__} with the {CORE_NAME} core from {location}")
"""


def step(message: str) -> None:
    print(f"test-wheel: {message}", flush=True)


def run(command: list[str], **kwargs: object) -> None:
    subprocess.run(command, check=True, **kwargs)  # type: ignore[call-overload]


def clean_env() -> dict[str, str]:
    """The environment minus what could point Python back at the source tree or pick another core."""
    drop = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "FASTAPI_TASKFLOW_CORE", "CONDA_PREFIX"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def new_venv(path: Path) -> Path:
    run([sys.executable, "-m", "venv", str(path)])
    python = venv_python(path)
    run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--upgrade", "pip"])
    return python


def pick_wheel(directory: Path) -> Path:
    """The wheel in ``directory`` built for the running interpreter."""
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    wheels = sorted(directory.glob(f"fastapi_taskflow_rs-*-{tag}-*.whl"))
    if not wheels:
        sys.exit(f"no {tag} wheel in {directory}: {[p.name for p in directory.iterdir()]}")
    return wheels[-1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def call(method: str, url: str) -> object:
    with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=10) as response:
        return json.loads(response.read())


class Server:
    """``uvicorn app:app`` from the venv, in ``app_dir``; stopped with SIGTERM (a graceful shutdown)."""

    def __init__(self, python: Path, app_dir: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = app_dir / "uvicorn.log"
        command = [str(python), "-W", "error::RuntimeWarning", "-m", "uvicorn", "app:app"]
        command += ["--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, cwd=app_dir, env=clean_env(), stdout=log, stderr=log)
        deadline = time.monotonic() + 60
        while True:
            if self.process.poll() is not None:
                sys.exit(f"uvicorn exited with code {self.process.returncode}:\n{self.log.read_text()}")
            try:
                call("GET", f"{self.base}/tasks/metrics")
                return
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline:
                    self.stop()
                    sys.exit(f"the quick start did not answer within 60 s:\n{self.log.read_text()}")
                time.sleep(0.1)

    def stop(self) -> None:
        self.process.terminate()  # SIGTERM: uvicorn shuts down gracefully (a hard stop on Windows)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def run_quickstart(python: Path, work: Path) -> None:
    app_dir = work / "app"
    app_dir.mkdir()
    shutil.copy(QUICKSTART, app_dir / "app.py")
    server = Server(python, app_dir)
    try:
        answer = call("POST", f"{server.base}/signup?email=ada%40example.com")
        task_id = answer["task_id"]  # type: ignore[index]
        deadline = time.monotonic() + 30
        while (task := call("GET", f"{server.base}/tasks/{task_id}"))["status"] != "success":  # type: ignore[index]
            if time.monotonic() > deadline:
                sys.exit(f"task {task_id} did not succeed within 30 s: {task}")
            time.sleep(0.05)
        metrics = call("GET", f"{server.base}/tasks/metrics")
        listed = call("GET", f"{server.base}/tasks")
        assert metrics["success"] >= 1, metrics  # type: ignore[index]
        assert any(t["task_id"] == task_id for t in listed), listed  # type: ignore[attr-defined,index]
        step(f"quick start served under uvicorn: task {task_id} succeeded; metrics {metrics}")
        if os.name == "nt":
            # Stopping is a hard kill there, without the final snapshot write: give the
            # snapshot writer (it writes shortly after each completion) time to run.
            time.sleep(1.0)
    finally:
        server.stop()
    if os.name != "nt" and server.process.returncode not in (0, -signal.SIGTERM):
        sys.exit(f"uvicorn stopped with code {server.process.returncode}:\n{server.log.read_text()}")
    if not (app_dir / "tasks.db").is_file():
        sys.exit("the quick start wrote no tasks.db")
    server = Server(python, app_dir)
    try:
        task = call("GET", f"{server.base}/tasks/{task_id}")
        assert task["status"] == "success", task  # type: ignore[index]
        step("after a restart the task is served from tasks.db (bundled SQLite)")
    finally:
        server.stop()


def check_wheel(wheel: Path, work: Path) -> None:
    step(f"installing {wheel.name} into a fresh venv in {work}")
    python = new_venv(work / "venv")
    run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel), "uvicorn"])
    run([str(python), "-W", "error::RuntimeWarning", "-c", CHECK_CORE], cwd=work, env=clean_env())
    run_quickstart(python, work)


def check_sdist(sdist: Path, work: Path) -> None:
    step(f"pip install {sdist.name} (builds the extension from source) into a fresh venv")
    python = new_venv(work / "venv-sdist")
    env = clean_env()
    env.setdefault("MATURIN_PEP517_ARGS", "--profile dev")
    # A target directory kept between runs so that the dependencies are not compiled every time;
    # the crate itself is always compiled from the unpacked sdist.
    env.setdefault("CARGO_TARGET_DIR", str(ROOT / "target" / "sdist-check"))
    run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(sdist)], cwd=work, env=env)
    run([str(python), "-W", "error::RuntimeWarning", "-c", CHECK_CORE], cwd=work, env=clean_env())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheel-dir", type=Path, help="test the wheel in this directory instead of building one")
    parser.add_argument("--skip-sdist", action="store_true", help="do not build and install the sdist")
    parser.add_argument("--skip-wheel", action="store_true", help="only build and install the sdist")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="taskflow-wheel-"))
    try:
        dist = args.wheel_dir.resolve() if args.wheel_dir else work / "dist"
        if not args.skip_wheel:
            if args.wheel_dir is None:
                step("maturin build --release")
                run([sys.executable, "-m", "maturin", "build", "--release", "--out", str(dist)], cwd=ROOT)
            check_wheel(pick_wheel(dist), work)
        if not args.skip_sdist:
            sdists = sorted(dist.glob("fastapi_taskflow_rs-*.tar.gz")) if dist.is_dir() else []
            if not sdists:
                step("maturin sdist")
                run([sys.executable, "-m", "maturin", "sdist", "--out", str(work / "sdist")], cwd=ROOT)
                sdists = sorted((work / "sdist").glob("fastapi_taskflow_rs-*.tar.gz"))
            check_sdist(sdists[-1], work)
        step(f"passed in {time.monotonic() - started:.0f} s")
    finally:
        if args.keep:
            step(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
