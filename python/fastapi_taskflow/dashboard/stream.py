"""The dashboard's live stream: numbered deltas from the core's event ring, as Server-Sent Events.

One pump per application reads new events from the core, frames each one once
(``id: <seq>`` + ``data: <event JSON>``) and keeps the frames of the last few thousand
events; every connected client copies bytes from there, so framing an event costs the
same for one client as for two hundred. A client that reconnects with ``Last-Event-ID``
is served the events it missed, from that buffer or else straight from the core's ring;
a client that fell further behind than the ring reaches gets a ``reset`` event and
reloads what it shows.

Besides task events the pump sends, once a second, a ``metrics`` event: the core's
metrics, the named queues' figures (when the hub is given them) and one point (tasks
created and finished, latency percentiles) of the throughput and latency charts. Queue
figures ride on the tick because they change with every start and end, and one frame
built for every client costs less than each open Queues tab polling for them.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from .._core import TaskStore

#: Seconds between two looks at the core's newest sequence number.
POLL_INTERVAL = 0.1
#: Seconds between two ``metrics`` events (and chart points).
TICK_INTERVAL = 1.0
#: Events whose frames the pump keeps for clients that lag or reconnect.
BUFFERED_EVENTS = 8_192
#: Events read from the core in one call.
READ_BATCH = 1_000
#: Chart points kept: ten minutes at one a second.
SERIES_POINTS = 600
#: Milliseconds a browser waits before it reconnects.
RECONNECT_MS = 2_000
#: Seconds after which a stream ends and the browser reconnects (resuming with Last-Event-ID):
#: bounds how long a proxy or a server other than uvicorn waits on it at shutdown.
MAX_STREAM_SECONDS = 300.0

_FAILED = frozenset({"failed", "interrupted", "rejected"})


def frame_event(seq: int, body: bytes) -> bytes:
    """One numbered SSE frame; the core's JSON is one line, so it is one ``data:`` field."""
    return b"id: %d\ndata: %s\n\n" % (seq, body)


def frame_named(event: str, body: bytes, seq: int | None = None) -> bytes:
    head = b"" if seq is None else b"id: %d\n" % seq
    return b"%sevent: %s\ndata: %s\n\n" % (head, event.encode(), body)


def server_is_stopping() -> bool:
    """True once uvicorn was asked to exit.

    Uvicorn waits for open responses before it shuts down, and a live stream never
    ends by itself, so streams watch for the exit request and end first. Uvicorn's
    signal handler is a method of its server, which carries the flag.
    """
    handler = signal.getsignal(signal.SIGTERM)
    owner = getattr(handler, "__self__", None)
    return bool(getattr(owner, "should_exit", False))


@dataclass(frozen=True, slots=True)
class _Batch:
    first: int
    last: int
    frames: list[bytes]
    joined: bytes

    def after(self, cursor: int) -> bytes:
        if cursor < self.first:
            return self.joined
        return b"".join(self.frames[cursor + 1 - self.first :])


class _Window:
    """Events of the current chart point."""

    def __init__(self) -> None:
        self.created = 0
        self.finished = 0
        self.failed = 0
        self.durations: list[float] = []

    def add(self, body: bytes) -> None:
        event = orjson.loads(body)
        kind = event.get("type")
        if kind == "created":
            self.created += 1
        elif kind == "status":
            task = event.get("task") or {}
            duration = task.get("duration")
            if task.get("end_time") is not None:
                self.finished += 1
                if task.get("status") in _FAILED:
                    self.failed += 1
                if isinstance(duration, (int, float)):
                    self.durations.append(float(duration))

    def point(self, at: float, seconds: float) -> dict[str, Any]:
        durations = sorted(self.durations)

        def quantile(q: float) -> float | None:
            if not durations:
                return None
            return round(durations[min(len(durations) - 1, int(q * len(durations)))] * 1000, 3)

        return {
            "t": int(at * 1000),
            "s": round(seconds, 3),
            "created": self.created,
            "finished": self.finished,
            "failed": self.failed,
            "p50_ms": quantile(0.5),
            "p95_ms": quantile(0.95),
            "max_ms": round(durations[-1] * 1000, 3) if durations else None,
        }


class EventHub:
    """Reads the core's events once and fans the framed bytes out to every client."""

    def __init__(
        self,
        core: TaskStore,
        *,
        buffered_events: int = BUFFERED_EVENTS,
        queue_stats: Callable[[], list[dict[str, Any]]] | None = None,
    ) -> None:
        self.core = core
        self._queue_stats = queue_stats
        self.boot = secrets.token_hex(8)
        self.series: deque[dict[str, Any]] = deque(maxlen=SERIES_POINTS)
        self._buffered_events = buffered_events
        self._batches: deque[_Batch] = deque()
        self._base = 0  # the buffer holds every event with a sequence number above this
        self._seq = 0  # newest event read by the pump
        self._metrics_frame = b""
        self._metrics_generation = 0
        self._clients = 0
        self._pump: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed = asyncio.Event()
        self._stopping = False
        self._window = _Window()

    @property
    def seq(self) -> int:
        return self._seq

    # -- clients ----------------------------------------------------------------------

    def _subscribe(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # A new event loop (a restarted server, a new test client): fresh primitives.
            self._loop, self._pump, self._changed = loop, None, asyncio.Event()
        self._clients += 1
        if self._pump is None:
            self._base = self._seq = self.core.last_seq
            self._batches.clear()
            self._window = _Window()
            self._stopping = False
            self._pump = loop.create_task(self._run(), name="taskflow-dashboard-stream")

    def _unsubscribe(self) -> None:
        self._clients -= 1

    async def stream(self, after: int | None, *, expires_at: float | None = None) -> AsyncIterator[bytes]:
        """The SSE body for one client that has seen every event up to ``after``."""
        self._subscribe()
        try:
            cursor = self._seq if after is None else after
            hello = {"seq": cursor, "boot": self.boot, "resumed": after is not None, "series": list(self.series)}
            yield b"retry: %d\n" % RECONNECT_MS + frame_named("hello", orjson.dumps(hello), cursor)
            if self._metrics_frame:
                yield self._metrics_frame
            metrics_seen = self._metrics_generation
            ends_at = time.monotonic() + MAX_STREAM_SECONDS
            while True:
                if self._stopping or time.monotonic() >= ends_at:
                    return
                if expires_at is not None and time.time() >= expires_at:
                    return
                changed = self._changed
                chunk, cursor = self._read(cursor)
                if chunk:
                    yield chunk
                    continue
                if metrics_seen != self._metrics_generation:
                    metrics_seen = self._metrics_generation
                    yield self._metrics_frame
                    continue
                try:
                    await asyncio.wait_for(changed.wait(), timeout=min(15.0, max(0.0, ends_at - time.monotonic())))
                except asyncio.TimeoutError:
                    yield b": keep-alive\n\n"
        finally:
            self._unsubscribe()

    def _read(self, cursor: int) -> tuple[bytes, int]:
        """Frames of the events after ``cursor`` that are ready, and the new cursor."""
        if cursor >= self._base:
            if cursor > self._seq:
                if cursor > self.core.last_seq:
                    # An id from before a restart of the server: what the client shows is stale.
                    return self._reset()
                return b"", cursor
            parts = [batch.after(cursor) for batch in self._batches if batch.last > cursor]
            return b"".join(parts), self._seq
        # Behind the buffer: catch up from the core's ring, a chunk at a time.
        events, missed = self.core.events_since(cursor, min(READ_BATCH, self._base - cursor))
        if missed:
            return self._reset()
        if not events:
            return b"", cursor
        return b"".join(frame_event(seq, body) for seq, body in events), events[-1][0]

    def _reset(self) -> tuple[bytes, int]:
        seq = self._seq
        return frame_named("reset", orjson.dumps({"seq": seq, "boot": self.boot}), seq), seq

    # -- the pump ----------------------------------------------------------------------

    async def _run(self) -> None:
        next_tick = time.monotonic() + TICK_INTERVAL
        last_tick = time.time()
        while True:
            if self._clients <= 0 or server_is_stopping():
                # No await between this check and clearing the task: a client that
                # subscribes right after sees no pump and starts one.
                self._stopping = self._clients > 0
                self._pump = None
                self._wake()
                return
            self._pull()
            if time.monotonic() >= next_tick:
                now = time.time()
                self._tick(now, now - last_tick)
                last_tick, next_tick = now, time.monotonic() + TICK_INTERVAL
            await asyncio.sleep(POLL_INTERVAL)

    def _pull(self) -> None:
        if self.core.last_seq <= self._seq:
            return
        while True:
            events, missed = self.core.events_since(self._seq, READ_BATCH)
            if missed:
                # The pump itself fell behind the ring: the buffer restarts where the
                # ring starts, and clients behind it get a reset from _read.
                self._batches.clear()
                self._base = events[0][0] - 1 if events else self.core.last_seq
                self._seq = self._base
            if not events:
                break
            frames = []
            for seq, body in events:
                frames.append(frame_event(seq, body))
                self._window.add(body)
            self._batches.append(_Batch(events[0][0], events[-1][0], frames, b"".join(frames)))
            self._seq = events[-1][0]
            if len(events) < READ_BATCH:
                break
        while self._batches and self._seq - self._batches[0].last >= self._buffered_events:
            self._base = self._batches.popleft().last
        self._wake()

    def _tick(self, now: float, seconds: float) -> None:
        point = self._window.point(now, seconds)
        self._window = _Window()
        self.series.append(point)
        queues = b"" if self._queue_stats is None else b',"queues":' + orjson.dumps(self._queue_stats())
        body = b'{"metrics":%s,"point":%s%s}' % (self.core.metrics_json(), orjson.dumps(point), queues)
        self._metrics_frame = frame_named("metrics", body)
        self._metrics_generation += 1
        self._wake()

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
