"""The distribution version, which the Rust core takes from ``Cargo.toml``."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__: str = version("fastapi-taskflow-rs")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0.0.0+unknown"
