"""A scriptable stand-in for the email application's backend, served over real HTTP(S).

Used by pytest fixtures, by ``make demo``, by the systemd end-to-end tests and by the benchmark's empty run::

    with Backend(token="s3cret") as backend:
        backend.script(42, Behaviour(status=503, retry_after="1"), Behaviour())
        ...  # point the client at backend.base_url
        assert backend.wait_for_sync_calls(2)

As a program it serves until SIGTERM/SIGINT::

    python -m harness.backend --port 8080 [--host 127.0.0.1] [--sync-path P] [--health-path P]
        [--latency SECONDS] [--token-file PATH] [--fail-every N] [--tls-cert PATH --tls-key PATH]
"""

import argparse
import base64
import contextlib
import json
import re
import signal
import socket
import socketserver
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any
from urllib.parse import quote, quote_plus, urlsplit

# Content-Length announced by a trickling response: far more than will ever be sent.
_TRICKLE_LENGTH = 1_000_000_000
# The ways a careless backend writes the bearer token it got back into an error body.
ECHOES: dict[str, Callable[[str], str]] = {
    "raw": lambda token: token,
    "percent": lambda token: quote(token, safe=""),
    "percent-lower": lambda token: re.sub("%[0-9A-F]{2}", lambda m: m[0].lower(), quote(token, safe="")),
    "percent-path": lambda token: quote(token),  # urllib's default: "/" left as is
    "form": lambda token: quote_plus(token, safe=""),
    "json": lambda token: json.dumps(token)[1:-1],
    "basic": lambda token: "Basic " + base64.b64encode(f"user:{token}".encode()).decode(),
    "base64": lambda token: base64.b64encode(token.encode()).decode(),
    "cut": lambda token: token[: max(8, len(token) // 2)] + "...",
}


@dataclass
class Behaviour:
    """How the backend answers one sync call."""

    status: int = 200
    body: bytes | None = None  # None -> {"emails_synced": n} for 2xx, {"error": "..."} otherwise
    delay: float = 0.0  # seconds to wait before answering (0 -> the backend's latency)
    hang: bool = False  # never answer until the server stops
    hold: threading.Event | None = None  # answer (after `delay`) only once this is set, or never if the server stops
    trickle: float = 0.0  # >0: headers, then one body byte every `trickle` seconds until stop
    trickle_headers: float = 0.0  # >0: the status line and headers themselves, a byte every so often, until stop
    retry_after: str | None = None  # Retry-After header value
    headers: dict[str, str] = field(default_factory=dict)  # extra response headers
    close: bool = False  # close the connection without any response
    raw: bytes | None = None  # these bytes as they are, in one write (under TLS, one record), instead of an answer
    echo: str = ""  # a key of ECHOES: the body is an error quoting the request's bearer token spelled that way


@dataclass(frozen=True)
class Overload:
    """A backend with a capacity: latency flat at ``base`` up to ``knee`` calls in flight, then ``slope`` x base
    more for every call beyond it, and 503 at once beyond ``refuse`` calls in flight."""

    base: float = 0.15
    knee: int = 40
    refuse: int = 60
    slope: float = 0.25

    def latency(self, in_flight: int) -> float:
        """Seconds to answer a call that arrives as the ``in_flight``-th (itself included)."""
        return self.base * (1 + self.slope * max(0, in_flight - self.knee))


@dataclass
class Recorded:
    """One request as the backend received it."""

    method: str
    path: str  # as sent, query string included
    headers: dict[str, str]  # names as sent by the client
    body: bytes
    json: Any | None  # parsed body, None if absent or not JSON
    user_id: Any | None  # body["user_id"] when the body is a JSON object
    at: float  # time.monotonic() when the request had been read
    status: int | None = None  # the status of the answer, once the whole answer has been sent

    def header(self, name: str) -> str | None:
        """Return a header's value, looking its name up case-insensitively."""
        wanted = name.lower()
        return next((value for key, value in self.headers.items() if key.lower() == wanted), None)


class Backend:
    """A real HTTP server on a local port whose sync endpoint answers as scripted."""

    def __init__(
        self,
        sync_path: str = "/api/v1/test/sync/start",
        health_path: str = "/health",
        *,
        token: str | None = None,
        latency: float = 0.0,
        tls: tuple[str, str] | None = None,
        port: int = 0,
        host: str = "127.0.0.1",
        fail_every: int = 0,
        overload: Overload | None = None,
    ) -> None:
        """Configure the server; nothing listens until start()."""
        self.sync_path = sync_path
        self.health_path = health_path
        self.token = token
        self.latency = latency
        self.tls = tls
        self.host = host
        self.port = port  # the real port once started; a restart reuses it
        self.fail_every = fail_every  # every n-th sync call answers 500 (0: never)
        self.overload = overload  # latency from the calls in flight, instead of `latency`
        self.in_flight = 0  # sync calls being answered now
        self.peak_in_flight = 0
        self.refused = 0  # sync calls the overload model answered 503
        self.health_status = 200
        # Requests under this path are monitoring pings (emailsync/report/monitor.py): answered monitor_status, "OK".
        self.monitor_path = "/ping/"
        self.monitor_status = 200
        self.monitor_delay = 0.0  # seconds before a ping's answer
        self.monitor_trickle = 0.0  # >0: a ping's answer is its head, then a body byte every so often, until stop
        # Seconds a kept-alive connection may sit idle before the server closes it without a word, as a keep-alive
        # timeout does (nginx's keepalive_timeout); None: never.
        self.idle_timeout: float | None = None
        self.connections = 0  # accepted so far
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._default = Behaviour()
        self._scripts: dict[str, tuple[Behaviour, ...]] = {}
        self._nth: dict[int, Behaviour] = {}
        self._served: dict[str, int] = {}
        self._answered = 0
        self._requests: list[Recorded] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> "Backend":
        """Bind, start serving in a background thread and return self."""
        if self._server is not None:
            raise RuntimeError("backend already started")
        server = _Server((self.host, self.port), self)
        if self.tls is not None:
            try:
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                context.load_cert_chain(*self.tls)
            except BaseException:
                server.server_close()
                raise
            # Handshakes then happen in the handler threads, not in the accept loop.
            server.socket = context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="backend", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop promptly: wake hanging handlers, stop accepting, close every socket."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.stopping.set()
        server.shutdown()
        server.server_close()
        server.drop_connections()
        thread.join()
        self._server = self._thread = None

    def __enter__(self) -> "Backend":
        """Start the server."""
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop the server."""
        self.stop()

    @property
    def base_url(self) -> str:
        """Root URL of the running server, e.g. http://127.0.0.1:PORT."""
        if self.port == 0:
            raise RuntimeError("backend not started")
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.host}:{self.port}"

    # -- scripting ---------------------------------------------------------------------------

    def set_default(self, behaviour: Behaviour) -> None:
        """Answer sync calls of users without a script with `behaviour`."""
        with self._lock:
            self._default = behaviour

    def script(self, user_id: Any, *behaviours: Behaviour) -> None:
        """Answer the user's n-th sync call from now with behaviours[n]; the last one repeats.

        Without behaviours the user's script is removed.
        """
        key = str(user_id)
        with self._lock:
            self._served[key] = 0
            if behaviours:
                self._scripts[key] = behaviours
            else:
                self._scripts.pop(key, None)

    def on_call(self, number: int, behaviour: Behaviour) -> None:
        """Answer the `number`-th sync call that passes authentication (counting from 1) with `behaviour`,
        whoever's it is: for what must happen mid-run, whichever host makes that call."""
        with self._lock:
            self._nth[number] = behaviour

    # -- inspection --------------------------------------------------------------------------

    def requests(self) -> list[Recorded]:
        """Every request received so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    def sync_calls(self, user_id: Any | None = None) -> list[Recorded]:
        """POSTs to the sync path, optionally only those for one user (compared after str())."""
        with self._lock:
            return self._sync_calls(user_id)

    def pings(self) -> list[Recorded]:
        """Requests to the monitoring path, in arrival order."""
        with self._lock:
            return [r for r in self._requests if urlsplit(r.path).path.startswith(self.monitor_path)]

    def wait_for_sync_calls(self, n: int, timeout: float = 10.0) -> bool:
        """Block until at least n sync calls have arrived; False on timeout."""
        with self._arrived:
            return self._arrived.wait_for(lambda: len(self._sync_calls()) >= n, timeout)

    def wait_for_answers(self, n: int, timeout: float = 10.0) -> bool:
        """Block until at least n sync calls have been answered, their whole answer sent; False on timeout."""
        with self._arrived:
            return self._arrived.wait_for(lambda: sum(c.status is not None for c in self._sync_calls()) >= n, timeout)

    # -- used by the request handler ---------------------------------------------------------

    @contextlib.contextmanager
    def _answering(self) -> Iterator[int]:
        """Count a sync call in flight while it is answered; yields how many are, this one included."""
        with self._lock:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            in_flight = self.in_flight
        try:
            yield in_flight
        finally:
            with self._lock:
                self.in_flight -= 1

    def _refuses(self, in_flight: int) -> bool:
        """Whether the overload model answers 503 to a call arriving as the ``in_flight``-th (and counts it)."""
        if self.overload is None or in_flight <= self.overload.refuse:
            return False
        with self._lock:
            self.refused += 1
        return True

    def _latency(self, in_flight: int) -> float:
        """How long an answer takes when nothing is scripted: the overload model's, else the fixed latency."""
        return self.latency if self.overload is None else self.overload.latency(in_flight)

    def _sync_calls(self, user_id: Any | None = None) -> list[Recorded]:
        """Sync calls, with the lock already held."""
        calls = [r for r in self._requests if r.method == "POST" and urlsplit(r.path).path == self.sync_path]
        if user_id is None:
            return calls
        return [r for r in calls if r.user_id is not None and str(r.user_id) == str(user_id)]

    def _record(self, request: Recorded) -> None:
        """Remember a request and wake waiters."""
        with self._arrived:
            self._requests.append(request)
            self._arrived.notify_all()

    def _note_answer(self, request: Recorded, status: int) -> None:
        """Note that a request's whole answer was sent, and wake waiters."""
        with self._arrived:
            request.status = status
            self._arrived.notify_all()

    def _next_behaviour(self, user_id: Any | None) -> Behaviour:
        """Pick the behaviour for a sync call that passed authentication."""
        with self._lock:
            self._answered += 1
            key = str(user_id)
            behaviours = self._scripts.get(key) if user_id is not None else None
            if behaviours:
                served = self._served.get(key, 0)
                self._served[key] = served + 1
                behaviour = behaviours[min(served, len(behaviours) - 1)]
            else:
                behaviour = self._default
            behaviour = self._nth.get(self._answered, behaviour)
            if self.fail_every > 0 and self._answered % self.fail_every == 0:
                behaviour = Behaviour(status=500)
            return behaviour


class _Server(ThreadingHTTPServer):
    """Threaded HTTP server that knows its Backend and its open connections."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], backend: Backend) -> None:
        """Bind and listen on `address`."""
        self.backend = backend
        self.stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse DNS lookup of the host."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def track(self, connection: socket.socket, open_: bool) -> None:
        """Add or remove a connection from the set that stop() closes."""
        with self._connections_lock:
            if open_:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def drop_connections(self) -> None:
        """Shut down every open connection so idle keep-alive handlers end too."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            # The plain-socket shutdown also works under TLS, without tearing down the SSL object
            # that the handler thread may still be using.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(connection, socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet about clients that go away; report real bugs."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    """Answers one connection's requests (HTTP/1.1 keep-alive)."""

    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        """Register the connection so that stop() can close it."""
        super().setup()
        self.server.track(self.connection, True)
        backend = self.server.backend
        with backend._lock:
            backend.connections += 1
        if backend.idle_timeout is not None:
            self.connection.settimeout(backend.idle_timeout)  # http.server closes the connection on a timeout

    def handle(self) -> None:
        """Finish the TLS handshake (if any), then serve requests until the connection closes."""
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.do_handshake()
        super().handle()

    def finish(self) -> None:
        """Unregister the connection."""
        self.server.track(self.connection, False)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        """Do not log requests."""

    def do_GET(self) -> None:
        """Handle GET."""
        self._handle()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    def _handle(self) -> None:
        """Record the request, then route it."""
        backend = self.server.backend
        self.recorded: Recorded | None = None  # this request, once read: its answer is noted on it when sent
        try:
            body = self._read_body()
        except ValueError:
            self.close_connection = True
            self._respond(400, _error("unreadable request body"))
            return
        try:
            payload, is_json = json.loads(body), True
        except ValueError:
            payload, is_json = None, False
        user_id = payload.get("user_id") if isinstance(payload, dict) else None
        self.recorded = Recorded(
            self.command, self.path, dict(self.headers.items()), body, payload, user_id, time.monotonic()
        )
        backend._record(self.recorded)
        path = urlsplit(self.path).path
        if path == backend.sync_path:
            if self.command == "POST":
                self._sync(payload, is_json, user_id)
            elif self.command == "OPTIONS":
                self._respond(204, b"", {"Allow": "OPTIONS, POST"})
            else:
                self._respond(405, _error("method not allowed"), {"Allow": "POST"})
        elif path == backend.health_path and self.command in ("GET", "HEAD"):
            status = backend.health_status
            health = {"status": "ok" if 200 <= status < 300 else "unhealthy"}
            self._respond(status, json.dumps(health).encode())
        elif path.startswith(backend.monitor_path):
            if backend.monitor_delay > 0 and self.server.stopping.wait(backend.monitor_delay):
                self.close_connection = True
                return
            if backend.monitor_trickle > 0:
                self._trickle(backend.monitor_status, backend.monitor_trickle, {})
                return
            self._respond(backend.monitor_status, b"OK")
        else:
            self._respond(404, _error("not found"))

    def _sync(self, payload: Any, is_json: bool, user_id: Any | None) -> None:
        """Answer a POST to the sync path."""
        backend = self.server.backend
        if backend.token is not None and self.headers.get("Authorization") != f"Bearer {backend.token}":
            self._respond(401, _error("unauthorized"), {"WWW-Authenticate": "Bearer"})
            return
        if not is_json:
            self._respond(400, _error("body is not valid JSON"))
            return
        behaviour = backend._next_behaviour(user_id)
        with backend._answering() as in_flight:
            if backend._refuses(in_flight):
                self._respond(503, _error("overloaded"))
                return
            self._answer(payload, behaviour, behaviour.delay or backend._latency(in_flight))

    def _answer(self, payload: Any, behaviour: Behaviour, delay: float) -> None:
        """Answer a sync call as ``behaviour`` says, after ``delay`` seconds."""
        stopping = self.server.stopping
        if (delay > 0 and stopping.wait(delay)) or behaviour.close or not _released(behaviour.hold, stopping):
            self.close_connection = True  # stopped while waiting, or asked to drop the connection
            return
        if behaviour.hang:
            stopping.wait()
            self.close_connection = True
            return
        if behaviour.raw is not None:
            self.wfile.write(behaviour.raw)
            return
        headers = dict(behaviour.headers)
        if behaviour.retry_after is not None:
            headers["Retry-After"] = behaviour.retry_after
        if behaviour.trickle > 0:
            self._trickle(behaviour.status, behaviour.trickle, headers)
            return
        if behaviour.trickle_headers > 0:
            self._trickle_headers(behaviour.trickle_headers)
            return
        body = behaviour.body
        if behaviour.echo:
            token = self.headers.get("Authorization", "").removeprefix("Bearer ")
            body = f"token {ECHOES[behaviour.echo](token)} rejected".encode()
        if body is None:
            if 200 <= behaviour.status < 300:
                email = payload.get("email") if isinstance(payload, dict) else None
                synced = len(email) % 7 if isinstance(email, str) else 0
                body = json.dumps({"emails_synced": synced}).encode()
            else:
                body = _error(self.responses.get(behaviour.status, ("error",))[0].lower())
        self._respond(behaviour.status, body, headers)

    def _read_body(self) -> bytes:
        """Read the request body (Content-Length or chunked); ValueError if malformed."""
        length = self.headers.get("Content-Length")
        if length is not None:
            return self.rfile.read(int(length))
        if "chunked" not in self.headers.get("Transfer-Encoding", "").lower():
            return b""
        chunks = []
        while size := int(self.rfile.readline().split(b";")[0].strip(), 16):
            chunks.append(self.rfile.read(size))
            self.rfile.readline()
        while self.rfile.readline().strip():  # trailers
            pass
        return b"".join(chunks)

    def _respond(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        """Send a complete response; Content-Length is always computed here."""
        headers = headers or {}
        has_body = status >= 200 and status not in (204, 304)
        self.send_response(status)
        if has_body:
            if body and not any(name.lower() == "content-type" for name in headers):
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            if name.lower() != "content-length":
                self.send_header(name, value)
        self.end_headers()
        if has_body and self.command != "HEAD":
            self.wfile.write(body)
        if self.recorded is not None:
            self.server.backend._note_answer(self.recorded, status)

    def _trickle(self, status: int, interval: float, headers: dict[str, str]) -> None:
        """Promise a huge body, then send one byte per interval until the server stops."""
        self.close_connection = True
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(_TRICKLE_LENGTH))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        try:
            while not self.server.stopping.wait(interval):
                self.wfile.write(b" ")
        except OSError:
            pass  # the client gave up

    def _trickle_headers(self, interval: float) -> None:
        """Send a status line and then one endless header, a byte per interval, until the server stops."""
        self.close_connection = True
        head = b"HTTP/1.1 200 OK\r\nX-Slow: "
        try:
            for byte in head:
                if self.server.stopping.wait(interval):
                    return
                self.wfile.write(bytes([byte]))
            while not self.server.stopping.wait(interval):
                self.wfile.write(b"x")
        except OSError:
            pass  # the client gave up


def _released(hold: threading.Event | None, stopping: threading.Event) -> bool:
    """Wait for ``hold`` to be set, if any: False when the server stops first."""
    while hold is not None and not hold.wait(0.05):
        if stopping.is_set():
            return False
    return True


def _error(message: str) -> bytes:
    """A JSON error body."""
    return json.dumps({"error": message}).encode()


def main(argv: list[str] | None = None) -> int:
    """Serve a Backend until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m harness.backend", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument("--sync-path", default="/api/v1/test/sync/start")
    parser.add_argument("--health-path", default="/health")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each sync answer")
    parser.add_argument("--token-file", type=Path, help="require 'Authorization: Bearer <file content>'")
    parser.add_argument("--fail-every", type=int, default=0, help="every N-th sync call answers 500")
    parser.add_argument("--tls-cert", help="serve HTTPS with this certificate (needs --tls-key)")
    parser.add_argument("--tls-key", help="private key for --tls-cert")
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    backend = Backend(
        args.sync_path,
        args.health_path,
        token=args.token_file.read_text().strip() if args.token_file else None,
        latency=args.latency,
        tls=(args.tls_cert, args.tls_key) if args.tls_cert else None,
        port=args.port,
        host=args.host,
        fail_every=args.fail_every,
    )
    with backend:
        print(f"listening on {backend.base_url}", flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
