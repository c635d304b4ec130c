"""Selects the task core: the compiled ``_core`` by default, ``_pycore`` on request.

``FASTAPI_TASKFLOW_CORE=python`` selects the pure-Python reference core; any other
value (or none) selects the Rust core, falling back to the Python core with a
warning when the extension cannot be loaded (e.g. an unsupported platform).
"""

from __future__ import annotations

import os
import warnings
from types import ModuleType

ENV_VAR = "FASTAPI_TASKFLOW_CORE"


def _load() -> tuple[ModuleType, str]:
    if os.environ.get(ENV_VAR, "").strip().lower() == "python":
        from . import _pycore

        return _pycore, "python"
    try:
        from . import _core
    except ImportError as exc:
        warnings.warn(
            f"fastapi_taskflow: the compiled core could not be loaded ({exc}); "
            "falling back to the slower pure-Python core",
            RuntimeWarning,
            stacklevel=3,
        )
        from . import _pycore

        return _pycore, "python"
    return _core, "rust"


core, CORE_NAME = _load()
