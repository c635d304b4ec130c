"""``make bench-sse``: 200 dashboard SSE clients against a real uvicorn process that is running tasks.

For each history size (1k and 1M finished tasks, filled through ``core.create``/``transition``
before the server accepts connections, all in memory: ``max_history`` = the history size) the
script starts ``uvicorn sse_fanout:make_app`` and runs two phases of the same paced load
(``POST /enqueue?n=100`` a fixed number of times a second, each a batch of no-op tasks):

* 0 SSE clients: the server's CPU per event for running the tasks alone (the pump is idle);
* 200 SSE clients on ``/tasks/dashboard/stream``, held by a separate client process (raw
  asyncio sockets, loopback), which counts the ``id:`` frames each client receives.

Figures per phase: events produced per second (the core's ``last_seq`` delta), events delivered
per second summed over the clients, the server process's CPU time (utime + stime from
``/proc/<pid>/stat``) per event produced, the clients' largest lag behind the core's newest
sequence number (sampled every 0.25 s), and events lost (a client's sequence advance minus the
frames it counted; 0 means every client saw every event). The table goes to stdout and to
``benches/sse_results.md``.

Run as ``python benches/sse_fanout.py`` (the orchestrator); ``--clients URL N`` is the client
process it starts.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from fastapi import FastAPI
from machine import commit
from reads import fill

from fastapi_taskflow import ManagedBackgroundTasks, TaskAdmin, TaskManager

HERE = Path(__file__).resolve().parent
RESULTS_FILE = HERE / "sse_results.md"
HISTORY_ENV = "SSE_BENCH_HISTORY"
STREAM_PATH = "/tasks/dashboard/stream"
HISTORIES = (1_000, 1_000_000)
CLIENTS = 200
#: Seconds of load per phase.
DURATION = 10.0
#: ``POST /enqueue?n=BATCH`` requests per second.
RATE = 10.0
BATCH = 100
#: Seconds the clients get, after the load stops, to reach the core's newest event.
DRAIN_SECONDS = 10.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# -- the app served by uvicorn -------------------------------------------------------------


def make_app() -> FastAPI:
    """``uvicorn --factory sse_fanout:make_app``: a dashboard app whose history is filled first."""
    history = int(os.environ.get(HISTORY_ENV, "1000"))
    manager = TaskManager(max_history=history)
    core = manager.core
    started = time.perf_counter()
    fill(core, history)
    print(f"filled {history:,} finished tasks in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)

    app = FastAPI()
    TaskAdmin(app, manager, auto_install=True)

    @manager.task()
    async def noop() -> None:
        return None

    @app.post("/enqueue")
    async def enqueue(tasks: ManagedBackgroundTasks, n: int = 1) -> dict[str, int]:
        for _ in range(n):
            tasks.add_task(noop)
        return {"queued": n}

    @app.get("/seq")
    async def seq() -> dict[str, int]:
        return {"seq": core.last_seq}

    return app


# -- the client process ----------------------------------------------------------------------

#: Marks an event's number; JSON escapes newlines, so it never occurs inside a data line.
ID_MARK = b"\nid: "


@dataclass
class Client:
    seq: int = 0
    frames: int = 0
    received: int = 0
    tail: bytes = b""
    connected: bool = False
    closed: bool = False
    error: str = ""

    def feed(self, data: bytes) -> None:
        self.received += len(data)
        buf = self.tail + data
        self.frames += buf.count(ID_MARK)
        at = buf.rfind(ID_MARK)
        end = buf.find(b"\n", at + len(ID_MARK)) if at >= 0 else -1
        if at >= 0 and end < 0:
            # The newest id line is not complete: keep it, it is counted again with the rest.
            self.frames -= 1
            self.tail = buf[at:]
            return
        if at >= 0:
            self.seq = int(buf[at + len(ID_MARK) : end])
        self.tail = buf[-(len(ID_MARK) - 1) :]


async def _http_get(host: str, port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    return data.split(b"\r\n\r\n", 1)[1]


async def _server_seq(host: str, port: int) -> int:
    body = await _http_get(host, port, "/seq")
    seq: int = json.loads(body)["seq"]
    return seq


async def _follow(host: str, port: int, client: Client) -> None:
    try:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(f"GET {STREAM_PATH} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        if b" 200 " not in head.split(b"\r\n", 1)[0]:
            raise RuntimeError(head.decode(errors="replace"))
        client.connected = True
        while data := await reader.read(1 << 16):
            client.feed(data)
        writer.close()
    except (OSError, RuntimeError, asyncio.IncompleteReadError) as exc:
        client.error = repr(exc)
    finally:
        client.closed = True


async def _read_line(stdin: asyncio.StreamReader) -> str:
    return (await stdin.readline()).decode().strip()


async def clients_main(url: str, count: int) -> None:
    """Hold ``count`` streams; ``go`` starts counting, ``stop`` ends the window and reports JSON."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    clients = [Client() for _ in range(count)]
    tasks = [asyncio.create_task(_follow(host, port, client)) for client in clients]
    deadline = time.monotonic() + 30
    while not all(c.connected or c.closed for c in clients) or any(c.frames == 0 and not c.closed for c in clients):
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    print(json.dumps({"connected": sum(c.connected and not c.closed for c in clients)}), flush=True)

    assert await _read_line(stdin) == "go"
    cpu0 = time.process_time()
    started = time.monotonic()
    base = [(c.frames, c.seq) for c in clients]
    received = sum(c.received for c in clients)
    max_lag = 0
    stop = asyncio.ensure_future(_read_line(stdin))
    while not stop.done():
        newest = await _server_seq(host, port)
        max_lag = max(max_lag, newest - min(c.seq for c in clients if not c.closed))
        await asyncio.wait([stop], timeout=0.25)
    elapsed = time.monotonic() - started
    delivered = sum(c.frames - f0 for c, (f0, _) in zip(clients, base, strict=True))

    # Let every client reach the newest event, then check none was skipped.
    drain_deadline = time.monotonic() + DRAIN_SECONDS
    drained = False
    while time.monotonic() < drain_deadline:
        newest = await _server_seq(host, port)
        if all(c.seq >= newest for c in clients if not c.closed):
            drained = True
            break
        await asyncio.sleep(0.1)
    lost = sum((c.seq - s0) - (c.frames - f0) for c, (f0, s0) in zip(clients, base, strict=True))
    report = {
        "elapsed": elapsed,
        "delivered": delivered,
        "received": sum(c.received for c in clients) - received,
        "max_lag": max_lag,
        "drained": drained,
        "lost": lost,
        "open": sum(not c.closed for c in clients),
        "errors": sorted({c.error for c in clients if c.error})[:3],
        "cpu": time.process_time() - cpu0,
    }
    print(json.dumps(report), flush=True)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# -- the orchestrator ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _cpu_seconds(pid: int) -> tuple[float, float]:
    """utime and stime of a process, in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    # Fields 14 and 15 of stat(5); the list starts at field 3 (state).
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


@dataclass
class Phase:
    history: int
    clients: int
    produced_per_s: float = 0.0
    delivered_per_s: float = 0.0
    mb_per_s: float | None = None
    cpu_us_per_event: float = 0.0
    sys_us_per_event: float = 0.0
    cpu_share: float = 0.0
    max_lag: int | None = None
    lost: int | None = None
    drained: bool | None = None
    client_cpu_share: float | None = None
    notes: list[str] = field(default_factory=list)


def _read_json(stream: IO[str]) -> dict[str, Any]:
    line = stream.readline()
    if not line:
        raise RuntimeError("the client process exited")
    result: dict[str, Any] = json.loads(line)
    return result


def run_phase(httpx_client: Any, url: str, pid: int, history: int, clients: int) -> Phase:
    phase = Phase(history, clients)
    proc: subprocess.Popen[str] | None = None
    if clients:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--clients", url, str(clients)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdin is not None and proc.stdout is not None
        connected = _read_json(proc.stdout)["connected"]
        if connected != clients:
            phase.notes.append(f"only {connected} of {clients} clients connected")
        time.sleep(1.0)  # let the pump settle after the burst of connections
        proc.stdin.write("go\n")
        proc.stdin.flush()
    seq0 = httpx_client.get("/seq").json()["seq"]
    (user0, sys0), t0 = _cpu_seconds(pid), time.monotonic()
    interval = 1.0 / RATE
    next_at = t0
    behind = 0
    while (now := time.monotonic()) < t0 + DURATION:
        if now < next_at:
            time.sleep(next_at - now)
        elif now - next_at > interval:
            behind += 1
        httpx_client.post("/enqueue", params={"n": BATCH}).raise_for_status()
        next_at += interval
    time.sleep(0.2)  # the last batch's tasks run after its response
    seq1 = httpx_client.get("/seq").json()["seq"]
    (user1, sys1), t1 = _cpu_seconds(pid), time.monotonic()
    events = seq1 - seq0
    cpu = user1 - user0 + sys1 - sys0
    phase.produced_per_s = events / (t1 - t0)
    phase.cpu_us_per_event = cpu / max(events, 1) * 1e6
    phase.sys_us_per_event = (sys1 - sys0) / max(events, 1) * 1e6
    phase.cpu_share = cpu / (t1 - t0)
    if behind:
        phase.notes.append(f"the load driver was more than one request behind its pace on {behind} requests")
    if proc is not None:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("stop\n")
        proc.stdin.flush()
        report = _read_json(proc.stdout)
        proc.wait(timeout=30)
        phase.delivered_per_s = report["delivered"] / report["elapsed"]
        phase.mb_per_s = report["received"] / report["elapsed"] / 1e6
        phase.max_lag = report["max_lag"]
        phase.lost = report["lost"]
        phase.drained = report["drained"]
        phase.client_cpu_share = report["cpu"] / report["elapsed"]
        if report["open"] != clients:
            phase.notes.append(f"{clients - report['open']} streams closed early: {report['errors']}")
    return phase


def run_history(history: int) -> list[Phase]:
    import httpx

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, HISTORY_ENV: str(history)}
    command = [sys.executable, "-m", "uvicorn", "--factory", "sse_fanout:make_app", "--port", str(port)]
    server = subprocess.Popen(
        [*command, "--log-level", "warning", "--no-access-log"],
        cwd=HERE,
        env=env,
    )
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            deadline = time.monotonic() + 120
            while True:
                if server.poll() is not None:
                    raise RuntimeError("uvicorn exited early")
                try:
                    client.get("/seq")
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            phases = []
            for clients in (0, CLIENTS):
                phase = run_phase(client, url, server.pid, history, clients)
                print(f"history {history:,}, {clients} clients: {phase}", file=sys.stderr, flush=True)
                phases.append(phase)
            return phases
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()


def _fmt(value: float | int | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render(phases: list[Phase]) -> str:
    lines = [
        f"## Dashboard SSE fan-out ({datetime.date.today().isoformat()}, {commit()})",
        "",
        f"Machine: {os.cpu_count()} CPUs shared with other work, Python {platform.python_version()}; the uvicorn "
        "server, the client process (all SSE readers, raw asyncio sockets) and the load driver share those "
        "cores, so the client process's CPU is shown too. "
        f"Load: `POST /enqueue?n={BATCH}` {RATE:g} times a second for {DURATION:g} s (no-op tasks; each task is "
        "3 events: created, running, success). History is in memory (`max_history` = history size), filled "
        "through `core.create`/`transition` before serving. Server CPU = utime + stime of the uvicorn process "
        "over the load window, divided by the events produced (in brackets: the kernel's part, stime). "
        "Lag: the core's newest sequence number minus "
        "the slowest client's, sampled every 0.25 s (the pump polls every 0.1 s). Lost: sequence advance "
        "minus `id:` frames counted, over all clients.",
        "",
        "| history | SSE clients | events produced/s | events delivered/s (all clients) | MB/s to clients | "
        "delivered / (produced x clients) | server CPU µs/event (of which kernel) | server CPU (cores) | "
        "max lag (events) | lost | caught up | client process CPU (cores) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for p in phases:
        ratio = p.delivered_per_s / (p.produced_per_s * p.clients) if p.clients and p.produced_per_s else None
        caught = "-" if p.drained is None else ("yes" if p.drained else "no")
        lines.append(
            f"| {p.history:,} | {p.clients} | {p.produced_per_s:,.0f} | "
            f"{_fmt(p.delivered_per_s if p.clients else None, ',.0f')} | {_fmt(p.mb_per_s, '.1f')} | "
            f"{_fmt(ratio, '.3f')} | "
            f"{p.cpu_us_per_event:,.1f} ({p.sys_us_per_event:,.1f}) | {p.cpu_share:.2f} | "
            f"{_fmt(p.max_lag, ',')} | {_fmt(p.lost, ',')} | "
            f"{caught} | {_fmt(p.client_cpu_share, '.2f')} |"
        )
    lines.append("")
    by_history: dict[int, dict[int, Phase]] = {}
    for p in phases:
        by_history.setdefault(p.history, {})[p.clients] = p
    for history, pair in by_history.items():
        if 0 in pair and CLIENTS in pair:
            extra = pair[CLIENTS].cpu_us_per_event - pair[0].cpu_us_per_event
            lines.append(
                f"- {history:,} in history: {CLIENTS} clients add {extra:,.1f} µs of server CPU per event "
                f"({extra / CLIENTS:.2f} µs per event per client)."
            )
    for p in phases:
        for note in p.notes:
            lines.append(f"- {p.history:,} / {p.clients} clients: {note}")
    return "\n".join(lines) + "\n"


def main() -> None:
    global RATE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--clients", nargs=2, metavar=("URL", "N"), help="(internal) run the client process")
    parser.add_argument("--histories", default=",".join(str(h) for h in HISTORIES), help="comma-separated sizes")
    parser.add_argument("--rate", type=float, default=RATE, help="enqueue requests per second")
    parser.add_argument("--out", type=Path, default=RESULTS_FILE, help="where the table is written")
    args = parser.parse_args()
    RATE = args.rate
    if args.clients:
        asyncio.run(clients_main(args.clients[0], int(args.clients[1])))
        return
    phases: list[Phase] = []
    for history in (int(h) for h in args.histories.split(",")):
        phases.extend(run_history(history))
    table = render(phases)
    print(table)
    args.out.write_text(table)


if __name__ == "__main__":
    main()
