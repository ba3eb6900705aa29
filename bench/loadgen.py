"""Load generator for harness/fast_backend.py: keep-alive raw-socket clients (asyncio), one request at a time on each
connection like email-sync's threads. Runs ``--procs`` processes of ``--connections`` connections each for
``--duration`` seconds against 127.0.0.1:``--port`` and prints one JSON line: requests, seconds, rate.
Bounded: each client stops at the deadline (and after ``--max-requests``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import time

BODY = b'{"user_id": 1, "email": "user1@example.com", "max_emails": 50}'
REQUEST = (
    b"POST /api/v1/sync/start HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: loadgen\r\nAccept: */*\r\n"
    b"Content-Type: application/json\r\nContent-Length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY
)


async def client(port: int, deadline: float, max_requests: int) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    done = 0
    try:
        while time.monotonic() < deadline and done < max_requests:
            writer.write(REQUEST)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(head[:100])
            await reader.readexactly(length)
            done += 1
    finally:
        writer.close()
    return done


async def run_clients(port: int, connections: int, start_at: float, duration: float, max_requests: int) -> int:
    await asyncio.sleep(max(0.0, start_at - time.time()))
    deadline = time.monotonic() + duration
    counts = await asyncio.gather(*(client(port, deadline, max_requests) for _ in range(connections)))
    return sum(counts)


def worker(args: tuple[int, int, float, float, int]) -> int:
    return asyncio.run(run_clients(*args))


def measure(port: int, connections: int, duration: float, procs: int = 1, max_requests: int = 10_000_000) -> dict:
    """Total rate over ``procs`` processes that start together (wall-clock rendezvous)."""
    start_at = time.time() + 0.5
    per = max(1, connections // procs)
    with multiprocessing.get_context("spawn").Pool(procs) as pool:
        counts = pool.map(worker, [(port, per, start_at, duration, max_requests)] * procs)
    total = sum(counts)
    return {
        "requests": total,
        "seconds": duration,
        "rate": total / duration,
        "connections": per * procs,
        "procs": procs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--procs", type=int, default=1)
    args = parser.parse_args()
    print(json.dumps(measure(args.port, args.connections, min(args.duration, 60.0), args.procs)))


if __name__ == "__main__":
    main()
