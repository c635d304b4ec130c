"""Delivers task events to observers on a thread of their own.

The event loop serving requests only puts events on a queue; a dedicated thread
with its own event loop awaits the observers. An observer that blocks or raises
therefore never stalls the application or fails a task.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading

from .loggers.base import LifecycleEvent, LogEvent, TaskObserver

logger = logging.getLogger("fastapi_taskflow")

#: Events waiting for slow observers beyond this are dropped (and counted) so memory stays bounded.
MAX_PENDING_EVENTS = 100_000

_STOP = object()


class ObserverThread:
    """Runs ``observer`` hooks in order, one event at a time, on a daemon thread."""

    def __init__(self, observer: TaskObserver) -> None:
        self.observer = observer
        self.dropped = 0
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def emit(self, event: LogEvent | LifecycleEvent) -> None:
        """Queue an event; callable from any thread."""
        if self._thread is None:
            self.start()
        if self._queue.qsize() >= MAX_PENDING_EVENTS:
            self.dropped += 1
            return
        self._queue.put(event)

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="taskflow-observers", daemon=True)
                self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Deliver what is queued, close the observers, and end the thread."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is None:
            return
        self._queue.put(_STOP)
        thread.join(timeout)
        if thread.is_alive():
            logger.warning("fastapi_taskflow: observers still busy after %.0f s; leaving them", timeout)
        if self.dropped:
            logger.warning("fastapi_taskflow: %d events were dropped for slow observers", self.dropped)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self.observer.startup())
            while (item := self._queue.get()) is not _STOP:
                if isinstance(item, LogEvent):
                    loop.run_until_complete(self.observer.on_log(item))
                elif isinstance(item, LifecycleEvent):
                    loop.run_until_complete(self.observer.on_lifecycle(item))
            loop.run_until_complete(self.observer.close())
        except Exception:
            logger.exception("fastapi_taskflow: the observer thread stopped")
        finally:
            loop.close()
