"""emailsync.sync.http1 against h11, python-hyper's HTTP/1.1, as an oracle: the same answer bytes, sent by a real server
over plain TCP and over TLS in pieces (a TLS record's size among them), read by http1 through backend.Session and
fed to an h11 client connection that sent the same request. Either both read the same status, body and framing
(whether the connection can carry the next call), or http1 fails the call cleanly where h11 rejects the answer.

Where they differ by design, the comparison says so, with the reason:
- http1 reads a body up to MAX_BODY + 1 bytes and stops: a cut body is what it returns, however the rest would
  have gone (h11 reads on, and may reject what http1 never read).
- h11 refuses a head over its max_incomplete_event_size (16 KiB by default): the oracle is given http1's MAX_HEAD
  instead, so both use one cap. h11 checks it only while a head is incomplete after a piece, so a head just over
  the cap that arrives whole in one piece passes; http1 refuses every head over it.
- h11 returns the headers of a 101 and leaves the connection to the new protocol; http1 never asks to switch, so a
  101 fails its call.
- h11 refuses a control character (or a byte no token has) anywhere in the status line or a header line. http1
  checks what it reads, not every byte (a check of each byte of every head is the CPU its speed saves): the version
  and the code, a colon and no space around each name, the framing headers' values; the reason phrase and other
  values are read as they are. Such an answer is compared no further.
- h11 refuses whitespace before a chunk extension's ";", which RFC 9112 allows (BWS) and http1 reads; the answers
  here put none there.
- h11 reads a bare LF as the end of a line of the head, as RFC 9112 (2.2) lets a recipient do; http1 refuses a head
  with a CR or LF that is not part of a CRLF, as it also may, rather than read a line's end where the backend
  may not have meant one.
- h11 refuses a Transfer-Encoding other than chunked alone. http1 reads such a body to the end of the connection,
  as RFC 9112 (6.3) says a client does when chunked is not the last coding of an answer.
- Bytes after a whole answer: h11 keeps them for the next cycle; http1 closes the connection rather than read them
  as the next call's answer, once they have arrived (at the latest when it would send the next request: see
  test_http1's stray answers). Whether they have when the answer is read depends on the network, so framing is
  compared only for answers that end where their message does.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emailsync.sync.backend import MAX_BODY, CallFailed
from emailsync.sync.http1 import MAX_HEAD
from tests.unit.sync.test_http1 import Answer, RawBackend

REQUEST_BODY = b'{"user_id": 1}'  # what tests.unit.sync.test_http1.post sends
TLS_RECORD = 16 * 1024


@dataclass(frozen=True)
class Read:
    """What a client made of an answer: its status, its body, whether the body ended where its framing said, and
    whether the connection could carry the next call; or the failure (and the status, if the head was read)."""

    status: int | None
    body: bytes = b""
    whole: bool = False
    reusable: bool = False
    failed: str | None = None


def h11_reads(answer: bytes, piece: int) -> tuple[Read, bytes]:
    """The oracle's reading of ``answer`` arriving ``piece`` bytes at a time, then the end of the stream; and the
    bytes after the message, if it ended."""
    connection = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
    request = h11.Request(
        method="POST", target="/sync", headers=[("Host", "127.0.0.1"), ("Content-Length", str(len(REQUEST_BODY)))]
    )
    for event in (request, h11.Data(data=REQUEST_BODY), h11.EndOfMessage()):
        connection.send(event)
    status, body = None, bytearray()
    pieces = [answer[start : start + piece] for start in range(0, len(answer), piece)] + [b""]
    try:
        for index, data in enumerate(pieces):
            connection.receive_data(data)
            while (event := connection.next_event()) is not h11.NEED_DATA:
                if isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    rest = connection.trailing_data[0] + b"".join(pieces[index + 1 :])
                    ended_with_the_stream = index == len(pieces) - 1
                    reusable = connection.their_state is h11.DONE and not ended_with_the_stream
                    return Read(status, bytes(body), True, reusable), rest
                elif isinstance(event, h11.ConnectionClosed):
                    return Read(status, bytes(body), failed="closed"), b""
                elif event is h11.PAUSED:  # a 101: the connection now speaks another protocol
                    return Read(status, bytes(body), failed="switched protocols"), b""
    except h11.RemoteProtocolError as error:
        return Read(status, bytes(body), failed=str(error)), b""
    raise AssertionError("h11 wanted more than the end of the stream")


def http1_reads(server: RawBackend, answer: bytes, piece: int) -> Read:
    """http1's reading of ``answer``, sent by ``server`` ``piece`` bytes a write, then the connection closed."""
    server.script(Answer(answer, close=True, piece=piece))
    with server.session(read_timeout=5.0, call_timeout=10.0) as session:
        scheme = "https" if server.tls else "http"
        try:
            reply = session.call("POST", f"{scheme}://127.0.0.1:{server.port}/sync", REQUEST_BODY)
        except CallFailed as failed:
            assert "\n" not in failed.description
            return Read(failed.status, failed=failed.description)
        return Read(reply.status, reply.body, True, session.connection.reusable)


# -- answers ----------------------------------------------------------------------------------------------------------

TOKEN = st.from_regex(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,24}", fullmatch=True)
FIELD_VALUE = st.from_regex(r"[\x21-\x7e\x80-\xff]([\x20-\x7e\x80-\xff]{0,40}[\x21-\x7e\x80-\xff])?", fullmatch=True)
HEADER = st.tuples(TOKEN, FIELD_VALUE).filter(
    lambda header: header[0].lower() not in ("content-length", "transfer-encoding", "connection")
)


@st.composite
def framed(draw: st.DrawFn) -> bytes:
    """An answer as a server might write it, rightly or wrongly: any status, many or long headers, a body framed by
    a length (right, short, long, zero-padded, of thousands of digits), by chunks (of any size field), or by the
    end of the connection."""
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]))
    status = draw(st.sampled_from([200, 202, 204, 304, 404, 429, 500, 503]) | st.integers(100, 599))
    reason = draw(st.sampled_from([b" OK", b" ", b"", b" Service Unavailable", b" \xe9t\xe9"]))
    head = [b"%s %d%s" % (version, status, reason)]
    headers = draw(st.lists(HEADER, max_size=8))
    head += [name.encode() + b": " + value.encode("latin-1") for name, value in headers]
    head += [b"X-Many-%d: %d" % (n, n) for n in range(draw(st.sampled_from([0, 0, 0, 1000, 3000])))]
    long_field = draw(st.sampled_from([0, 0, 0, 8000, 40_000, 70_000]))
    if long_field:
        head.append(b"X-Long: " + b"l" * long_field)
    if draw(st.booleans()):
        head.append(b"Connection: " + draw(st.sampled_from([b"close", b"keep-alive", b"Keep-Alive, Upgrade"])))
    body = draw(st.binary(max_size=300) | st.sampled_from([b"x" * 70_000, b"y" * 20_000]))
    framing = draw(st.sampled_from(["length", "length", "chunked", "chunked", "close", "length-off", "odd-length"]))
    if framing == "length":
        head.append(b"Content-Length: %d" % len(body))
        payload = body
    elif framing == "length-off":
        head.append(b"Content-Length: %d" % max(0, len(body) + draw(st.integers(-5, 5))))
        payload = body
    elif framing == "odd-length":
        head.append(
            b"Content-Length: "
            + draw(
                st.sampled_from(
                    [b"0" * 19 + b"5", b"0" * 25 + b"5", b"9" * 21, b"9" * 5000, b"1" * 20, b"5, 5", b"5, 6"]
                )
            )
        )
        payload = body
    elif framing == "chunked":
        head.append(b"Transfer-Encoding: chunked")
        payload = draw(chunked(body))
    else:
        payload = body
    if draw(st.booleans()):
        payload += draw(st.sampled_from([b"HTTP/1.1 500 Stray\r\nContent-Length: 5\r\n\r\nstray", b"\r\n", b"junk"]))
    interim = b"HTTP/1.1 100 Continue\r\n\r\n" if draw(st.booleans()) else b""
    answer = interim + b"\r\n".join(head) + b"\r\n\r\n" + payload
    if draw(st.integers(0, 4)) == 0:  # one byte changed: whatever that breaks
        at = draw(st.integers(0, len(answer) - 1))
        answer = answer[:at] + bytes([draw(st.integers(0, 255))]) + answer[at + 1 :]
    return answer


@st.composite
def chunked(draw: st.DrawFn, body: bytes) -> bytes:
    out, at = bytearray(), 0
    while at < len(body):
        size = draw(st.integers(1, max(1, len(body) - at)))
        field = draw(st.sampled_from([b"%x", b"%X", b"%08x", b"%x;ext=1", b"%x;a=b "])) % size
        out += field + b"\r\n" + body[at : at + size] + b"\r\n"
        at += size
    last = draw(st.sampled_from([b"0\r\n\r\n", b"0\r\nTrailer: t\r\n\r\n", b"0;x\r\n\r\n", b""]))
    huge = draw(st.sampled_from([b"", b"", b"", b"f" * 20 + b"\r\n", b"f" * 21 + b"\r\n", b"f" * 5000 + b"\r\n"]))
    return bytes(out + huge + last)


# -- the comparison ---------------------------------------------------------------------------------------------------


def agree(answer: bytes, ours: Read, oracle: Read, rest: bytes) -> None:
    unchecked = ("illegal status line", "illegal header line")
    if ours.failed is None and oracle.failed and oracle.failed.startswith(unchecked):
        return  # see the module's docstring: characters http1 does not check
    if ours.failed is None and oracle.failed == "Only Transfer-Encoding: chunked is supported":
        assert not ours.reusable  # see the module's docstring: read to the end of the connection
        return
    if ours.failed is None:
        assert oracle.status == ours.status, (ours, oracle)
        if len(ours.body) > MAX_BODY:  # cut: only what was read is compared
            assert oracle.body[: MAX_BODY + 1] == ours.body
            return
        assert oracle.failed is None and oracle.whole, (ours, oracle)
        assert ours.body == oracle.body
        if not rest:  # nothing after the message: both say whether the connection can carry the next call
            assert ours.reusable == oracle.reusable, (ours, oracle)
        return
    if oracle.failed is not None:
        return  # both refuse it
    if ours.failed.startswith(("an answer with status 101", "an answer whose head has a CR or LF")):
        return  # see the module's docstring
    if ours.failed == f"an answer whose head is over {MAX_HEAD // 1024} KiB":
        assert any(len(head) > MAX_HEAD for head in answer.split(b"\r\n\r\n"))
        return  # see the module's docstring: h11 checks its cap only between the pieces it is fed
    raise AssertionError(f"http1 failed ({ours.failed}) where h11 read {oracle}")


@pytest.fixture(scope="module", params=["plain", "tls"])
def server(request: pytest.FixtureRequest, self_signed_cert: tuple[str, str]) -> Iterator[RawBackend]:
    backend = RawBackend(tls=self_signed_cert if request.param == "tls" else None)
    yield backend
    backend.listener.close()


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(answer=framed(), piece=st.sampled_from([1, 7, 100, 1024, TLS_RECORD, 1 << 20]))
def test_http1_reads_an_answer_as_h11_does_or_fails_the_call_where_h11_rejects_it(
    server: RawBackend, answer: bytes, piece: int
) -> None:
    if piece < 1024 and len(answer) > 4096:
        piece = 1024  # a few bytes a write are for small answers: the fuzz stays fast
    oracle, rest = h11_reads(answer, piece)
    agree(answer, http1_reads(server, answer, piece), oracle, rest)
