"""Observers of task activity: the base class, its events, and the built-in loggers."""

from __future__ import annotations

from .base import LifecycleEvent, LogEvent, TaskObserver
from .chain import LoggerChain
from .file import FileLogger
from .memory import InMemoryLogger
from .stdout import StdoutLogger

__all__ = [
    "FileLogger",
    "InMemoryLogger",
    "LifecycleEvent",
    "LogEvent",
    "LoggerChain",
    "StdoutLogger",
    "TaskObserver",
]
