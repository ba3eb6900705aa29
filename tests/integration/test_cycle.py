"""`email-sync run`: one cycle against a real database and a real HTTP backend, asserted on the database."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import text

from emailsync.model import Result
from emailsync.store.leases import DuePages, Leases
from harness.backend import Backend, Behaviour
from tests.conftest import AppDb, EmailSync


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


@pytest.mark.parametrize(("synced_ago", "due"), [(60.0, 0), (None, 3)], ids=["nobody-due", "three-due"])
def test_a_run_starts_a_call_thread_per_due_user_up_to_the_concurrency(
    synced_ago: float | None, due: int, pg: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    pg.add_users(3, age=synced_ago)
    email_sync.configure(pg, backend, backend={"concurrency": 32})
    before = _call_threads()

    assert email_sync("run").code == 0

    assert len(backend.sync_calls()) == due
    assert len(_call_threads() - before) == due  # a run's call threads wait for work until the process ends


def _call_threads() -> set[threading.Thread]:
    return {thread for thread in threading.enumerate() if thread.name.startswith("call-")}


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


def test_slow_calls_hold_leases_on_about_a_second_of_their_pace_not_on_whole_batches(
    pg: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    # One call at a time of 0.25 s: 4 users a second. Claims run ahead by as many as the calls, or a second of
    # their pace: at most 1 + 2 x 4 users leased at once. A whole batch ahead would lease all 30 at the start,
    # users another host could be calling meanwhile.
    pg.add_users(30)
    backend.set_default(Behaviour(delay=0.25))
    email_sync.configure(pg, backend, backend={"concurrency": 1}, sync={"batch_size": 50})
    process = email_sync.popen("run")
    most_leased = 0
    while process.poll() is None:
        most_leased = max(most_leased, len(pg.leased()))
        time.sleep(0.02)
    stdout, _ = process.communicate(timeout=60)

    assert process.returncode == 0, stdout
    assert len(pg.synced_ids()) == 30
    # Queued and calling: 1 + 2 x 4; called, their leases ended by the next batch write: a second's worth, 4.
    assert 1 <= most_leased <= 1 + 2 * 4 + 4


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


def _stores(url: str) -> Iterator[Callable[[str], Leases]]:
    """The leases of a run with the given id, on one engine, as `email-sync run` would have it."""
    from emailsync.config.settings import DatabaseConfig, SyncConfig, UsersConfig
    from emailsync.store import db

    engine = db.connect(DatabaseConfig(url=url, connect_timeout=5, statement_timeout=30))
    users = UsersConfig("users", "id", "email", "last_sync", "UTC", "")
    sync = SyncConfig(3600, 100, 50, 10, 600, 5, "host", 300, 86400, 20, 3)
    yield lambda run_id: Leases(engine, users, sync, run_id)
    engine.dispose()


@pytest.fixture
def store_of(app_db: AppDb) -> Iterator[Callable[[str], Leases]]:
    yield from _stores(app_db.url)


@pytest.fixture
def pg_store_of(pg: AppDb) -> Iterator[Callable[[str], Leases]]:
    yield from _stores(pg.url)


@pytest.mark.parametrize("ok", [True, False], ids=["synced", "failed"])
def test_only_the_lease_holder_can_record_a_result(ok: bool, app_db: AppDb, store_of: Callable[[str], Leases]) -> None:
    app_db.add_users(1)
    mine = store_of("run-a")
    [claim] = mine.claim(mine.next_page(10))
    app_db.execute("UPDATE email_sync_user_state SET lease_owner = 'run-b'")  # our lease expired and was taken

    mine.record([Result(claim, ok=ok, duration_ms=5, error=None if ok else "HTTP 500")])

    assert app_db.last_syncs()[1] is None
    assert (app_db.state(1).lease_owner, app_db.state(1).failures, app_db.state(1).last_error) == ("run-b", 0, None)


def test_a_batch_of_the_largest_configurable_size_is_recorded(app_db: AppDb, store_of: Callable[[str], Leases]) -> None:
    app_db.add_users(10_000)  # sync.batch_size's maximum
    store = store_of("run-a")
    claims = store.claim(store.next_page(10_000))

    store.record([Result(claim, ok=False, duration_ms=5, error="HTTP 500") for claim in claims])

    assert len(claims) == 10_000
    assert app_db.rows("SELECT count(*) FROM email_sync_user_state WHERE failures = 1")[0][0] == 10_000


def test_users_another_run_took_from_our_page_are_skipped(app_db: AppDb, store_of: Callable[[str], Leases]) -> None:
    app_db.add_users(10)
    ours, theirs = DuePages(store_of("run-a"), 1000), store_of("run-b")
    first = ours.claim(2)  # reads the page of all 10
    taken = theirs.claim(theirs.next_page(5))

    rest = ours.claim(10)

    assert len(first) == 2 and len(taken) == 5 and len(rest) == 3
    assert {c.key for c in first + rest}.isdisjoint(c.key for c in taken)


def test_a_run_is_done_when_another_run_took_everyone_left(app_db: AppDb, store_of: Callable[[str], Leases]) -> None:
    app_db.add_users(10)
    ours, theirs = DuePages(store_of("run-a"), 5), store_of("run-b")
    assert len(ours.claim(1)) == 1  # our page: the 5 oldest
    theirs.claim(theirs.next_page(1000))  # the other run takes all 9 left, our page's 4 among them

    assert ours.claim(5) == [] and ours.done


def test_a_run_ends_when_every_due_user_is_locked_rather_than_spinning(
    pg: AppDb, pg_store_of: Callable[[str], Leases]
) -> None:
    """Rows locked by another transaction look due to a page but are skipped by every claim: a page that yields
    nobody ends the run (the next timer tick tries again) instead of reading the same page forever."""
    pg.add_users(10)
    ours = DuePages(pg_store_of("run-a"), 1000)
    with pg.engine.connect() as app, app.begin():
        app.execute(text("SELECT id FROM users FOR UPDATE"))

        assert ours.claim(5) == [] and ours.done
