"""What a backend should never send, against `email-sync run` as a real process, over plain HTTP and over TLS: the run
ends 0 (or 75 when it cannot reach the backend at all), shows no traceback, and records every user with its own
answer: the hostile answer fails (or, for a 2xx, syncs) the one user it was sent to, and nobody else.

The answers are written to the socket as they are (harness/backend.py's Behaviour.raw), so they can be what no HTTP
server would write. A host with two addresses is a name in a private /etc/hosts, bind-mounted in a mount
namespace of the run's own (unshare, as root: as the tests and CI run).
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from emailsync.errors import EXIT_CONFIG, EXIT_TEMPFAIL
from emailsync.sync.http1 import RECEIVE
from harness.backend import Backend, Behaviour
from tests.conftest import AppDb, CommandResult, EmailSync, make_cert

USERS = 6
HOSTILE = 3  # the user whose call gets the hostile answer
TWO_ADDRESSES = "two-addresses.test"
SILENT_NAME_SERVER = "127.0.0.77"


def own_answer(user_id: int) -> bytes:
    return json.dumps({"emails_synced": user_id}).encode()


@pytest.fixture(params=["plain", "tls"])
def served(
    request: pytest.FixtureRequest, self_signed_cert: tuple[str, str]
) -> Iterator[tuple[Backend, dict[str, Any]]]:
    """A backend over plain HTTP or TLS, and the backend keys that reach it; every user answered with a count of its
    own (its id), so an answer read for another user shows."""
    tls = request.param == "tls"
    with Backend(tls=self_signed_cert if tls else None) as backend:
        for user_id in range(1, USERS + 1):
            backend.script(user_id, Behaviour(body=own_answer(user_id)))
        yield backend, {"ca_file": self_signed_cert[0]} if tls else {}


def run(email_sync: EmailSync, prefix: list[str] | None = None) -> CommandResult:
    process = email_sync.popen("run", prefix=prefix)
    stdout, stderr = process.communicate(timeout=120)
    result = CommandResult(process.returncode, stdout, stderr)
    assert "Traceback" not in stdout + stderr, stdout + stderr
    return result


def assert_each_synced_user_got_its_own_answer(result: CommandResult, app: AppDb) -> dict[int, dict[str, Any]]:
    """Every user_synced line carries the count the backend sent that user; returns the users' last lines."""
    last = {event["user_id"]: event for event in result.events if event["event"] in ("user_synced", "user_failed")}
    for user_id, event in last.items():
        if event["event"] == "user_synced" and user_id != HOSTILE:
            assert event["emails_synced"] == user_id, event
    assert app.synced_ids() == {u for u, e in last.items() if e["event"] == "user_synced"}
    return last


HUGE_DATE = "Wed, 21 Oct 99999999999 07:28:00 GMT"

# What the hostile user is sent, and whether its call syncs (a 2xx, or a retry after a transient answer) or fails
# naming what was wrong.
AGAIN = Behaviour(body=own_answer(HOSTILE))  # the answer to a retry
CASES: dict[str, tuple[tuple[Behaviour, ...], str | None]] = {
    "content-length-of-thousands-of-digits": (
        (Behaviour(raw=b"HTTP/1.1 200 OK\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n"),),
        "a Content-Length of more than 20 digits",
    ),
    "chunk-size-of-thousands-of-digits": (
        (Behaviour(raw=b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"f" * 5000 + b"\r\n"),),
        "a chunk size of more than 20 hexadecimal digits",
    ),
    "retry-after-a-digit-that-is-not-ascii": ((Behaviour(status=503, retry_after="\u00b2"), AGAIN), None),
    "retry-after-in-the-year-99999999999": ((Behaviour(status=503, retry_after=HUGE_DATE), AGAIN), None),
    "2xx-body-of-60000-nested-arrays": ((Behaviour(body=b"[" * 60_000),), None),
}


@pytest.mark.parametrize("case", CASES)
def test_a_hostile_answer_fails_or_syncs_its_own_user_and_the_run_goes_on(
    case: str, pg: AppDb, served: tuple[Backend, dict[str, Any]], email_sync: EmailSync
) -> None:
    backend, keys = served
    behaviours, failure = CASES[case]
    pg.add_users(USERS)
    backend.script(HOSTILE, *behaviours)
    email_sync.configure(pg, backend, backend=keys, logging={"level": "debug"})

    result = run(email_sync)

    assert result.code == 0, result.stdout + result.stderr
    last = assert_each_synced_user_got_its_own_answer(result, pg)
    assert set(last) == set(range(1, USERS + 1))
    hostile = last[HOSTILE]
    if failure is None:
        assert hostile["event"] == "user_synced"
        assert hostile["emails_synced"] == (HOSTILE if hostile["attempts"] == 2 else None)  # the retry's, or none
    else:
        assert hostile["event"] == "user_failed"  # a transport failure (server_error when its status had come)
        assert failure in hostile["error"] and failure in pg.state(HOSTILE).last_error
    assert pg.synced_ids() == set(range(1, USERS + 1)) - ({HOSTILE} if failure else set())


def test_a_stray_answer_after_each_whole_answer_is_never_read_as_the_next_users(
    pg: AppDb, served: tuple[Backend, dict[str, Any]], email_sync: EmailSync
) -> None:
    """Each 200 fills one read exactly and a 500 follows it in the same write: under TLS, the same record, which the
    TLS layer holds once the 200 is read."""
    backend, keys = served
    pg.add_users(20)
    stray = b"HTTP/1.1 500 Stray\r\nContent-Length: 5\r\n\r\nstray"
    for user_id in range(1, 21):
        body = own_answer(user_id)
        head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Pad: " % len(body)
        answer = head + b"p" * (RECEIVE - len(head) - 4 - len(body)) + b"\r\n\r\n" + body
        backend.script(user_id, Behaviour(raw=answer + stray))
    email_sync.configure(pg, backend, backend={**keys, "concurrency": 2}, logging={"level": "debug"})

    result = run(email_sync)

    assert result.code == 0
    synced = {e["user_id"]: e["emails_synced"] for e in result.events if e["event"] == "user_synced"}
    assert synced == {user_id: user_id for user_id in range(1, 21)}
    assert pg.synced_ids() == set(range(1, 21))


def test_a_bug_set_off_by_one_users_answer_fails_that_user_alone(
    pg: AppDb, served: tuple[Backend, dict[str, Any]], email_sync: EmailSync
) -> None:
    """A bug of ours stands in for any exception an answer could set off: the run is started with the code that
    reads a 2xx body broken for one body."""
    backend, keys = served
    pg.add_users(USERS)
    backend.script(HOSTILE, Behaviour(body=b'{"explode": true}'))
    email_sync.configure(pg, backend, backend=keys, logging={"level": "debug"})
    broken = (
        "import sys\n"
        "import emailsync.sync.backend as backend\n"
        "count = backend._emails_synced\n"
        "def _emails_synced(body):\n"
        "    if b'explode' in body:\n"
        "        raise RuntimeError('simulated bug reading an answer')\n"
        "    return count(body)\n"
        "backend._emails_synced = _emails_synced\n"
        "from emailsync.commands import cli\n"
        "sys.exit(cli.main(sys.argv[1:]))\n"
    )
    process = subprocess.run(
        [sys.executable, "-c", broken, "--config", str(email_sync.config_path), "run"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    result = CommandResult(process.returncode, process.stdout, process.stderr)

    assert result.code == 0, result.stdout + result.stderr
    last = assert_each_synced_user_got_its_own_answer(result, pg)
    assert pg.synced_ids() == set(range(1, USERS + 1)) - {HOSTILE}
    failed = last[HOSTILE]
    assert (failed["kind"], failed["error"]) == (
        "internal",
        "internal error: RuntimeError: simulated bug reading an answer",
    )
    assert "simulated bug reading an answer" in failed["exception"]  # its traceback, once
    assert (result.stdout + result.stderr).count("Traceback") == 1
    assert pg.state(HOSTILE).failures == 1


# -- a host with two addresses ---------------------------------------------------------------------------------


@contextlib.contextmanager
def never_accepting(host: str, port: int = 0) -> Iterator[int]:
    """A listener on ``host`` whose accept queue is full: a connection to it is never answered. Yields its port."""
    listener = socket.create_server((host, port), backlog=0)
    port = listener.getsockname()[1]
    queued: list[socket.socket] = []
    with contextlib.suppress(OSError):
        for _ in range(8):
            queued.append(socket.create_connection((host, port), timeout=0.2))
    try:
        yield port
    finally:
        for sock in queued:
            sock.close()
        listener.close()


def with_hosts(tmp_path: Path, name: str, addresses: list[str]) -> list[str]:
    """The prefix of a command that runs it where ``name`` resolves to ``addresses``: its own mount namespace,
    with /etc/hosts replaced there."""
    hosts = tmp_path / "hosts"
    hosts.write_text("".join(f"{address} {name}\n" for address in addresses))
    return ["unshare", "--mount", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"', str(hosts)]


@contextlib.contextmanager
def with_a_silent_name_server(tmp_path: Path) -> Iterator[tuple[list[str], socket.socket]]:
    """The prefix of a command that runs it where a name other than localhost is asked of a name server that never
    answers (a UDP socket that reads nothing), with the resolver's timeout far longer than a call's; and that socket,
    which keeps what it was asked."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind((SILENT_NAME_SERVER, 53))
    hosts, resolv = tmp_path / "hosts", tmp_path / "resolv.conf"
    hosts.write_text("127.0.0.1 localhost\n")
    resolv.write_text(f"nameserver {SILENT_NAME_SERVER}\noptions timeout:30 attempts:1\n")
    mounts = 'mount --bind "$0" /etc/hosts && mount --bind "$1" /etc/resolv.conf && shift && exec "$@"'
    try:
        yield ["unshare", "--mount", "sh", "-c", mounts, str(hosts), str(resolv)], server
    finally:
        server.close()


def resolved(prefix: list[str], name: str) -> list[str]:
    """The addresses of ``name`` in the order a client in that namespace tries them."""
    lookup = f"import socket; print(' '.join(a[4][0] for a in socket.getaddrinfo({name!r}, 80, type=1)))"
    return subprocess.run(
        [*prefix, sys.executable, "-c", lookup], capture_output=True, text=True, check=True
    ).stdout.split()


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_two_addresses_that_never_answer_share_one_connect_timeout_within_the_call_deadline(
    scheme: str, pg: AppDb, email_sync: EmailSync, tmp_path: Path
) -> None:
    """Each address taking the whole connect timeout would be 4 s of a call limited to 3 s, and the call would be
    cut at its deadline: the failure names the connect timeout only when both addresses shared it."""
    pg.add_users(2)
    prefix = with_hosts(tmp_path, TWO_ADDRESSES, ["127.0.0.1", "127.0.0.2"])
    with never_accepting("127.0.0.1") as port, never_accepting("127.0.0.2", port):
        base_url = f"{scheme}://{TWO_ADDRESSES}:{port}"
        email_sync.configure(pg, None, backend={"base_url": base_url, "connect_timeout": "2s", "call_timeout": "3s"})

        result = run(email_sync, prefix)

    assert resolved(prefix, TWO_ADDRESSES) == ["127.0.0.1", "127.0.0.2"]
    result.assert_one_clear_error(
        EXIT_TEMPFAIL,
        f"backend unreachable at {base_url}/health: not connected and sent within backend.connect_timeout (2s)",
    )
    assert pg.synced_ids() == set()


@pytest.fixture(scope="module")
def two_addresses_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(certificate, key) for https://two-addresses.test."""
    return make_cert(tmp_path_factory.mktemp("tls-two-addresses"), TWO_ADDRESSES, f"DNS:{TWO_ADDRESSES}")


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_an_address_that_never_answers_leaves_the_next_address_its_turn(
    scheme: str, pg: AppDb, email_sync: EmailSync, tmp_path: Path, two_addresses_cert: tuple[str, str]
) -> None:
    """The first address takes only its share of the connect timeout: the second, a working backend, gets the rest,
    its TLS handshake included."""
    pg.add_users(3)
    prefix = with_hosts(tmp_path, TWO_ADDRESSES, ["127.0.0.1", "127.0.0.2"])
    assert resolved(prefix, TWO_ADDRESSES) == ["127.0.0.1", "127.0.0.2"]
    tls = two_addresses_cert if scheme == "https" else None
    with never_accepting("127.0.0.1") as port, Backend(host="127.0.0.2", port=port, tls=tls) as backend:
        for user_id in (1, 2, 3):
            backend.script(user_id, Behaviour(body=own_answer(user_id)))
        keys = {"base_url": f"{scheme}://{TWO_ADDRESSES}:{port}", "connect_timeout": "2s", "call_timeout": "3s"}
        email_sync.configure(
            pg, backend, backend={**keys, **({"ca_file": tls[0]} if tls else {})}, logging={"level": "debug"}
        )

        result = run(email_sync, prefix)

    assert result.code == 0, result.stdout + result.stderr
    assert {e["user_id"]: e["emails_synced"] for e in result.events if e["event"] == "user_synced"} == {
        1: 1,
        2: 2,
        3: 3,
    }
    assert pg.synced_ids() == {1, 2, 3}


# -- the backend's URL, checked when the configuration is loaded ----------------------------------------------------


def test_a_sync_path_and_health_path_that_are_not_ascii_are_sent_percent_encoded(
    pg: AppDb, served: tuple[Backend, dict[str, Any]], email_sync: EmailSync
) -> None:
    backend, keys = served
    backend.sync_path, backend.health_path = "/api/v1/b%C3%BCro/sync", "/gesundheit/%C3%BC"
    pg.add_users(USERS)
    email_sync.configure(
        pg,
        backend,
        backend={**keys, "sync_path": "/api/v1/büro/sync", "health_path": "/gesundheit/ü"},
        logging={"level": "debug"},
    )

    result = run(email_sync)

    assert result.code == 0, result.stdout + result.stderr
    assert_each_synced_user_got_its_own_answer(result, pg)
    assert pg.synced_ids() == set(range(1, USERS + 1))
    assert {r.path for r in backend.requests()} == {"/api/v1/b%C3%BCro/sync", "/gesundheit/%C3%BC"}


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("sync_path", "/api/v1/sync\r\nX-Forged: 1", "backend.sync_path must be a URL path"),
        ("sync_path", "/api/v1/sync\x01", "backend.sync_path must not contain control characters"),
        ("health_path", "/health/100%", "backend.health_path has a '%' that does not start a %XX escape"),
        ("base_url", "http://xn--zz.test", "backend.base_url must have a valid host name (IDNA)"),
        ("base_url", "http://stra\u00dfe.test", "backend.base_url has a host name that IDNA 2003 and 2008 read apart"),
        ("base_url", "http://a..test", "backend.base_url must have a valid host name (IDNA)"),
    ],
    ids=["crlf", "control", "bad-escape", "bad-a-label", "idna-deviation", "empty-label"],
)
def test_a_backend_url_that_cannot_go_on_the_wire_exits_78_naming_its_key(
    key: str, value: str, says: str, pg: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    email_sync.configure(pg, backend, backend={key: value}, logging={"level": "debug"})

    result = run(email_sync)

    result.assert_one_clear_error(EXIT_CONFIG, says)
    assert backend.requests() == []


def test_a_name_server_that_never_answers_takes_no_more_than_the_connect_timeout(
    pg: AppDb, email_sync: EmailSync, tmp_path: Path
) -> None:
    """Looking the backend's name up shares the connect timeout: unbounded, the health check would wait for the
    resolver's own 30 s and end on its "Temporary failure in name resolution" instead."""
    pg.add_users(2)
    with with_a_silent_name_server(tmp_path) as (prefix, name_server):
        base_url = "http://backend.silent-dns.test:8080"
        email_sync.configure(pg, None, backend={"base_url": base_url, "connect_timeout": "2s", "call_timeout": "3s"})

        result = run(email_sync, prefix)

        asked, _ = name_server.recvfrom(512)
    assert b"silent-dns" in asked  # the name went to the name server, which never answered
    result.assert_one_clear_error(
        EXIT_TEMPFAIL,
        f"backend unreachable at {base_url}/health: not connected and sent within backend.connect_timeout (2s)",
    )
    assert pg.synced_ids() == set()
