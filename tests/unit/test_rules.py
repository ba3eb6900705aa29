"""The pure rules of a run: how long a failed user waits, when the first answers condemn the configuration, and
what a refused database connection means. No database, no backend: milliseconds."""

from __future__ import annotations

import json
import uuid

import psycopg2
import pytest
from sqlalchemy.exc import OperationalError, ProgrammingError

from emailsync.config import values
from emailsync.config.settings import SyncConfig
from emailsync.errors import ConfigError, DatabaseUnavailable, EndpointError
from emailsync.model import Claim, Kind, Outcome, Result
from emailsync.store import schema
from emailsync.store.db_failures import classify
from emailsync.store.leases import failure_backoff
from emailsync.sync.backend import idempotency_key
from emailsync.sync.cycle import UNWRITTEN_FOR, Unwritten, Verdict

SYNC = SyncConfig(3600, 100, 50, 10, 600, 5, "host", 300, 86400, 20, 3)


@pytest.mark.parametrize(("failures", "ceiling"), [(0, 300), (1, 600), (3, 2400), (9, 86400), (500, 86400)])
def test_failure_backoff_doubles_up_to_its_cap_with_jitter_below_the_ceiling(failures: int, ceiling: float) -> None:
    waits = [failure_backoff(SYNC, failures) for _ in range(200)]

    assert all(ceiling / 2 <= wait <= ceiling for wait in waits)
    assert max(waits) - min(waits) > 0


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


def refused(message: str) -> OperationalError:
    return OperationalError("connect", {}, psycopg2.OperationalError(message))


@pytest.mark.parametrize(
    "message",
    [
        'connection to server at "db", port 5432 failed: FATAL:  password authentication failed for user "app"',
        'connection to server at "db", port 6432 failed: FATAL:  SASL authentication failed',
        'connection to server at "db", port 5432 failed: FATAL:  database "app" does not exist',
        'connection to server at "db", port 5432 failed: FATAL:  role "app" does not exist',
        'connection to server at "db", port 6432 failed: FATAL:  unsupported startup parameter: options',
        'connection to server at "db", port 5432 failed: FATAL:  no pg_hba.conf entry for host "10.0.0.1"',
        'could not translate host name "dbb" to address: Name or service not known',
        'invalid target_session_attrs value: "writable"',
        'connection to server at "db", port 5432 failed: server is not in hot standby mode',
    ],
)
def test_a_refusal_the_operator_must_fix_is_a_configuration_error_naming_the_source(message: str) -> None:
    failure = classify(refused(message), "database.url_file (/etc/email-sync/db)")

    assert isinstance(failure, ConfigError) and str(failure).startswith("database.url_file (/etc/email-sync/db): ")


@pytest.mark.parametrize(
    "message",
    [
        'connection to server at "db", port 5432 failed: FATAL:  the database system is starting up',
        'connection to server at "db", port 5432 failed: FATAL:  sorry, too many clients already',
        'connection to server at "db", port 5432 failed: Connection refused',
        'connection to server at "db", port 5432 failed: timeout expired',
        "server closed the connection unexpectedly",
    ],
)
def test_a_refusal_that_may_pass_is_temporary(message: str) -> None:
    assert isinstance(classify(refused(message), "database.url"), DatabaseUnavailable)


@pytest.mark.parametrize(
    "message",
    [
        "cannot execute UPDATE in a read-only transaction",
        'connection to server at "db1", port 5432 failed: Connection refused\n'
        'connection to server at "db2", port 5432 failed: session is read-only',
        'connection to server at "db2", port 5432 failed: server is in hot standby mode',
    ],
)
def test_reaching_only_a_hot_standby_is_temporary_and_says_what_to_write(message: str) -> None:
    failure = classify(refused(message), "credential database-url")

    assert isinstance(failure, DatabaseUnavailable)
    assert str(failure).startswith("credential database-url: the server is a read-only hot standby")
    assert "failover" in str(failure) and "target_session_attrs=read-write" in str(failure)
    assert "\n" not in str(failure)


def test_an_error_in_our_own_statement_is_a_bug_not_a_database_failure() -> None:
    error = ProgrammingError("SELECT", {}, psycopg2.ProgrammingError('syntax error at or near "FORM"'))

    assert classify(error, "database.url") is None


def test_the_migration_steps_are_numbered_one_to_the_latest() -> None:
    assert [step.version for step in schema.STEPS] == list(range(1, schema.SCHEMA_VERSION + 1))


def test_the_schema_version_that_version_prints_is_the_last_steps() -> None:
    import emailsync

    assert schema.STEPS[-1].version == emailsync.SCHEMA_VERSION


@pytest.mark.parametrize(("given", "parsed"), [([422, 410, 422], (410, 422)), ("410, 422", (410, 422)), ([], ())])
def test_quarantine_statuses_are_a_list_or_a_comma_separated_string(given: object, parsed: tuple[int, ...]) -> None:
    assert values.statuses(given) == parsed


@pytest.mark.parametrize("given", [[200], [600], "4xx", 422, [True]])
def test_anything_but_a_list_of_error_statuses_is_refused(given: object) -> None:
    with pytest.raises(values.Invalid, match="list of HTTP statuses from 400 to 599"):
        values.statuses(given)


def claim(user: int = 1, last_sync: str = "1796531533.660721", failures: int = 0, results: int = 0) -> Claim:
    return Claim(user, str(user), f"u{user}@example.com", failures, last_sync, results)


def key(of: Claim, max_emails: int = 50) -> str:
    return idempotency_key(of, json.dumps({"user_id": of.user_id, "email": of.email, "max_emails": max_emails}))


def test_the_same_work_gets_the_same_idempotency_key_whichever_run_sends_it() -> None:
    assert key(claim()) == key(claim())


def test_a_new_window_gets_a_new_idempotency_key() -> None:
    assert key(claim(last_sync="1796531533.660721", results=1)) != key(claim(last_sync="1796535140.002", results=1))


def test_a_retry_after_a_recorded_failure_gets_a_new_idempotency_key() -> None:
    assert key(claim(failures=0, results=3)) != key(claim(failures=1, results=4))


def test_a_reset_never_brings_back_an_earlier_idempotency_key() -> None:
    """A reset (or unpark) puts failures back to 0 in the same window: a backend replaying the answers it stored
    for the earlier keys would replay the failures the reset was meant to retry."""
    earlier = {key(claim(failures=n, results=n)) for n in range(3)}  # three failures in a row, then `reset`

    assert key(claim(failures=0, results=3)) not in earlier


def test_each_user_and_each_request_gets_its_own_idempotency_key() -> None:
    keys = {key(claim(user=1)), key(claim(user=2)), key(claim(user=1), max_emails=7), key(claim(last_sync=""))}

    assert len(keys) == 4


def test_the_idempotency_key_is_a_uuid_that_shows_nothing_of_the_user() -> None:
    given = key(claim(user=424242))

    assert uuid.UUID(given).version == 5 and str(uuid.UUID(given)) == given
    assert "424242" not in given and "example" not in given


def test_the_idempotency_key_of_a_piece_of_work_does_not_change_from_one_release_to_the_next() -> None:
    """A run killed before an upgrade and the first run after it must send the same key for the same work:
    changing how the key is derived is a change backend authors must hear about (docs/operations.md)."""
    assert key(claim()) == "528c9726-9c1d-525d-894a-d47a2475dc9a"


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
