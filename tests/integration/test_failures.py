"""Failures that end a run early: one clear line, the documented exit code, and nobody's last_sync touched. Those
tests/unit/sync/test_cycle.py proves on SQLite run here again on PostgreSQL."""

from __future__ import annotations

from emailsync.errors import EXIT_CONFIG, EXIT_TEMPFAIL
from harness.backend import Backend, Behaviour
from tests.conftest import AppDb, EmailSync
from tests.unit.sync.test_cycle import (  # noqa: F401 -- tests/unit on SQLite, run here again on PostgreSQL
    assert_nobody_touched,
    test_backend_down_at_start_exits_75_touching_nobody,
    test_bad_token_for_everyone_exits_78_without_a_backoff_storm,
    test_invalid_filter_exits_78_naming_it,
    test_missing_column_exits_78_naming_it,
    test_missing_users_table_exits_78_naming_it,
    test_wrong_sync_path_exits_78_naming_the_url_and_the_key,
)


def test_method_not_allowed_on_the_endpoint_exits_78(pg: AppDb, email_sync: EmailSync) -> None:
    pg.add_users(5)
    with Backend() as backend:
        backend.set_default(Behaviour(status=405))
        email_sync.configure(pg, backend)

        result = email_sync("run")

    result.assert_one_clear_error(EXIT_CONFIG, "405", "backend.sync_path")
    assert_nobody_touched(pg)


def test_wrong_endpoint_with_a_single_due_user_still_exits_78(pg: AppDb, email_sync: EmailSync) -> None:
    pg.add_users(1)
    with Backend(sync_path="/elsewhere") as backend:
        email_sync.configure(pg, backend)

        result = email_sync("run")

    result.assert_one_clear_error(EXIT_CONFIG, "backend.sync_path")
    assert_nobody_touched(pg)


def test_one_users_404_among_successes_is_that_users_failure(
    pg: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    pg.add_users(6)
    backend.script(4, Behaviour(status=404, body=b'{"error": "no such mailbox"}'))
    email_sync.configure(pg, backend, backend={"concurrency": 1})

    result = email_sync("run")

    assert result.code == 0
    assert pg.synced_ids() == {1, 2, 3, 5, 6}
    assert pg.state(4).failures == 1


def test_first_users_404_then_successes_are_recorded_as_their_failures(
    pg: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    pg.add_users(5)
    backend.script(1, Behaviour(status=404))
    backend.script(2, Behaviour(status=404))
    email_sync.configure(pg, backend, backend={"concurrency": 1})

    result = email_sync("run")

    assert result.code == 0
    assert pg.synced_ids() == {3, 4, 5}
    assert pg.state(1).failures == 1 and pg.state(2).failures == 1


def test_circuit_breaker_stops_the_run_with_75_and_releases_the_rest(
    pg: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    pg.add_users(50)
    backend.set_default(Behaviour(status=500))
    email_sync.configure(pg, backend, sync={"circuit_breaker": 5, "batch_size": 10}, backend={"concurrency": 2})

    result = email_sync("run")

    result.assert_one_clear_error(EXIT_TEMPFAIL, "5 calls in a row failed", backend.base_url)
    calls = len(backend.sync_calls())
    assert calls < 50
    assert pg.leased() == []
    assert pg.scalar("SELECT count(*) FROM email_sync_user_state WHERE failures > 0") == calls
    assert pg.synced_ids() == set()
    [run] = pg.runs()
    assert (run.outcome, run.failed) == ("circuit_open", calls)


def test_unhealthy_backend_exits_75(pg: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    pg.add_users(1)
    backend.health_status = 503
    email_sync.configure(pg, backend)

    result = email_sync("run")

    result.assert_one_clear_error(EXIT_TEMPFAIL, "503")
    assert backend.sync_calls() == []


def test_wrong_health_path_exits_78(pg: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    email_sync.configure(pg, backend, backend={"health_path": "/healthz"})

    result = email_sync("run")

    result.assert_one_clear_error(EXIT_CONFIG, "backend.health_path")


def test_database_unreachable_exits_75_without_the_password(pg: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    email_sync.configure(pg, backend, database={"url": "postgresql://app:hunter2-secret@127.0.0.1:1/app"})

    result = email_sync("run")

    result.assert_one_clear_error(EXIT_TEMPFAIL, "database")
    assert "hunter2-secret" not in result.stdout + result.stderr
    assert backend.requests() == []


def test_missing_schema_exits_78_asking_for_migrate_when_migrating_is_manual(
    pg: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    pg.execute("DROP TABLE email_sync_schema")
    email_sync.configure(pg, backend, database={"migrate": "manual"})

    result = email_sync("run")

    result.assert_one_clear_error(EXIT_CONFIG, "email-sync migrate")


def test_migrate_creates_the_schema_and_is_idempotent(pg: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    pg.drop_our_tables()
    email_sync.configure(pg, backend)

    first, second = email_sync("migrate"), email_sync("migrate")

    assert (first.code, second.code) == (0, 0)
    assert first.event("schema_migrated")["from_version"] is None
    assert second.event("schema_migrated")["from_version"] == first.event("schema_migrated")["to_version"]
    assert email_sync("run").code == 0


def test_migrate_refuses_a_newer_schema(pg: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    pg.execute("INSERT INTO email_sync_schema (version) VALUES (999)")
    email_sync.configure(pg, backend)

    result = email_sync("migrate")

    result.assert_one_clear_error(EXIT_CONFIG, "v999", "upgrade")


def test_read_only_database_exits_78(pg: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    pg.add_users(1)
    database = pg.engine.url.database
    pg.execute(f'ALTER DATABASE "{database}" SET default_transaction_read_only = on')
    try:
        email_sync.configure(pg, backend)
        result = email_sync("run")
    finally:
        pg.execute(f'ALTER DATABASE "{database}" SET default_transaction_read_only = off')

    result.assert_one_clear_error(EXIT_CONFIG, "read-only")
    assert backend.sync_calls() == []


def test_a_bug_in_every_call_fails_each_user_and_logs_its_traceback_once(
    pg: AppDb, backend: Backend, email_sync: EmailSync, monkeypatch
) -> None:
    from emailsync.sync.backend import Client

    def broken(*_: object) -> None:
        raise RuntimeError("simulated bug in a call thread")

    pg.add_users(3)
    monkeypatch.setattr(Client, "sync", broken)
    email_sync.configure(pg, backend)

    result = email_sync("run")

    assert result.code == 0
    failed = [e for e in result.events if e["event"] == "user_failed"]
    assert sorted(e["user_id"] for e in failed) == [1, 2, 3]
    assert {(e["kind"], e["error"]) for e in failed} == {
        ("internal", "internal error: RuntimeError: simulated bug in a call thread")
    }
    [logged] = [e for e in failed if "exception" in e]
    assert "Traceback" in logged["exception"] and "simulated bug in a call thread" in logged["exception"]
    assert pg.synced_ids() == set() and pg.leased() == []
    assert pg.scalar("SELECT count(*) FROM email_sync_user_state WHERE failures = 1") == 3


def test_a_bug_failing_every_call_opens_the_circuit_naming_the_bug(
    pg: AppDb, backend: Backend, email_sync: EmailSync, monkeypatch
) -> None:
    from emailsync.sync.backend import Client

    def broken(*_: object) -> None:
        raise RuntimeError("simulated bug in a call thread")

    pg.add_users(10)
    monkeypatch.setattr(Client, "sync", broken)
    email_sync.configure(pg, backend, sync={"circuit_breaker": 4}, backend={"concurrency": 1})

    result = email_sync("run")

    assert result.code == EXIT_TEMPFAIL
    opened = result.event("circuit_open")["error"]
    assert "4 calls in a row failed" in opened and "a bug in email-sync" in opened and "looks down" not in opened
    assert (result.stdout + result.stderr).count("Traceback") == 1
    assert pg.synced_ids() == set() and pg.leased() == []


def test_migrate_works_before_the_backend_is_configured(pg: AppDb, email_sync: EmailSync) -> None:
    from tests.conftest import write_config

    write_config(email_sync.config_path, {"database": {"url": pg.url}})

    assert email_sync("migrate").code == 0
    email_sync("run").assert_one_clear_error(EXIT_CONFIG, "backend.base_url is required")


def test_backend_recovering_mid_cycle_syncs_everyone(pg: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    import threading

    pg.add_users(30)
    backend.set_default(Behaviour(status=503))
    email_sync.configure(
        pg, backend, backend={"concurrency": 2, "retries": 5, "retry_backoff": "100ms", "retry_backoff_max": "300ms"}
    )
    recovery = threading.Thread(target=lambda: backend.wait_for_sync_calls(4) and backend.set_default(Behaviour()))
    recovery.start()

    result = email_sync("run")
    recovery.join()

    assert result.code == 0
    assert pg.synced_ids() == set(range(1, 31))
    assert pg.scalar("SELECT count(*) FROM email_sync_user_state WHERE failures > 0") == 0


def test_backend_going_down_mid_cycle_loses_nothing_and_the_next_run_finishes(
    pg: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    import threading

    pg.add_users(40)
    backend.set_default(Behaviour(delay=0.05))
    email_sync.configure(pg, backend, backend={"concurrency": 2, "retries": 1}, sync={"circuit_breaker": 4})
    outage = threading.Thread(target=lambda: backend.wait_for_sync_calls(10) and backend.stop())
    outage.start()

    result = email_sync("run")
    outage.join()

    result.assert_one_clear_error(EXIT_TEMPFAIL, "in a row failed")
    answered = {call.user_id for call in backend.sync_calls()}
    assert pg.synced_ids() <= answered  # nobody marked synced without an answer
    assert pg.leased() == []
    backend.start()
    pg.execute("UPDATE email_sync_user_state SET next_attempt_at = NULL")  # their backoff elapses
    assert email_sync("run").code == 0
    assert pg.synced_ids() == set(range(1, 41))
