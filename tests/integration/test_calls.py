"""How each backend answer is treated: retries, Retry-After, timeouts, bodies, redirects, concurrency, rate."""

from __future__ import annotations

import pytest

from emailsync.config.settings import load
from harness.backend import Backend, Behaviour
from tests.conftest import AppDb, EmailSync


@pytest.fixture
def one_user(pg: AppDb) -> AppDb:
    pg.add_users(1)
    return pg


@pytest.mark.parametrize("status", [409, 429, 502, 503, 504])
def test_transient_status_is_retried_then_synced(
    status: int, one_user: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    backend.script(1, Behaviour(status=status), Behaviour(status=200))
    email_sync.configure(one_user, backend, logging={"level": "debug"})

    result = email_sync("run")

    assert result.code == 0
    assert one_user.synced_ids() == {1}
    calls = backend.sync_calls(1)
    assert len(calls) == 2
    assert calls[0].header("Idempotency-Key") == calls[1].header("Idempotency-Key")
    assert result.event("user_synced")["attempts"] == 2


def test_retry_after_is_honoured(one_user: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    backend.script(1, Behaviour(status=429, retry_after="1"), Behaviour(status=200))
    email_sync.configure(one_user, backend, backend={"retry_backoff_max": "2s"})

    assert email_sync("run").code == 0

    first, second = backend.sync_calls(1)
    assert second.at - first.at >= 0.95


def test_retry_after_longer_than_the_cap_fails_the_user_without_waiting(
    one_user: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    backend.script(1, Behaviour(status=503, retry_after="3600"))
    email_sync.configure(one_user, backend)

    result = email_sync("run")

    assert result.code == 0
    assert len(backend.sync_calls(1)) == 1
    assert one_user.state(1).failures == 1
    assert one_user.synced_ids() == set()


@pytest.mark.parametrize(
    "retry_after",
    ["\u00b2", "\u0663", "Wed, 21 Oct 99999999999 07:28:00 GMT"],
    ids=["superscript-two", "arabic-indic-three", "year-99999999999"],
)
def test_a_retry_after_that_is_not_ascii_seconds_nor_a_date_in_range_counts_as_absent(
    retry_after: str, one_user: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    backend.script(1, Behaviour(status=503, retry_after=retry_after), Behaviour(status=200))
    email_sync.configure(one_user, backend, logging={"level": "debug"})

    result = email_sync("run")

    assert result.code == 0
    assert one_user.synced_ids() == {1}
    assert result.event("user_synced")["attempts"] == 2  # retried after the usual backoff, well under its cap


def test_a_retry_after_of_thousands_of_digits_is_longer_than_the_cap(
    one_user: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    backend.script(1, Behaviour(status=503, retry_after="9" * 5000))
    email_sync.configure(one_user, backend)

    result = email_sync("run")

    assert result.code == 0
    assert len(backend.sync_calls(1)) == 1
    assert one_user.state(1).failures == 1


def test_transient_failures_past_the_retries_fail_the_user(
    one_user: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    backend.set_default(Behaviour(status=503))
    email_sync.configure(one_user, backend, backend={"retries": 2})

    result = email_sync("run")

    assert result.code == 0
    assert len(backend.sync_calls(1)) == 3
    state = one_user.state(1)
    assert state.failures == 1 and "503" in state.last_error
    assert one_user.synced_ids() == set()


def test_server_error_500_is_not_retried(one_user: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    backend.set_default(Behaviour(status=500))
    email_sync.configure(one_user, backend)

    assert email_sync("run").code == 0

    assert len(backend.sync_calls(1)) == 1
    assert one_user.state(1).failures == 1


def test_dropped_connection_is_retried(one_user: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    backend.script(1, Behaviour(close=True), Behaviour())
    email_sync.configure(one_user, backend)

    assert email_sync("run").code == 0

    assert len(backend.sync_calls(1)) == 2
    assert one_user.synced_ids() == {1}


def test_a_kept_alive_connection_the_backend_closed_while_idle_costs_no_failed_call(
    pg: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    pg.add_users(3)
    backend.idle_timeout = 0.1  # closed long before the next call: max_rate spaces them 1 s apart
    email_sync.configure(pg, backend, backend={"concurrency": 1, "max_rate": 1}, logging={"level": "debug"})

    result = email_sync("run")

    assert result.code == 0 and pg.synced_ids() == {1, 2, 3}
    synced = [e for e in result.events if e["event"] == "user_synced"]
    assert [e["attempts"] for e in synced] == [1, 1, 1]  # a request sent on the closed connection would fail
    assert backend.connections >= 4  # the health check's, then one per call: each was closed while idle


def test_read_timeout_is_retried_then_fails_the_user(one_user: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    backend.set_default(Behaviour(hang=True))
    email_sync.configure(one_user, backend, backend={"read_timeout": "300ms", "retries": 1})

    result = email_sync("run")

    assert result.code == 0
    assert len(backend.sync_calls(1)) == 2
    state = one_user.state(1)
    assert state.failures == 1 and state.last_error == "read timed out: no answer within backend.read_timeout (0.3s)"


def test_answer_after_the_read_timeout_is_a_failure_not_a_sync(
    one_user: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    backend.set_default(Behaviour(delay=1.0))
    email_sync.configure(one_user, backend, backend={"read_timeout": "200ms", "retries": 0})

    assert email_sync("run").code == 0

    assert one_user.synced_ids() == set()
    assert one_user.state(1).failures == 1


@pytest.mark.parametrize(
    "trickle",
    # A byte every 50 ms, long before the 3 s read timeout: of the body after the headers, or of the headers.
    [Behaviour(trickle=0.05), Behaviour(trickle_headers=0.05)],
    ids=["body", "status line and headers"],
)
def test_a_trickling_answer_is_cut_at_the_call_deadline_as_a_transport_failure(
    trickle: Behaviour, one_user: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    backend.set_default(trickle)
    email_sync.configure(one_user, backend, backend={"call_timeout": "1s", "retries": 1})

    result = email_sync("run")

    assert result.code == 0
    failed = result.event("user_failed")
    assert (failed["kind"], failed["attempts"]) == ("transport", 2)
    assert "within backend.call_timeout (1s)" in failed["error"]
    state = one_user.state(1)
    assert state.failures == 1 and "within backend.call_timeout (1s)" in state.last_error


def test_a_run_started_by_hand_against_a_trickling_backend_ends_on_its_own(
    pg: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    pg.add_users(6)
    backend.set_default(Behaviour(trickle=0.05))
    email_sync.configure(pg, backend, backend={"call_timeout": "1s", "retries": 1, "concurrency": 2})
    longest_call = load(str(email_sync.config_path), {}).backend.longest_call

    # No systemd, no watchdog: only the deadline ends the calls. The bound is generous, never a measurement.
    result = email_sync.subprocess("run", timeout=30 + 10 * 6 * longest_call)

    assert result.code == 0, result.stderr
    assert pg.scalar("SELECT count(*) FROM email_sync_user_state WHERE failures = 1") == 6
    assert pg.synced_ids() == set()


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json at all",
        b"[1, 2, 3]",
        b'{"emails_synced": "many"}',
        b"\xff\xfe\x00garbage",
        b"[" * 60_000,
        b'{"emails_synced": 1' + b"0" * 4000 + b"}",
        b'{"emails_synced": 1' + b"0" * 5000 + b"}",
    ],
    ids=[
        "empty",
        "not-json",
        "a-list",
        "a-string-count",
        "garbage",
        "60000-nested-arrays",
        "a-count-of-4000-digits",
        "a-count-past-ints-digit-limit",
    ],
)
def test_any_2xx_body_counts_as_synced(body: bytes, one_user: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    backend.set_default(Behaviour(status=200, body=body))
    email_sync.configure(one_user, backend, logging={"level": "debug"})

    result = email_sync("run")

    assert result.code == 0
    assert one_user.synced_ids() == {1}
    assert result.event("user_synced")["emails_synced"] is None


def test_emails_synced_count_is_read_from_a_json_body(one_user: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    backend.set_default(Behaviour(status=202, body=b'{"emails_synced": 12, "other": true}'))
    email_sync.configure(one_user, backend, logging={"level": "debug"})

    result = email_sync("run")

    assert result.event("user_synced")["emails_synced"] == 12


def test_huge_2xx_body_is_cut_and_still_synced(one_user: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    backend.set_default(Behaviour(status=200, body=b"x" * 10_000_000))
    email_sync.configure(one_user, backend)

    assert email_sync("run").code == 0

    assert one_user.synced_ids() == {1}


def test_calls_after_a_cut_answer_get_their_own_answers(pg: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    """The rest of a cut answer is still on the wire: the next call on that thread must not read it as its own."""
    pg.add_users(3)
    backend.script(1, Behaviour(status=200, body=b"x" * 10_000_000))
    backend.set_default(Behaviour(status=200, body=b'{"emails_synced": 7}'))
    email_sync.configure(pg, backend, backend={"concurrency": "1"}, logging={"level": "debug"})

    result = email_sync("run")

    assert result.code == 0
    assert pg.synced_ids() == {1, 2, 3}
    synced = [e for e in result.events if e["event"] == "user_synced"]
    assert sorted(e["emails_synced"] or 0 for e in synced) == [0, 7, 7]


def test_huge_error_body_is_stored_truncated(one_user: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    backend.set_default(Behaviour(status=400, body=b"E" * 100_000))
    email_sync.configure(one_user, backend)

    result = email_sync("run")

    assert result.code == 0
    assert len(one_user.state(1).last_error) <= 600
    assert all(len(line) < 8192 for line in result.stdout.splitlines())


def test_redirect_is_not_followed(pg: AppDb, email_sync: EmailSync) -> None:
    pg.add_users(3)
    with Backend(token="tok-secret-1") as target, Backend() as backend:
        backend.script(2, Behaviour(status=307, headers={"Location": target.base_url + "/api/v1/sync/start"}))
        email_sync.configure(pg, backend)

        result = email_sync("run")

        assert target.requests() == []
    assert result.code == 0
    assert pg.synced_ids() == {1, 3}
    assert "redirecting to" in pg.state(2).last_error


def test_calls_in_flight_never_exceed_the_concurrency(pg: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    pg.add_users(12)
    latency = 0.3
    backend.set_default(Behaviour(delay=latency))
    email_sync.configure(pg, backend, backend={"concurrency": 3})

    assert email_sync("run").code == 0

    # Each thread waits for its answer before its next call, so any window shorter than the latency sees at
    # most `concurrency` arrivals.
    arrivals = sorted(call.at for call in backend.sync_calls())
    assert len(arrivals) == 12
    window = latency * 0.9
    assert max(sum(1 for t in arrivals if start <= t < start + window) for start in arrivals) == 3


def test_max_rate_spaces_the_calls(pg: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    pg.add_users(11)
    email_sync.configure(pg, backend, backend={"concurrency": 4, "max_rate": 10})

    assert email_sync("run").code == 0

    # The 11th call may start no earlier than 1 s after the first; only the first call's own delay (connecting)
    # can shorten what the backend sees. Unlimited, the 11 calls arrive within a few milliseconds.
    arrivals = sorted(call.at for call in backend.sync_calls())
    assert len(arrivals) == 11
    assert arrivals[-1] - arrivals[0] >= 0.8
