"""HTTP/1.1 on one kept-alive connection, as the backend's calls need it: a request in one write, the answer parsed
from what arrives, and every wait for a byte bounded by the call's deadline.

Our own rather than urllib3 over http.client because a run at latency 0 is bound by the CPU of its calls, and that
stack spends most of a call's CPU on work a small POST and its small answer do not need: email.feedparser for the
headers, two writes, urllib3's wrappers (the measurements: docs/speed.md). It speaks only what those calls need: no
proxy, no redirect, no compression, no upgrade, no pipelining, no HEAD; what it cannot read is a BadAnswer, a
transport failure like a broken connection, and tests/unit/sync/test_http1_oracle.py holds its reading to h11's.
Alerts and monitoring pings, which go to any URL and may need a proxy, go through requests
(emailsync/report/outbound.py).

Every read is ours, so the deadline needs no watcher: each wait for a byte is bounded by what is left of it, and
an answer trickling in a byte at a time ends when the call's time does. Connecting has one budget, the connect
timeout within the deadline: looking the host up, every address of it, the TLS handshake and the request's write
share it.

A connection is kept for the next call only when nothing but the answer came: a byte more, in our buffer or still
held by the TLS layer, is not the next call's answer, and reading it as one would give that call another's.
"""

from __future__ import annotations

import contextlib
import ipaddress
import select
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any

MAX_HEAD = 64 * 1024  # the status line and the headers; a larger head is no answer we can use
# What one read asks for. The buffer is allocated before the read waits, and a run has as many reads waiting as calls
# in flight: small reads keep such a run's memory low, where larger ones grew it, glibc's allocator keeping their
# buffers resident (docs/speed.md, scenario e). A usual answer, a few hundred bytes, is still one read.
RECEIVE = 1024
NO_BODY = (204, 304)
HEX = b"0123456789abcdefABCDEF"
MAX_DIGITS = 20  # of a Content-Length or a chunk size (2**64 has 20 decimal digits); more is no length we can use


class BadAnswer(Exception):
    """What the backend sent is not an HTTP/1.x answer we can read, or it ended before the answer did."""


@dataclass(frozen=True)
class Head:
    """An answer's status and headers, and how its body ends."""

    status: int
    headers: dict[str, str]  # names in lower case; a repeated header's values joined by ", "
    length: int | None  # the body's length; None: chunked, or until the backend closes the connection
    chunked: bool
    keep_alive: bool  # the backend keeps the connection once this answer has been read whole


class Connection:
    """One TCP (or TLS) connection to the backend, opened when a request needs it and again after it ended."""

    def __init__(
        self, host: str, port: int, tls: ssl.SSLContext | None, connect_timeout: float, read_timeout: float
    ) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        self.connect_timeout = connect_timeout  # connecting (the TLS handshake included) and writing a request
        self.read_timeout = read_timeout  # each wait for a byte of the answer
        self.deadline = 0.0  # the call's, time.monotonic(): no wait reaches past it
        self.sock: socket.socket | None = None
        self.buffer = bytearray()  # what has arrived and is not parsed yet
        self.reusable = False  # the last answer was read whole and the backend keeps the connection

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self.buffer.clear()
        self.reusable = False

    def send(self, request: bytes, deadline: float) -> None:
        """The whole request of a call that must end by ``deadline``, on the kept-alive connection unless the backend
        has closed it meanwhile; connecting (every address, the TLS handshake) and writing within one connect
        timeout."""
        self.deadline = deadline
        budget = min(time.monotonic() + self.connect_timeout, deadline)
        if self.sock is not None and not (self.reusable and _idle(self.sock)):
            self.close()
        if self.sock is None:
            self.sock = self._connect(budget)
        self.reusable = False  # until this request's answer has been read whole
        self.sock.settimeout(_left(budget))
        # The backend may have answered and closed before reading all of the request: its answer is read all the same.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.sock.sendall(request)

    def read_head(self) -> Head:
        """The answer's status line and headers; interim (1xx) answers are passed over."""
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            while end < 0:
                if len(self.buffer) > MAX_HEAD:
                    raise BadAnswer(f"an answer whose head is over {MAX_HEAD // 1024} KiB")
                searched = max(0, len(self.buffer) - 3)
                if not self._receive():
                    part = "within the head of its answer" if self.buffer else "without an answer"
                    raise BadAnswer(f"the backend closed the connection {part}")
                end = self.buffer.find(b"\r\n\r\n", searched)
            head = parse_head(self.buffer[:end].decode("latin-1"))
            del self.buffer[: end + 4]
            if head.status >= 200:
                return head

    def read_body(self, head: Head, limit: int) -> bytes:
        """At most ``limit`` bytes of the body. The connection is kept for the next request only when the body was
        read whole, nothing else came and the backend keeps it; otherwise it is closed."""
        if head.chunked:
            body, whole = self._chunked(limit)
        elif head.length is None:
            while len(self.buffer) < limit and self._receive():
                pass
            body, whole = bytes(self.buffer[:limit]), False
        else:
            body = self._take(min(head.length, limit))
            whole = head.length <= limit
        self.reusable = whole and head.keep_alive and not self.buffer and not _held(self.sock)
        if not self.reusable:
            self.close()
        return body

    def _connect(self, budget: float) -> socket.socket:
        """A connection to one of the host's addresses, its TLS handshake done, by ``budget`` (monotonic)."""
        sock = _connect_any(_look_up(self.host, self.port, budget), budget)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # a request is one write: send it at once
            if self.tls is not None:
                sock.settimeout(_left(budget))  # the whole handshake, not each of its reads
                return self.tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
        return sock

    def _receive(self) -> bool:
        """What arrives next, appended to the buffer, within the read timeout and the call's deadline; False at
        the end of the stream."""
        assert self.sock is not None  # a request was sent on it
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the call's time is up")
        self.sock.settimeout(min(self.read_timeout, left))
        chunk = self.sock.recv(RECEIVE)
        self.buffer += chunk
        return bool(chunk)

    def _take(self, size: int) -> bytes:
        """The next ``size`` bytes of the body."""
        while len(self.buffer) < size:
            if not self._receive():
                raise BadAnswer(f"the backend closed the connection {len(self.buffer)} bytes into a body of {size}")
        taken = bytes(self.buffer[:size])
        del self.buffer[:size]
        return taken

    def _line(self) -> bytes:
        """The next line of a chunked body (a chunk's size, or a trailer), without its CRLF."""
        end = self.buffer.find(b"\r\n")
        while end < 0:
            if len(self.buffer) > MAX_HEAD:
                raise BadAnswer("a chunked body with a line over 64 KiB")
            if not self._receive():
                raise BadAnswer("the backend closed the connection within a chunked body")
            end = self.buffer.find(b"\r\n")
        line = bytes(self.buffer[:end])
        del self.buffer[: end + 2]
        return line

    def _chunked(self, limit: int) -> tuple[bytes, bool]:
        """A chunked body, at most ``limit`` bytes of it, and whether it was read to its end."""
        body = bytearray()
        while True:
            size_field = self._line().split(b";", 1)[0].strip()
            if not size_field or size_field.strip(HEX):
                raise BadAnswer(f"a chunk size that is not hexadecimal: {size_field[:40]!r}")
            if len(size_field) > MAX_DIGITS:
                raise BadAnswer(f"a chunk size of more than {MAX_DIGITS} hexadecimal digits: {size_field[:40]!r}")
            size = int(size_field, 16)
            if size == 0:
                while self._line():  # trailers, up to the empty line
                    pass
                return bytes(body), True
            if len(body) + size > limit:
                body += self._take(limit - len(body))
                return bytes(body), False
            body += self._take(size)
            if self._take(2) != b"\r\n":
                raise BadAnswer("a chunk longer than its size said")


def parse_head(text: str) -> Head:
    """An answer's head (status line and header lines, without the blank line that ends it)."""
    status_line, *lines = text.split("\r\n")
    if text.count("\n") != len(lines) or text.count("\r") != len(lines):  # two scans in C, not a loop of ours
        raise BadAnswer(f"an answer whose head has a CR or LF that is not a line's end: {text[:80]!r}")
    version, _, rest = status_line.partition(" ")
    code = rest[:3]
    if version not in ("HTTP/1.1", "HTTP/1.0") or not (code.isascii() and code.isdigit()) or rest[3:4] not in ("", " "):
        raise BadAnswer(f"not an HTTP/1.x status line: {status_line[:80]!r}")
    status = int(code)
    if status < 100 or status == 101:  # we never ask to switch protocols
        raise BadAnswer(f"an answer with status {status}")
    headers: dict[str, str] = {}
    name = ""
    for line in lines:
        if line[:1] in (" ", "\t") and name:  # an obsolete folded line continues the header before it
            headers[name] += " " + line.strip(" \t")
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip(" \t"):
            raise BadAnswer(f"not a header line: {line[:80]!r}")
        name = name.lower()
        value = value.strip(" \t")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    chunked = False
    length = _content_length(headers)  # checked even where the status or a transfer coding makes it moot
    if status in NO_BODY or status < 200:
        length = 0
    elif "transfer-encoding" in headers:  # a coding other than chunked last: the body ends with the connection
        length, chunked = None, _tokens(headers["transfer-encoding"])[-1] == "chunked"
    keep_alive = version == "HTTP/1.1" and "close" not in _tokens(headers.get("connection", ""))
    return Head(status, headers, length, chunked, keep_alive and (length is not None or chunked))


def _content_length(headers: dict[str, str]) -> int | None:
    """Content-Length, the same value repeated allowed; None without one (the body ends with the connection)."""
    field = headers.get("content-length")
    if field is None:
        return None
    values = {value.strip() for value in field.split(",")}
    length = values.pop()
    if values or not (length.isascii() and length.isdigit()):
        raise BadAnswer(f"a Content-Length that is not one number: {field[:40]!r}")
    if len(length) > MAX_DIGITS:
        raise BadAnswer(f"a Content-Length of more than {MAX_DIGITS} digits: {field[:40]!r}")
    return int(length)


def _tokens(field: str) -> list[str]:
    return [token.strip().lower() for token in field.split(",")]


def _idle(sock: socket.socket) -> bool:
    """A kept-alive connection with nothing to read: readable now would mean the backend closed it (or sent what
    nobody asked for), and a request sent on it would fail."""
    poll = select.poll()  # not select(): a run of a thousand calls has descriptors past its limit
    poll.register(sock, select.POLLIN)
    return not poll.poll(0) and not _held(sock)


def _held(sock: socket.socket | None) -> bool:
    """Whether the TLS layer holds bytes it has decrypted and nobody has read: a poll of the socket cannot see them,
    as they left the kernel with the record that carried them."""
    return isinstance(sock, ssl.SSLSocket) and sock.pending() > 0


def _left(until: float) -> float:
    """Seconds left until ``until`` (monotonic), as a socket timeout; TimeoutError when none are."""
    left = until - time.monotonic()
    if left <= 0:
        raise TimeoutError("no time left")
    return left


def _look_up(host: str, port: int, budget: float) -> list[tuple[Any, ...]]:
    """The host's addresses, by ``budget`` (monotonic). The resolver keeps timeouts of its own, longer than a call's
    when a name server does not answer, so a name is looked up in a daemon thread that the call stops waiting for
    when its time is up; the abandoned lookup ends by itself and holds no connection. An address needs no lookup."""
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(host)
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    found: list[list[tuple[Any, ...]]] = []
    failed: list[Exception] = []
    done = threading.Event()

    def look_up() -> None:
        try:
            found.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except Exception as error:  # noqa: BLE001 -- handed over to the call's thread, which raises it
            failed.append(error)
        finally:
            done.set()

    threading.Thread(target=look_up, name=f"getaddrinfo {host}", daemon=True).start()
    if not done.wait(_left(budget)):
        raise TimeoutError(f"looking up {host} took the call's connect time")
    if failed:
        raise failed[0]
    return found[0]


def _connect_any(addresses: list[tuple[Any, ...]], budget: float) -> socket.socket:
    """A connection to the first of ``addresses`` (getaddrinfo's) that takes one by ``budget`` (monotonic). Each
    address may use what is left of it divided among those not tried yet, so one that never answers leaves the
    others their turn; the last may use all that is left."""
    failure: OSError = TimeoutError("no time left")
    for index, (family, kind, protocol, _, address) in enumerate(addresses):
        share = (budget - time.monotonic()) / (len(addresses) - index)
        if share <= 0:
            break
        sock = socket.socket(family, kind, protocol)
        try:
            sock.settimeout(share)
            sock.connect(address)
        except OSError as error:
            sock.close()
            failure = error
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    raise failure
