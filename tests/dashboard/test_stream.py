"""The live stream: numbered deltas, resume with Last-Event-ID, reset, fan-out (over both cores)."""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import orjson
import pytest

from fastapi_taskflow.dashboard.stream import EventHub

pytestmark = pytest.mark.anyio

Frame = dict[str, Any]


@pytest.fixture(params=["_core", "_pycore"])
def make_store(request: pytest.FixtureRequest) -> Callable[..., Any]:
    module = importlib.import_module(f"fastapi_taskflow.{request.param}")
    return lambda **options: module.TaskStore(None, **options)


def parse(chunk: bytes) -> list[Frame]:
    frames = []
    for block in chunk.split(b"\n\n"):
        if not block.strip():
            continue
        frame: Frame = {}
        for line in block.split(b"\n"):
            name, _, value = line.partition(b": ")
            frame[name.decode()] = value.decode()
        if "data" in frame:
            frame["json"] = orjson.loads(frame["data"])
        frames.append(frame)
    return frames


class Reader:
    """Reads frames of one stream, with a deadline on every wait."""

    def __init__(self, stream: AsyncIterator[bytes]) -> None:
        self.stream = stream
        self.frames: list[Frame] = []

    async def until(self, done: Callable[[list[Frame]], bool]) -> list[Frame]:
        with anyio.fail_after(10):
            while not done(self.frames):
                self.frames.extend(parse(await self.stream.__anext__()))
        return self.frames

    def ids(self) -> list[int]:
        return [int(f["id"]) for f in self.frames if "id" in f and "event" not in f]

    async def close(self) -> None:
        await self.stream.aclose()  # type: ignore[attr-defined]


def has_id(seq: int) -> Callable[[list[Frame]], bool]:
    return lambda frames: any(f.get("id") == str(seq) and "event" not in f for f in frames)


def run_task(store: Any, name: str = "job") -> str:
    task_id, _ = store.create(name)
    store.transition(task_id, "running")
    store.append_log(task_id, "working")
    store.transition(task_id, "success")
    return str(task_id)


async def test_fresh_client_gets_hello_then_numbered_deltas(make_store: Callable[..., Any]) -> None:
    store = make_store()
    run_task(store)  # events 1..4, before the client connects
    hub = EventHub(store)
    reader = Reader(hub.stream(None))
    frames = await reader.until(lambda fs: len(fs) >= 1)
    hello = frames[0]
    assert hello["event"] == "hello"
    assert hello["id"] == "4"
    assert hello["json"]["seq"] == 4 and hello["json"]["resumed"] is False
    assert hello["retry"] == "2000"
    task_id = run_task(store)  # events 5..8, live
    await reader.until(has_id(8))
    deltas = [f for f in reader.frames if "event" not in f]
    assert reader.ids() == [5, 6, 7, 8]
    assert [d["json"]["type"] for d in deltas] == ["created", "status", "log", "status"]
    assert deltas[0]["json"]["task"]["task_id"] == task_id
    assert deltas[2]["json"] == {"seq": 7, "type": "log", "task_id": task_id, "line": "working"}
    assert deltas[3]["json"]["task"]["status"] == "success"
    await reader.close()


async def test_reconnecting_client_resumes_without_loss_or_duplicates(make_store: Callable[..., Any]) -> None:
    store = make_store()
    # A small buffer, so that the resume reads the older events from the core's ring and
    # the newer ones from the buffer; the witness keeps the pump running meanwhile.
    hub = EventHub(store, buffered_events=6)
    witness = Reader(hub.stream(None))
    first = Reader(hub.stream(None))
    await first.until(lambda fs: len(fs) >= 1)
    await witness.until(lambda fs: len(fs) >= 1)
    run_task(store)
    await first.until(has_id(4))
    await first.close()
    resume_after = first.ids()[-1]
    for _ in range(4):
        run_task(store)  # happens while the client is away, one pump batch each
        await witness.until(has_id(store.last_seq))
    last = store.last_seq
    assert resume_after < hub._base < last, "the resume must cross from the ring into the buffer"
    second = Reader(hub.stream(resume_after))  # what EventSource sends as Last-Event-ID
    await second.until(has_id(last))
    hello = second.frames[0]
    assert hello["event"] == "hello" and hello["json"]["resumed"] is True and hello["id"] == str(resume_after)
    assert first.ids() + second.ids() == list(range(1, last + 1))
    for reader in (second, witness):
        await reader.close()


async def test_clients_get_the_same_bytes(make_store: Callable[..., Any]) -> None:
    store = make_store()
    hub = EventHub(store)
    readers = [Reader(hub.stream(None)) for _ in range(3)]
    for reader in readers:
        await reader.until(lambda fs: len(fs) >= 1)
    run_task(store)
    for reader in readers:
        await reader.until(has_id(4))
    bodies = [[f["data"] for f in r.frames if "event" not in f] for r in readers]
    assert bodies[0] == bodies[1] == bodies[2]
    assert len(bodies[0]) == 4
    for reader in readers:
        await reader.close()


async def test_client_behind_the_ring_gets_a_reset(make_store: Callable[..., Any]) -> None:
    store = make_store(ring_capacity=4)
    for _ in range(3):
        run_task(store)  # 12 events; the ring keeps the last 4
    hub = EventHub(store)
    reader = Reader(hub.stream(2))
    frames = await reader.until(lambda fs: any(f.get("event") == "reset" for f in fs))
    reset = next(f for f in frames if f.get("event") == "reset")
    assert reset["id"] == "12"
    assert reset["json"]["seq"] == 12
    assert not [f for f in frames if "event" not in f], "no partial history before a reset"
    run_task(store)
    await reader.until(has_id(16))
    assert reader.ids() == [13, 14, 15, 16]
    await reader.close()


async def test_id_from_before_a_server_restart_gets_a_reset(make_store: Callable[..., Any]) -> None:
    store = make_store()
    run_task(store)
    hub = EventHub(store)
    reader = Reader(hub.stream(500))
    frames = await reader.until(lambda fs: any(f.get("event") == "reset" for f in fs))
    assert next(f for f in frames if f.get("event") == "reset")["id"] == "4"
    await reader.close()


async def test_metrics_ticks_carry_metrics_and_a_chart_point(make_store: Callable[..., Any]) -> None:
    store = make_store()
    hub = EventHub(store)
    reader = Reader(hub.stream(None))
    await reader.until(lambda fs: len(fs) >= 1)
    run_task(store, "alpha")
    task_id, _ = store.create("beta")
    store.transition(task_id, "running")
    store.transition(task_id, "failed", error="boom")

    def tick_with_finishes(frames: list[Frame]) -> bool:
        return any(f.get("event") == "metrics" and f["json"]["metrics"]["total"] == 2 for f in frames)

    frames = await reader.until(tick_with_finishes)
    tick = next(f for f in frames if tick_with_finishes([f]))
    assert "id" not in tick, "ticks are not numbered: they do not move Last-Event-ID"
    metrics = tick["json"]["metrics"]
    assert metrics["success"] == 1 and metrics["failed"] == 1
    assert set(metrics["by_name"]) == {"alpha", "beta"}
    points = [f["json"]["point"] for f in frames if f.get("event") == "metrics"]
    assert sum(p["created"] for p in points) == 2
    assert sum(p["finished"] for p in points) == 2
    assert sum(p["failed"] for p in points) == 1
    assert any(p["p50_ms"] is not None for p in points)
    await reader.close()
    # A later client sees the chart so far in its hello.
    later = Reader(hub.stream(None))
    hello = (await later.until(lambda fs: len(fs) >= 1))[0]
    assert len(hello["json"]["series"]) >= len(points)
    await later.close()


async def test_metrics_ticks_carry_the_queues_figures_read_at_each_tick(make_store: Callable[..., Any]) -> None:
    store = make_store()
    figures = [{"name": "email", "concurrency": 2, "max_size": None, "pending": 0, "running": 0}]
    hub = EventHub(store, queue_stats=lambda: [dict(q) for q in figures])
    reader = Reader(hub.stream(None))
    ticks = await reader.until(lambda fs: any(f.get("event") == "metrics" for f in fs))
    assert next(f for f in ticks if f.get("event") == "metrics")["json"]["queues"] == figures
    figures[0]["running"] = 2

    def tick_with_running(frames: list[Frame]) -> bool:
        return any(f.get("event") == "metrics" and f["json"]["queues"][0]["running"] == 2 for f in frames)

    await reader.until(tick_with_running)
    await reader.close()
    # Without queue figures (a hub on its own store) the tick has no "queues" key.
    plain = Reader(EventHub(store).stream(None))
    frames = await plain.until(lambda fs: any(f.get("event") == "metrics" for f in fs))
    assert "queues" not in next(f for f in frames if f.get("event") == "metrics")["json"]
    await plain.close()
