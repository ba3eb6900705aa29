"""What the loopback servers run as programs share: announce the port, serve until a signal or a time limit."""

from __future__ import annotations

import asyncio
import signal
import sys


async def serve_until_stopped(server: asyncio.Server, max_seconds: float, name: str) -> None:
    """Print the bound port (the parent reads it), then serve until SIGTERM/SIGINT or ``max_seconds``."""
    print(server.sockets[0].getsockname()[1], flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await asyncio.wait_for(stop.wait(), max_seconds)
    except TimeoutError:
        print(f"{name}: --max-seconds reached, stopping", file=sys.stderr)
    server.close()
