"""Fires ``POST /enqueue`` at a server on 127.0.0.1 over keep-alive connections; prints requests/s.

Standard library only. Several connections each send one request and read the whole response
before the next (no pipelining). Requests are counted only inside the measured window, after
a warm-up; the run is bounded both in time and in number of requests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

REQUEST = b"POST /enqueue HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n"


async def connection(port: int, stop_at: float, counts: dict[str, int], window: tuple[float, float], cap: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < stop_at and counts["sent"] < cap:
            counts["sent"] += 1
            writer.write(REQUEST)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            now = time.perf_counter()
            if not head.startswith(b"HTTP/1.1 200"):
                counts["errors"] += 1
            elif window[0] <= now < window[1]:
                counts["ok"] += 1
    finally:
        writer.close()


async def run(args: argparse.Namespace) -> dict[str, float]:
    start = time.perf_counter()
    window = (start + args.warmup, start + args.warmup + args.duration)
    counts = {"sent": 0, "ok": 0, "errors": 0}
    await asyncio.gather(
        *(connection(args.port, window[1], counts, window, args.max_requests) for _ in range(args.connections))
    )
    measured = min(time.perf_counter(), window[1]) - window[0]
    return {"rps": counts["ok"] / measured, "requests": counts["sent"], "errors": counts["errors"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before the window opens")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds of the measured window")
    parser.add_argument("--max-requests", type=int, default=200_000)
    print(json.dumps(asyncio.run(run(parser.parse_args()))))


if __name__ == "__main__":
    main()
