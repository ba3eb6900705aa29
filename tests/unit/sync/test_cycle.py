"""`email-sync run`, one cycle: who is due, the calls and their Idempotency-Keys, backoff, leases, the failures that
end a run early (one clear line, the documented exit code, nobody's last_sync touched), and the cycle's own rules
(when the first answers condemn the configuration, when answered results are written). The runs here use the
embedded SQLite and a real HTTP backend on 127.0.0.1; tests/integration/test_cycle.py runs them again on
PostgreSQL."""

from __future__ import annotations

import pytest

from emailsync.errors import EXIT_CONFIG, EXIT_TEMPFAIL, EndpointError
from emailsync.model import Claim, Kind, Outcome, Result
from emailsync.sync.cycle import UNWRITTEN_FOR, Unwritten, Verdict
from harness.backend import Backend, Behaviour
from tests.conftest import AppDb, EmailSync
from tests.unit.sync.test_backend import claim


def outcome(user: int, kind: Kind, status: int | None) -> Outcome:
    return Outcome(Claim(user, str(user), f"u{user}@example.com", 0, "", 0), kind, status, 1, 5)


def test_three_404s_in_a_row_condemn_the_endpoint_naming_the_key() -> None:
    verdict = Verdict(3, "http://backend/sync")
    verdict.observe(outcome(1, Kind.ENDPOINT, 404))
    verdict.observe(outcome(2, Kind.ENDPOINT, 404))

    with pytest.raises(EndpointError, match=r"backend\.sync_path"):
        verdict.observe(outcome(3, Kind.ENDPOINT, 404))


def test_one_success_releases_the_held_answers_as_those_users_failures() -> None:
    verdict = Verdict(3, "http://backend/sync")

    assert verdict.observe(outcome(1, Kind.ENDPOINT, 404)) == []
    released = verdict.observe(outcome(2, Kind.SYNCED, 200))

    assert [o.claim.user_id for o in released] == [1, 2]
    assert verdict.observe(outcome(3, Kind.ENDPOINT, 404))[0].claim.user_id == 3


def test_401s_for_everyone_blame_the_token() -> None:
    verdict = Verdict(2, "http://backend/sync")
    verdict.observe(outcome(1, Kind.AUTH, 401))

    with pytest.raises(EndpointError, match=r"backend\.token_file"):
        verdict.observe(outcome(2, Kind.AUTH, 403))


def synced(user: int) -> Result:
    return Result(claim(user), True, 5)


def test_an_answered_result_waits_for_its_write_no_longer_than_unwritten_for() -> None:
    unwritten = Unwritten(at_most=64)
    unwritten.add(synced(1), now=100.0)
    unwritten.add(synced(2), now=100.15)

    assert unwritten.due_in(100.1) == pytest.approx(UNWRITTEN_FOR - 0.1)
    assert unwritten.due_in(100.0 + UNWRITTEN_FOR) == 0.0  # counted from the oldest result, not the newest


def test_at_most_results_waiting_are_written_at_once() -> None:
    unwritten = Unwritten(at_most=3)
    for user in (1, 2, 3):
        assert unwritten.due_in(100.0) > 0
        unwritten.add(synced(user), now=100.0)

    assert unwritten.due_in(100.0) == 0.0


def test_unused_leases_are_given_back_within_unwritten_for_and_do_not_count_as_results() -> None:
    unwritten = Unwritten(at_most=1)
    unwritten.add(claim(1), now=100.0)

    assert unwritten.due_in(100.0) == pytest.approx(UNWRITTEN_FOR)
    assert unwritten.due_in(100.0 + UNWRITTEN_FOR) == 0.0


def test_nothing_waiting_is_never_due_and_a_write_starts_the_clock_again() -> None:
    unwritten = Unwritten(at_most=64)
    assert unwritten.due_in(100.0) == float("inf")
    unwritten.add(synced(1), now=100.0)
    unwritten.add(claim(2), now=100.1)

    results, unused = unwritten.take()

    assert [r.claim.user_id for r in results] == [1] and [c.user_id for c in unused] == [2]
    assert unwritten.due_in(200.0) == float("inf")
    unwritten.add(synced(3), now=200.0)
    assert unwritten.due_in(200.0) == pytest.approx(UNWRITTEN_FOR)


def test_run_syncs_every_due_user_once_and_records_the_run(
    app_db: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    never = app_db.add_users(3)
    stale = app_db.add_users(3, age=2 * 3600, start=100)
    email_sync.configure(app_db, backend)

    result = email_sync("run")

    assert result.code == 0, result.stdout
    assert app_db.synced_ids() == set(never + stale)
    assert sorted(c.user_id for c in backend.sync_calls()) == sorted(never + stale)
    finished = result.event("cycle_finished")
    assert (finished["due"], finished["synced"], finished["failed"], finished["outcome"]) == (6, 6, 0, "ok")
    [run] = app_db.runs()
    assert (run.due, run.synced, run.failed, run.skipped, run.outcome) == (6, 6, 0, 0, "ok")
    assert run.finished_at is not None


def test_recently_synced_users_are_not_due(app_db: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    app_db.add_users(2, age=59 * 60)
    email_sync.configure(app_db, backend)

    result = email_sync("run")

    assert result.code == 0
    assert backend.sync_calls() == []
    assert result.event("cycle_finished")["due"] == 0


def test_a_second_run_finds_nobody_due(app_db: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    app_db.add_users(5)
    email_sync.configure(app_db, backend)
    assert email_sync("run").code == 0

    second = email_sync("run")

    assert second.code == 0
    assert second.event("cycle_finished")["due"] == 0
    assert len(backend.sync_calls()) == 5


def test_sync_call_carries_user_email_max_emails_token_and_idempotency_key(
    app_db: AppDb, email_sync: EmailSync, tmp_path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("t0ken-value\n")
    token_file.chmod(0o600)
    app_db.add_users(2)
    with Backend(token="t0ken-value") as backend:
        email_sync.configure(app_db, backend, backend={"token_file": str(token_file)}, sync={"max_emails": 7})
        assert email_sync("run").code == 0
        calls = sorted(backend.sync_calls(), key=lambda c: c.user_id)

    assert [c.json for c in calls] == [
        {"user_id": 1, "email": "user1@example.com", "max_emails": 7},
        {"user_id": 2, "email": "user2@example.com", "max_emails": 7},
    ]
    assert all(c.header("Authorization") == "Bearer t0ken-value" for c in calls)
    keys = [c.header("Idempotency-Key") for c in calls]
    assert all(keys) and len(set(keys)) == 2


def _keys(backend: Backend, user_id: int) -> list[str | None]:
    return [call.header("Idempotency-Key") for call in backend.sync_calls(user_id)]


def test_a_recorded_failure_gives_the_next_attempt_a_new_idempotency_key(
    app_db: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    app_db.add_users(1)
    backend.script(1, Behaviour(status=500), Behaviour())
    email_sync.configure(app_db, backend)
    assert email_sync("run").code == 0
    app_db.execute(f"UPDATE email_sync_user_state SET next_attempt_at = {app_db.at(-1)}")  # the backoff has passed

    assert email_sync("run").code == 0

    failed, synced = _keys(backend, 1)
    assert failed != synced and app_db.synced_ids() == {1}


def test_a_reset_never_gives_a_retry_the_idempotency_key_of_an_earlier_attempt(
    app_db: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    """A reset puts the failure count back to 0 within the same window: a backend replaying what it answered to an
    earlier key would replay the very failure the reset was meant to retry."""
    app_db.add_users(1)
    backend.script(1, Behaviour(status=500), Behaviour(status=500), Behaviour())
    email_sync.configure(app_db, backend)
    for _ in range(2):
        assert email_sync("run").code == 0
        app_db.execute(f"UPDATE email_sync_user_state SET next_attempt_at = {app_db.at(-1)}")
    assert email_sync("reset", "1").code == 0

    assert email_sync("run").code == 0

    *failed, retried = _keys(backend, 1)
    assert len(failed) == 2 and retried not in failed and app_db.synced_ids() == {1}


def test_a_new_window_gets_a_new_idempotency_key(app_db: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    app_db.add_users(1)
    email_sync.configure(app_db, backend)
    assert email_sync("run").code == 0
    app_db.execute(f"UPDATE users SET last_sync = {app_db.at(-2 * 3600)}")  # two hours pass

    assert email_sync("run").code == 0

    first, second = _keys(backend, 1)
    assert first != second


def test_no_authorization_header_without_a_token(app_db: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    app_db.add_users(1)
    email_sync.configure(app_db, backend)

    assert email_sync("run").code == 0

    assert backend.sync_calls()[0].header("Authorization") is None


def test_user_failing_with_4xx_gets_backoff_and_error_and_keeps_last_sync(
    app_db: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    app_db.add_users(2)
    backend.script(2, Behaviour(status=422, body=b'{"error": "mailbox locked"}'))
    email_sync.configure(app_db, backend)

    result = email_sync("run")

    assert result.code == 0
    assert app_db.synced_ids() == {1}
    assert len(backend.sync_calls(2)) == 1  # a 4xx is not retried
    state = app_db.state(2)
    assert state.failures == 1
    assert "422" in state.last_error and "mailbox locked" in state.last_error
    assert state.lease_owner is None
    assert 120 < app_db.seconds_until("next_attempt_at", 2) <= 300  # failure_backoff 5m, jitter 0.5-1
    assert result.event("cycle_finished")["failed"] == 1


def test_oldest_users_go_first_and_a_run_takes_at_most_max_users_per_run(
    app_db: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    app_db.add_users(1, age=2 * 3600, start=1)
    app_db.add_users(1, age=5 * 3600, start=2)
    app_db.add_users(1, start=3)  # never synced: the oldest of all
    app_db.add_users(1, age=3 * 3600, start=4)
    email_sync.configure(app_db, backend, sync={"max_users_per_run": 2, "batch_size": 1})

    result = email_sync("run")

    assert result.code == 0
    assert app_db.synced_ids() == {3, 2}
    assert result.event("cycle_finished")["due"] == 4


def test_user_in_backoff_is_not_due_until_its_next_attempt(
    app_db: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    app_db.add_users(2)
    app_db.execute(
        f"INSERT INTO email_sync_user_state (user_id, failures, next_attempt_at) VALUES ('1', 2, {app_db.at(600)}),"
        f" ('2', 2, {app_db.at(-1)})"
    )
    email_sync.configure(app_db, backend)

    assert email_sync("run").code == 0

    assert app_db.synced_ids() == {2}
    assert backend.sync_calls(1) == []


def test_consecutive_failures_double_the_backoff(app_db: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    app_db.add_users(1)
    app_db.execute("INSERT INTO email_sync_user_state (user_id, failures) VALUES ('1', 3)")
    backend.set_default(Behaviour(status=400))
    email_sync.configure(app_db, backend, sync={"failure_backoff": "1m", "failure_backoff_max": "1d"})

    assert email_sync("run").code == 0

    assert app_db.state(1).failures == 4
    assert 60 * 8 * 0.5 - 30 < app_db.seconds_until("next_attempt_at", 1) <= 60 * 8  # 1m * 2**3, jitter 0.5-1


def test_backoff_is_capped(app_db: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    app_db.add_users(1)
    app_db.execute("INSERT INTO email_sync_user_state (user_id, failures) VALUES ('1', 30)")
    backend.set_default(Behaviour(status=400))
    email_sync.configure(app_db, backend, sync={"failure_backoff": "5m", "failure_backoff_max": "1h"})

    assert email_sync("run").code == 0

    assert app_db.seconds_until("next_attempt_at", 1) <= 3600


def test_success_clears_failures_backoff_and_error(app_db: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    app_db.add_users(1)
    app_db.execute(
        "INSERT INTO email_sync_user_state (user_id, failures, last_error) VALUES ('1', 4, 'HTTP 500 earlier')"
    )
    email_sync.configure(app_db, backend)

    assert email_sync("run").code == 0

    state = app_db.state(1)
    assert (state.failures, state.last_error, state.next_attempt_at, state.lease_owner) == (0, None, None, None)
    assert state.last_success_at is not None and state.last_duration_ms is not None


def test_user_leased_by_a_live_run_is_left_alone(app_db: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    app_db.add_users(2)
    app_db.lease(1, "other-run", 600)
    email_sync.configure(app_db, backend)

    assert email_sync("run").code == 0

    assert app_db.synced_ids() == {2}
    assert app_db.state(1).lease_owner == "other-run"


def test_a_claim_that_waits_too_long_for_its_call_is_given_back_uncalled(
    app_db: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    # Claims run ahead of the calls: here two wait behind the one calling. With one call at a time of 0.7 s and a
    # lease of 2 s that must cover a longest call of 1 s, a claim that is still queued 1 s after it was taken is
    # not called (its lease could end before the call does, and another run could then call the same user): it is
    # given back, due again (and maybe claimed again by this very run).
    app_db.add_users(5)
    backend.set_default(Behaviour(delay=0.7))
    email_sync.configure(
        app_db,
        backend,
        backend={
            "concurrency": 1,
            "retries": 0,
            "call_timeout": "900ms",
            "read_timeout": "900ms",
            "retry_backoff_max": "100ms",
        },
        sync={"lease": "2s"},
    )

    result = email_sync("run")

    assert result.code == 0, result.stdout
    finished = result.event("cycle_finished")
    called = [call.user_id for call in backend.sync_calls()]
    assert finished["skipped"] >= 1
    assert len(called) == len(set(called)) == finished["synced"]
    assert app_db.synced_ids() == set(called)
    assert app_db.leased() == []


def test_expired_lease_of_a_crashed_run_is_taken_over(app_db: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    app_db.add_users(1)
    app_db.lease(1, "crashed", -1)
    email_sync.configure(app_db, backend)

    assert email_sync("run").code == 0

    assert app_db.synced_ids() == {1}
    assert app_db.state(1).lease_owner is None


def test_users_filter_limits_who_is_synced(app_db: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    app_db.add_users(4)
    email_sync.configure(app_db, backend, users={"filter": "u.id % 2 = 0"})

    assert email_sync("run").code == 0

    assert app_db.synced_ids() == {2, 4}


def assert_nobody_touched(app: AppDb, backoff_too: bool = True) -> None:
    assert app.synced_ids() == set()
    assert app.leased() == []
    if backoff_too:
        assert app.scalar("SELECT count(*) FROM email_sync_user_state WHERE failures > 0") == 0


def test_wrong_sync_path_exits_78_naming_the_url_and_the_key(app_db: AppDb, email_sync: EmailSync) -> None:
    app_db.add_users(10)
    with Backend() as backend:  # it serves the app's route, /api/v1/test/sync/start
        email_sync.configure(app_db, backend, backend={"sync_path": "/api/v1/sync/start"})  # the old loop's

        result = email_sync("run")

    message = result.assert_one_clear_error(
        EXIT_CONFIG, backend.base_url + "/api/v1/sync/start", "404", "backend.sync_path"
    )
    assert "Traceback" not in message
    assert_nobody_touched(app_db)
    [run] = app_db.runs()
    assert run.outcome == "endpoint_misconfigured" and run.synced == 0


def test_bad_token_for_everyone_exits_78_without_a_backoff_storm(
    app_db: AppDb, email_sync: EmailSync, tmp_path
) -> None:
    app_db.add_users(20)
    token = tmp_path / "token"
    token.write_text("wrong-token-value")
    token.chmod(0o600)
    with Backend(token="right-token") as backend:
        email_sync.configure(app_db, backend, backend={"token_file": str(token)})

        result = email_sync("run")

        assert len(backend.sync_calls()) < 20
    message = result.assert_one_clear_error(EXIT_CONFIG, "token")
    assert "wrong-token-value" not in result.stdout + message
    assert_nobody_touched(app_db)


def test_backend_down_at_start_exits_75_touching_nobody(app_db: AppDb, email_sync: EmailSync) -> None:
    app_db.add_users(3)
    email_sync.configure(app_db, None)  # nothing listens on 127.0.0.1:9

    result = email_sync("run")

    result.assert_one_clear_error(EXIT_TEMPFAIL, "backend unreachable", "127.0.0.1:9/health")
    assert_nobody_touched(app_db)


def test_missing_users_table_exits_78_naming_it(app_db: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    email_sync.configure(app_db, backend, users={"table": "accounts"})

    result = email_sync("run")

    result.assert_one_clear_error(EXIT_CONFIG, "users.table", "accounts")


def test_missing_column_exits_78_naming_it(app_db: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    email_sync.configure(app_db, backend, users={"last_sync_column": "synced_at"})

    result = email_sync("run")

    result.assert_one_clear_error(EXIT_CONFIG, "users.last_sync_column", "synced_at")


def test_invalid_filter_exits_78_naming_it(app_db: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    email_sync.configure(app_db, backend, users={"filter": "no_such_column = 1"})

    result = email_sync("run")

    result.assert_one_clear_error(EXIT_CONFIG, "users.filter")


def test_unicode_and_odd_emails_reach_the_backend_intact(
    app_db: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    emails = ["zoë@exämple.com", "用户@例子.中国", 'quote"back\\slash@example.com', "line\nbreak@example.com"]
    for number, email in enumerate(emails, start=1):
        app_db.execute("INSERT INTO users (id, email) VALUES (:id, :email)", id=number, email=email)
    email_sync.configure(app_db, backend)

    assert email_sync("run").code == 0

    assert sorted(call.json["email"] for call in backend.sync_calls()) == sorted(emails)
    assert app_db.synced_ids() == {1, 2, 3, 4}
