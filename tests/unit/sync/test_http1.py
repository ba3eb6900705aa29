"""The backend's HTTP/1.1 (emailsync.sync.http1, through backend.Session): what each way of answering gives a call.

The backend here is a real TCP server on 127.0.0.1 that answers each request with scripted bytes, so the answers
can take every form HTTP/1.1 allows (and some it does not), which a well-behaved server would never send.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emailsync.config.settings import BackendConfig
from emailsync.sync.backend import MAX_BODY, CallFailed, Session
from emailsync.sync.http1 import RECEIVE, BadAnswer, parse_head
from harness.backend import Backend

RUN_ID = str(uuid.uuid4())
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@dataclass
class Answer:
    raw: bytes
    close: bool = False  # close the connection once it is sent
    piece: int = 0  # write it in pieces of this many bytes (under TLS, a record each); 0: in one write


@dataclass
class RawBackend:
    """Answers the n-th request with the n-th scripted answer (the last one again once they run out)."""

    answers: list[Answer] = field(default_factory=list)
    requests: list[bytes] = field(default_factory=list, repr=False)
    connections: int = 0
    tls: tuple[str, str] | None = None  # (certificate, key): answer over TLS

    def __post_init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.context: ssl.SSLContext | None = None
        if self.tls is not None:
            self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.context.load_cert_chain(*self.tls)
        threading.Thread(target=self._accept, daemon=True).start()

    def script(self, *answers: Answer) -> None:
        self.answers = list(answers)

    def session(self, **config: float) -> Session:
        scheme, ca_file = ("https", self.tls[0]) if self.tls else ("http", "")
        url = f"{scheme}://127.0.0.1:{self.port}"
        return Session(BackendConfig(base_url=url, token="t0ken", ca_file=ca_file, **config), RUN_ID)  # type: ignore[arg-type]

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        if self.context is not None:
            with contextlib.suppress(OSError):
                connection = self.context.wrap_socket(connection, server_side=True)
        with contextlib.suppress(OSError), connection, connection.makefile("rb") as reader:  # the client went away
            while True:
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    line = reader.readline()
                    if not line:
                        return
                    head += line
                length = next((int(v) for k, _, v in _fields(head) if k.lower() == b"content-length"), 0)
                self.requests.append(head + reader.read(length))
                answer = self.answers[min(len(self.requests), len(self.answers)) - 1]
                step = answer.piece or len(answer.raw) or 1
                for start in range(0, len(answer.raw), step):
                    connection.sendall(answer.raw[start : start + step])
                if answer.close:
                    connection.shutdown(socket.SHUT_RDWR)
                    return


def _fields(head: bytes) -> Iterator[tuple[bytes, bytes, bytes]]:
    for line in head.split(b"\r\n")[1:]:
        name, colon, value = line.partition(b":")
        if colon:
            yield name.strip(), colon, value.strip()


@pytest.fixture
def raw() -> Iterator[RawBackend]:
    server = RawBackend()
    yield server
    server.listener.close()


@pytest.fixture(params=["plain", "tls"])
def raw_either(request: pytest.FixtureRequest, self_signed_cert: tuple[str, str]) -> Iterator[RawBackend]:
    """The raw backend once over plain TCP and once over TLS."""
    server = RawBackend(tls=self_signed_cert if request.param == "tls" else None)
    yield server
    server.listener.close()


def post(session: Session, server: RawBackend) -> tuple[int, dict[str, str], bytes]:
    scheme = "https" if server.tls else "http"
    reply = session.call("POST", f"{scheme}://127.0.0.1:{server.port}/sync", b'{"user_id": 1}', {"X-Test": "1"})
    return reply.status, dict(reply.headers), reply.body


def test_an_answer_with_a_content_length_is_read_and_its_connection_kept(raw: RawBackend) -> None:
    raw.script(Answer(OK))
    with raw.session() as session:
        assert [post(session, raw)[::2] for _ in range(3)] == [(200, b"ok")] * 3
    assert raw.connections == 1


def test_a_chunked_answer_is_joined_with_its_extensions_and_trailers_passed_over(raw: RawBackend) -> None:
    chunks = b'4;x=y\r\n{"em\r\n10\r\nails_synced": 3}\r\n0\r\nT: 1\r\n\r\n'
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks
    raw.script(Answer(chunked))
    with raw.session() as session:
        assert post(session, raw)[2] == b'{"emails_synced": 3}'
        assert post(session, raw)[2] == b'{"emails_synced": 3}'
    assert raw.connections == 1


def test_an_answer_without_a_length_ends_with_the_connection_and_the_next_call_connects_again(
    raw: RawBackend,
) -> None:
    raw.script(Answer(b"HTTP/1.1 200 OK\r\n\r\nall of it", close=True))
    with raw.session() as session:
        assert post(session, raw)[2] == b"all of it"
        assert post(session, raw)[2] == b"all of it"
    assert raw.connections == 2


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ],
    ids=["connection-close", "http-1.0"],
)
def test_an_answer_that_does_not_keep_the_connection_makes_the_next_call_connect_again(
    answer: bytes, raw: RawBackend
) -> None:
    raw.script(Answer(answer, close=True))
    with raw.session() as session:
        assert [post(session, raw)[::2] for _ in range(2)] == [(200, b"ok")] * 2
    assert raw.connections == 2


def test_an_interim_100_continue_is_passed_over(raw: RawBackend) -> None:
    raw.script(Answer(b"HTTP/1.1 100 Continue\r\n\r\n" + OK))
    with raw.session() as session:
        assert post(session, raw)[::2] == (200, b"ok")


def test_header_names_are_lower_case_repeated_ones_joined_folded_ones_continued(raw: RawBackend) -> None:
    raw.script(
        Answer(
            b"HTTP/1.1 429 Slow\r\nRetry-After:  7 \r\nX-A: 1\r\nx-a: 2\r\nX-F: a\r\n b\r\nContent-Length: 0\r\n\r\n"
        )
    )
    with raw.session() as session:
        status, headers, _ = post(session, raw)
    assert status == 429
    assert (headers["retry-after"], headers["x-a"], headers["x-f"]) == ("7", "1, 2", "a b")


@pytest.mark.parametrize("status", [204, 304])
def test_an_answer_that_has_no_body_by_its_status_is_not_waited_for(status: int, raw: RawBackend) -> None:
    raw.script(Answer(f"HTTP/1.1 {status} X\r\nContent-Length: 5\r\n\r\n".encode()))
    with raw.session(read_timeout=5.0) as session:
        assert post(session, raw)[::2] == (status, b"")
        assert post(session, raw)[0] == status
    assert raw.connections == 1


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_over_the_limit_is_cut_one_byte_past_it_and_its_connection_closed(
    chunked: bool, raw: RawBackend
) -> None:
    body = b"x" * (2 * MAX_BODY)
    framing = (
        b"Transfer-Encoding: chunked\r\n\r\n" + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
        if chunked
        else f"Content-Length: {len(body)}\r\n\r\n".encode() + body
    )
    raw.script(Answer(b"HTTP/1.1 200 OK\r\n" + framing))
    with raw.session() as session:
        assert len(post(session, raw)[2]) == MAX_BODY + 1
        assert len(post(session, raw)[2]) == MAX_BODY + 1
    assert raw.connections == 2


def test_an_answer_with_more_than_it_announced_does_not_leak_into_the_next_call(raw: RawBackend) -> None:
    raw.script(Answer(OK + b"HTTP/1.1 500 Stray\r\nContent-Length: 0\r\n\r\n"), Answer(OK))
    with raw.session() as session:
        assert [post(session, raw)[::2] for _ in range(2)] == [(200, b"ok")] * 2
    assert raw.connections == 2


def test_a_body_cut_short_fails_the_call_and_keeps_its_status(raw: RawBackend) -> None:
    raw.script(Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", close=True))
    with raw.session() as session, pytest.raises(CallFailed) as failed:
        post(session, raw)
    assert failed.value.status == 200
    assert failed.value.description == "reading the answer: the backend closed the connection 3 bytes into a body of 10"


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        (b"", "the backend closed the connection without an answer"),
        (b"HTTP/1.1 200 OK\r\nContent-Le", "the backend closed the connection within the head of its answer"),
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "not an HTTP/1.x status line: 'SSH-2.0-OpenSSH_9.2'"),
        (b"HTTP/1.1 2x0 OK\r\n\r\n", "not an HTTP/1.x status line: 'HTTP/1.1 2x0 OK'"),
        (b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n", "not a header line: 'no colon'"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\nok", "a Content-Length that is not one number: '2, 3'"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "a Content-Length that is not one number: '-1'"),
        (b"HTTP/1.1 101 Switching\r\n\r\n", "an answer with status 101"),
        (b"HTTP/1.1 204 None\r\nContent-Length: x\r\n\r\n", "a Content-Length that is not one number: 'x'"),
        (
            b"HTTP/1.1 200 OK\nContent-Length: 2\r\n\r\nok",
            "an answer whose head has a CR or LF that is not a line's end: 'HTTP/1.1 200 OK\\nContent-Length: 2'",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n",
            f"a Content-Length of more than 20 digits: {'9' * 40!r}",
        ),
    ],
    ids=[
        "nothing",
        "half-a-head",
        "not-http",
        "bad-status",
        "bad-header",
        "two-lengths",
        "negative-length",
        "101",
        "bad-length-where-the-status-has-no-body",
        "bare-lf",
        "length-of-thousands-of-digits",
    ],
)
def test_an_answer_that_is_not_http_fails_the_call_with_one_line_naming_what_is_wrong(
    answer: bytes, says: str, raw: RawBackend
) -> None:
    raw.script(Answer(answer, close=True))
    with raw.session() as session, pytest.raises(CallFailed) as failed:
        post(session, raw)
    assert (failed.value.status, failed.value.description) == (None, says)


def test_a_chunk_size_that_is_not_hexadecimal_fails_the_call(raw: RawBackend) -> None:
    raw.script(Answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nabcde\r\n0\r\n\r\n", close=True))
    with raw.session() as session, pytest.raises(CallFailed) as failed:
        post(session, raw)
    assert failed.value.description == "reading the answer: a chunk size that is not hexadecimal: b'-5'"


def test_a_chunk_size_of_thousands_of_digits_fails_the_call(raw: RawBackend) -> None:
    raw.script(Answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"f" * 5000 + b"\r\n", close=True))
    with raw.session() as session, pytest.raises(CallFailed) as failed:
        post(session, raw)
    says = f"reading the answer: a chunk size of more than 20 hexadecimal digits: {b'f' * 40!r}"
    assert (failed.value.status, failed.value.description) == (200, says)


def answer_filling_the_read(body: bytes) -> bytes:
    """A whole 200 answer of exactly one read's size: nothing of what follows it arrives with it in our buffer."""
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Pad: " % len(body)
    pad = RECEIVE - len(head) - 4 - len(body)
    return head + b"p" * pad + b"\r\n\r\n" + body


STRAY = b"HTTP/1.1 500 Stray\r\nContent-Length: 5\r\n\r\nstray"


def test_bytes_after_a_whole_answer_that_filled_the_read_are_not_the_next_calls_answer(
    raw_either: RawBackend,
) -> None:
    """Under TLS the stray answer comes in the same record: the TLS layer holds it, and no poll of the socket sees
    it; the connection must not carry another call."""
    answers = [answer_filling_the_read(b'{"emails_synced": %d}' % n) for n in range(3)]
    raw_either.script(*(Answer(answer + STRAY) for answer in answers))
    with raw_either.session() as session:
        replies = [post(session, raw_either)[::2] for _ in range(3)]
    assert replies == [(200, b'{"emails_synced": %d}' % n) for n in range(3)]
    assert raw_either.connections == 3


def test_the_request_carries_host_agent_token_trace_its_headers_and_the_body_with_its_length(raw: RawBackend) -> None:
    raw.script(Answer(OK))
    with raw.session() as session:
        post(session, raw)
    request = raw.requests[0]
    head, _, body = request.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] == b"POST /sync HTTP/1.1"
    fields = {name.lower(): value for name, _, value in _fields(head + b"\r\n\r\n")}
    assert fields[b"host"] == f"127.0.0.1:{raw.port}".encode()
    assert fields[b"authorization"] == b"Bearer t0ken"
    assert fields[b"traceparent"].startswith(f"00-{uuid.UUID(RUN_ID).hex}-".encode())
    assert (fields[b"x-test"], fields[b"content-length"], body) == (b"1", b"14", b'{"user_id": 1}')


def test_a_request_without_a_body_has_no_content_length(raw: RawBackend) -> None:
    raw.script(Answer(b"HTTP/1.1 204 No Content\r\nAllow: POST\r\n\r\n"))
    with raw.session() as session:
        assert session.call("OPTIONS", f"http://127.0.0.1:{raw.port}/sync").headers["allow"] == "POST"
    assert b"content-length" not in raw.requests[0].lower()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300) | st.builds(lambda tail: OK[:20] + tail, st.binary(max_size=200)))
def test_any_bytes_as_an_answer_give_a_reply_or_a_failed_call_never_a_crash(raw: RawBackend, answer: bytes) -> None:
    raw.script(Answer(answer, close=True))
    with raw.session(read_timeout=2.0, call_timeout=3.0) as session:
        try:
            post(session, raw)
        except CallFailed as failed:
            assert "\n" not in failed.description


@given(st.text(max_size=200))
def test_any_head_parses_or_is_a_bad_answer(text: str) -> None:
    try:
        head = parse_head(text)
    except BadAnswer:
        return
    assert 100 <= head.status <= 999 and all(name == name.lower() for name in head.headers)


def test_a_backend_that_accepts_no_connection_fails_the_call_naming_the_connect_timeout() -> None:
    listener = socket.create_server(("127.0.0.1", 0), backlog=0)  # never accepts: once its queue is full, no more
    port = listener.getsockname()[1]
    queued = []
    with contextlib.suppress(OSError):
        for _ in range(8):
            queued.append(socket.create_connection(("127.0.0.1", port), timeout=0.2))
    config = BackendConfig(base_url=f"http://127.0.0.1:{port}", connect_timeout=0.3)
    with listener, Session(config, RUN_ID) as session, pytest.raises(CallFailed) as failed:
        session.call("POST", f"http://127.0.0.1:{port}/sync", b"{}")
    assert failed.value.description == "not connected and sent within backend.connect_timeout (0.3s)"
    for sock in queued:
        sock.close()


def test_an_answer_whose_head_never_ends_is_refused_past_64_kib(raw: RawBackend) -> None:
    raw.script(Answer(b"HTTP/1.1 200 OK\r\n" + b"X-Long: " + b"x" * 70_000 + b"\r\n"))
    with raw.session() as session, pytest.raises(CallFailed) as failed:
        post(session, raw)
    assert failed.value.description == "an answer whose head is over 64 KiB"


def test_a_tls_handshake_trickled_by_the_backend_is_cut_at_the_call_deadline(self_signed_cert: tuple[str, str]) -> None:
    with Backend(tls=self_signed_cert) as backend, _Trickle(backend.port) as proxy:
        config = BackendConfig(
            base_url=f"https://127.0.0.1:{proxy.port}", ca_file=self_signed_cert[0], call_timeout=1.0
        )
        failures: list[CallFailed] = []
        caller = threading.Thread(target=_call_and_keep_failure, args=(config, failures), daemon=True)
        caller.start()
        caller.join(300)  # only against a hang: the failure's text below says whether the deadline cut the call
        assert not caller.is_alive()
    assert [failed.description for failed in failures] == ["no complete answer within backend.call_timeout (1s)"]


def _call_and_keep_failure(config: BackendConfig, failures: list[CallFailed]) -> None:
    with Session(config, RUN_ID) as session:
        try:
            session.call("GET", f"{config.base_url}/health")
        except CallFailed as failed:
            failures.append(failed)


class _Trickle:
    """A TCP proxy to 127.0.0.1:``port`` that passes what the server sends one byte every 50 ms."""

    def __init__(self, port: int) -> None:
        self.upstream = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stopped = threading.Event()

    def __enter__(self) -> _Trickle:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopped.set()
        self.listener.close()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            client, _ = self.listener.accept()
            server = socket.create_connection(("127.0.0.1", self.upstream))
            threading.Thread(target=self._pass, args=(client, server, 0.0), daemon=True).start()
            self._pass(server, client, 0.05)

    def _pass(self, source: socket.socket, sink: socket.socket, pause: float) -> None:
        with contextlib.suppress(OSError):
            while not self.stopped.is_set():
                data = source.recv(1 if pause else 65536)
                if not data:
                    return
                sink.sendall(data)
                time.sleep(pause)
