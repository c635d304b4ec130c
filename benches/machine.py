"""What the bench reports say about where they ran: CPU, Python, commit."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def describe() -> str:
    """``2 CPUs, <model>, Python 3.11.7 on Linux``."""
    return f"{os.cpu_count()} CPUs, {cpu_model()}, Python {platform.python_version()} on {platform.system()}"


def commit() -> str:
    """``git describe`` of the tree measured, or ``unknown``."""
    try:
        return subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=HERE, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
