"""`email-sync run`: one cycle against PostgreSQL and a real HTTP backend, asserted on the database. The cycle's
specification in tests/unit (on SQLite there) runs here again, with what only a server shows: call threads, leases
held while calls are slow, rows locked by another transaction."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import text

from emailsync.store.leases import DuePages, Leases
from harness.backend import Backend, Behaviour
from tests.conftest import AppDb, EmailSync, leases_by_run
from tests.unit.store.test_leases import (  # noqa: F401 -- tests/unit on SQLite, run here again on PostgreSQL
    store_of,
    test_a_batch_of_the_largest_configurable_size_is_recorded,
    test_a_run_is_done_when_another_run_took_everyone_left,
    test_only_the_lease_holder_can_record_a_result,
    test_users_another_run_took_from_our_page_are_skipped,
)
from tests.unit.sync.test_cycle import (  # noqa: F401 -- tests/unit on SQLite, run here again on PostgreSQL
    test_a_claim_that_waits_too_long_for_its_call_is_given_back_uncalled,
    test_a_new_window_gets_a_new_idempotency_key,
    test_a_recorded_failure_gives_the_next_attempt_a_new_idempotency_key,
    test_a_reset_never_gives_a_retry_the_idempotency_key_of_an_earlier_attempt,
    test_a_second_run_finds_nobody_due,
    test_backoff_is_capped,
    test_consecutive_failures_double_the_backoff,
    test_expired_lease_of_a_crashed_run_is_taken_over,
    test_no_authorization_header_without_a_token,
    test_oldest_users_go_first_and_a_run_takes_at_most_max_users_per_run,
    test_recently_synced_users_are_not_due,
    test_run_syncs_every_due_user_once_and_records_the_run,
    test_success_clears_failures_backoff_and_error,
    test_sync_call_carries_user_email_max_emails_token_and_idempotency_key,
    test_user_failing_with_4xx_gets_backoff_and_error_and_keeps_last_sync,
    test_user_in_backoff_is_not_due_until_its_next_attempt,
    test_user_leased_by_a_live_run_is_left_alone,
    test_users_filter_limits_who_is_synced,
)


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


@pytest.fixture
def pg_store_of(pg: AppDb) -> Iterator[Callable[[str], Leases]]:
    yield from leases_by_run(pg.url)


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
