"""Deadlines for requests to the backend: a request's socket is shut down when its time is up.

urllib3's timeouts bound each wait for a byte, so an answer sent a byte at a time (its status line, its headers or
its body) never times out. One thread, the reaper, knows the deadline of every request in flight and shuts the
socket it reads from down when the deadline passes; the blocked read then returns at once and the request fails.
It sleeps until the earliest deadline, so a request costs it a dictionary entry, not a wake-up.
"""

from __future__ import annotations

import contextlib
import math
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection


@dataclass
class _Request:
    deadline: float
    sock: socket.socket | None = None  # known once the answer is awaited


class Reaper:
    """The deadlines of the requests in flight, by thread, and the thread that enforces them (started at first use)."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._requests: dict[int, _Request] = {}  # by thread: a thread makes one request at a time
        self._wakes_at = math.inf
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def deadline(self, at: float) -> Iterator[None]:
        """Within this block, the answer this thread awaits is cut off at ``at`` (time.monotonic()).

        Once the block is left no socket of this thread is shut down any more; a caller that finds itself past
        ``at`` then must not reuse the connection, as it may have been shut down as the answer ended.
        """
        me = threading.get_ident()
        with self._lock:
            self._requests[me] = _Request(at)
            if self._thread is None:
                self._thread = threading.Thread(target=self._reap, name="deadlines", daemon=True)
                self._thread.start()
            if at < self._wakes_at:
                self._lock.notify()
        try:
            yield
        finally:
            with self._lock:
                del self._requests[me]

    def awaiting(self, sock: socket.socket | None) -> None:
        """This thread's request now waits for its answer on ``sock``."""
        with self._lock:
            request = self._requests.get(threading.get_ident())
            if request is None:
                return
            request.sock = sock
            if sock is not None and request.deadline <= time.monotonic():
                _shut(sock)

    def _reap(self) -> None:
        with self._lock:
            while True:
                now = time.monotonic()
                for request in self._requests.values():
                    if request.deadline <= now and request.sock is not None:
                        _shut(request.sock)
                        request.sock = None
                self._wakes_at = min(
                    (r.deadline for r in self._requests.values() if r.deadline > now), default=math.inf
                )
                self._lock.wait(None if self._wakes_at == math.inf else self._wakes_at - now)


def _shut(sock: socket.socket) -> None:
    """Shut the socket down under whatever reads from it; the plain socket's shutdown leaves a TLS layer intact for
    its reader to fail on. A socket already closed (its request ended as its time did) has nothing to stop."""
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


REAPER = Reaper()


class WatchedConnection(HTTPConnection):
    """A connection whose awaited answer the reaper cuts off at the request's deadline."""

    def getresponse(self) -> urllib3.HTTPResponse:  # type: ignore[override]  # as urllib3's own, which it wraps
        REAPER.awaiting(self.sock)
        return super().getresponse()


class WatchedTLSConnection(WatchedConnection, HTTPSConnection):
    """The same over TLS."""
