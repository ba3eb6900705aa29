"""A loopback stand-in for the sync backend, built not to be the bottleneck: asyncio streams, HTTP/1.1 keep-alive.

Every POST answers 200 {"emails_synced": 1} after ``--latency`` seconds (asyncio.sleep, so thousands of calls can
wait at once); GET /health answers 200; GET /_stats answers the counters as JSON (requests, syncs, connections,
peak in-flight calls, peak open connections); GET /_turnaround answers the client's turnaround since it was last
asked: from a sync answer sent to the next request's head read on the same connection, what the client spends
between two calls (this stand-in's own scheduling included), as a count, a mean and percentiles in ms. Prints its
port on stdout, then serves until SIGTERM/SIGINT or ``--max-seconds``. Stdlib only; binds 127.0.0.1 only.

The benchmark's backend, and tests/installed's for runs of tens of thousands of calls, where the threaded stand-in
(harness/backend.py) would be the bottleneck. Run from the repository's root::

    python -m harness.fast_backend [--latency SECONDS] [--port PORT] [--max-seconds SECONDS]
"""

from __future__ import annotations

import argparse
import asyncio
import json

from harness.serving import serve_until_stopped

BODY = b'{"emails_synced": 1}'
SYNC_ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
    + str(len(BODY)).encode()
    + b"\r\n\r\n"
    + BODY
)
MAX_HEADER = 64 * 1024
MAX_BODY = 1024 * 1024


class Stats:
    def __init__(self) -> None:
        self.requests = 0
        self.syncs = 0
        self.connections = 0
        self.open = 0
        self.peak_open = 0
        self.in_flight = 0
        self.peak_in_flight = 0
        self.turnarounds: list[float] = []

    def as_json(self) -> bytes:
        return json.dumps({k: v for k, v in self.__dict__.items() if k != "turnarounds"}).encode()

    def take_turnaround(self) -> bytes:
        """The turnarounds since the last call, summarized, and forgotten."""
        samples, self.turnarounds = sorted(self.turnarounds), []
        summary: dict[str, float] = {"count": len(samples)}
        if samples:
            summary["mean_ms"] = 1000 * sum(samples) / len(samples)
            for p in (50, 90, 99):
                summary[f"p{p}_ms"] = 1000 * samples[min(len(samples) - 1, len(samples) * p // 100)]
        return json.dumps(summary).encode()


def answer(status: str, body: bytes, close: bool = False) -> bytes:
    extra = b"Connection: close\r\n" if close else b""
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n".encode()
        + extra
        + b"\r\n"
        + body
    )


async def serve(latency: float, max_seconds: float, port: int) -> None:
    stats = Stats()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stats.connections += 1
        stats.open += 1
        stats.peak_open = max(stats.peak_open, stats.open)
        loop = asyncio.get_running_loop()
        answered_at: float | None = None  # when this connection's last sync answer was sent
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                if answered_at is not None:
                    stats.turnarounds.append(loop.time() - answered_at)
                    answered_at = None
                lines = head.split(b"\r\n")
                parts = lines[0].split(b" ")
                if len(parts) != 3:
                    writer.write(answer("400 Bad Request", b"{}", close=True))
                    return
                method, path = parts[0], parts[1]
                length = 0
                close = False
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value.strip())
                    elif name == b"connection" and value.strip().lower() == b"close":
                        close = True
                if length > MAX_BODY:
                    writer.write(answer("413 Payload Too Large", b"{}", close=True))
                    return
                if length:
                    try:
                        await reader.readexactly(length)
                    except (asyncio.IncompleteReadError, ConnectionError):
                        return
                stats.requests += 1
                if method == b"POST":
                    stats.syncs += 1
                    stats.in_flight += 1
                    stats.peak_in_flight = max(stats.peak_in_flight, stats.in_flight)
                    if latency > 0:
                        await asyncio.sleep(latency)
                    stats.in_flight -= 1
                    writer.write(SYNC_ANSWER if not close else answer("200 OK", BODY, close=True))
                    answered_at = loop.time()
                elif path == b"/_turnaround":
                    writer.write(answer("200 OK", stats.take_turnaround(), close))
                elif path == b"/_stats":
                    writer.write(answer("200 OK", stats.as_json(), close))
                else:  # /health and anything else
                    writer.write(answer("200 OK", b'{"ok": true}', close))
                if close:
                    await writer.drain()
                    return
                if writer.transport.get_write_buffer_size() > 64 * 1024:
                    await writer.drain()
        finally:
            stats.open -= 1
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096, limit=MAX_HEADER)
    await serve_until_stopped(server, max_seconds, "backend")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each POST is answered")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=3600, help="stop by itself after this long")
    args = parser.parse_args()
    asyncio.run(serve(args.latency, args.max_seconds, args.port))


if __name__ == "__main__":
    main()
