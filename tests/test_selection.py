"""The compiled core is the one in use unless the Python core is asked for."""

from __future__ import annotations

import os
import subprocess
import sys

import fastapi_taskflow._core as compiled
from fastapi_taskflow import TaskManager, _pycore
from fastapi_taskflow._selected import CORE_NAME, ENV_VAR


def test_rust_core_is_the_default() -> None:
    if os.environ.get(ENV_VAR) == "python":
        assert CORE_NAME == "python"
        assert isinstance(TaskManager().core, _pycore.TaskStore)
    else:
        assert CORE_NAME == "rust"
        assert isinstance(TaskManager().core, compiled.TaskStore)
        assert compiled.TaskStore.__module__ == "fastapi_taskflow._core"


def test_python_core_selected_by_environment() -> None:
    script = "from fastapi_taskflow._selected import CORE_NAME; print(CORE_NAME)"
    env = {**os.environ, ENV_VAR: "python"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "python"


def test_extension_reports_the_package_version() -> None:
    from importlib.metadata import version

    assert compiled.__version__ == version("fastapi-taskflow-rs")
