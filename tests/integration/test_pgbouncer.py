"""email-sync behind a real PgBouncer with its default settings, in transaction and in session pooling: nothing it
needs may travel in the startup packet or live in session state that a transaction pooler hands to someone else."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, text

from emailsync.errors import EXIT_CONFIG, EXIT_NO, EXIT_OK, EXIT_TEMPFAIL
from emailsync.store import db, schema
from harness.backend import Backend
from tests.conftest import AppDb, EmailSync
from tests.integration.test_hosts import assert_each_synced_once, run_hosts
from tests.integration.test_operator import status_while_another_run_takes_a_lease
from tests.pgbouncer import PgBouncer


def test_migrate_through_pgbouncer_creates_the_schema(pooled: AppDb, email_sync: EmailSync) -> None:
    pooled.drop_our_tables()
    email_sync.configure(pooled, None)

    result = email_sync("migrate")

    assert result.code == EXIT_OK, result.stdout
    assert pooled.scalar(f"SELECT max(version) FROM {db.VERSION_TABLE}") == schema.SCHEMA_VERSION


def test_three_hosts_migrating_at_once_through_pgbouncer_create_the_schema_once(
    pooled: AppDb, email_sync: EmailSync
) -> None:
    """migrate serialises on a transaction-scoped advisory lock, which transaction pooling keeps intact."""
    pooled.drop_our_tables()
    email_sync.configure(pooled, None)

    processes = [email_sync.popen("migrate") for _ in range(3)]
    outputs = [process.communicate(timeout=120) for process in processes]

    assert [process.returncode for process in processes] == [EXIT_OK] * 3, outputs
    assert pooled.scalar(f"SELECT count(*) FROM {db.VERSION_TABLE}") == len(schema.STEPS)  # each step once


def test_a_run_through_pgbouncer_syncs_every_due_user(pooled: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    pooled.add_users(50, age=7200)
    email_sync.configure(pooled, backend)

    result = email_sync("run")

    assert result.code == EXIT_OK, result.stdout
    assert pooled.synced_ids() == set(range(1, 51))


def test_three_concurrent_runs_through_pgbouncer_sync_every_due_user_exactly_once(
    pooled: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    pooled.add_users(3_000)
    email_sync.configure(pooled, backend, backend={"concurrency": 8}, logging={"level": "warning"})

    run_hosts(email_sync, ["", "", ""])

    assert_each_synced_once(pooled, backend, 3_000, hosts=3)


@contextmanager
def users_table_locked(app: AppDb) -> Iterator[None]:
    """Another session holds an exclusive lock on the app's users table meanwhile."""
    with app.engine.connect() as connection:
        connection.execute(text("LOCK TABLE users IN ACCESS EXCLUSIVE MODE"))
        yield
        connection.rollback()


def test_statement_timeout_ends_a_statement_stuck_on_a_lock_through_pgbouncer(
    pooled: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    pooled.add_users(5, age=7200)
    email_sync.configure(pooled, backend, database={"statement_timeout": "1s"})

    with users_table_locked(pooled):
        result = email_sync.subprocess("run", timeout=120)

    result.assert_one_clear_error(EXIT_TEMPFAIL, "database unavailable", "statement_timeout")
    assert not backend.sync_calls()


def test_a_session_setting_never_outlives_its_transaction_in_the_pool(
    pooled: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    """Our timeouts and time zone are local to each transaction: the next client of the same server connection
    sees the database's own defaults. (PgBouncer would restore the time zone by itself, not the timeouts.)"""
    pooled.add_users(5, age=7200)
    email_sync.configure(pooled, backend, database={"statement_timeout": "7s"})
    assert email_sync("run").code == EXIT_OK

    assert settings_of_the_next_clients(pooled, "statement_timeout", "lock_timeout") == {("0", "0")}


def test_status_through_pgbouncer_reads_one_snapshot(pooled: AppDb, email_sync: EmailSync) -> None:
    """REPEATABLE READ travels in BEGIN, so a transaction pooler keeps it for the whole transaction."""
    report, leased_after = status_while_another_run_takes_a_lease(pooled, email_sync)

    assert sorted(leased_after) == ["1", "2"]
    assert report.leased == 1
    assert [user.user_id for user in report.leases] == ["1"]


def test_the_isolation_of_status_never_outlives_its_transaction_in_the_pool(
    pooled: AppDb, email_sync: EmailSync
) -> None:
    email_sync.configure(pooled, None)
    assert email_sync("status").code in (EXIT_OK, EXIT_NO)

    assert settings_of_the_next_clients(pooled, "transaction_isolation") == {("read committed",)}


def settings_of_the_next_clients(pooled: AppDb, *names: str) -> set[tuple[str, ...]]:
    """The values of PostgreSQL settings as four clients at once see them through the pooler: each has a server
    connection that an earlier client used."""
    after = create_engine(db.driver_url(pooled.url))
    seen: list[tuple[str, ...]] = []
    query = text("SELECT " + ", ".join(f"current_setting('{name}')" for name in names))

    def look() -> None:
        with after.connect() as connection:
            seen.append(tuple(connection.execute(query).one()))

    threads = [threading.Thread(target=look) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after.dispose()
    return set(seen)


def test_wrong_password_at_pgbouncers_password_check_is_a_configuration_error(
    pg: AppDb, pg_server_url: str, backend: Backend, email_sync: EmailSync
) -> None:
    role, password = "email_sync_pw_role", "rightPassw0rd"
    pg.execute(f"DROP ROLE IF EXISTS {role}")
    pg.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    try:
        with PgBouncer(pg_server_url, "transaction", passwords={role: password}) as bouncer:
            wrong = "wr0ng-Secret-Pass"
            url = bouncer.url(pg.engine.url.database or "", user=role, password=wrong)
            email_sync.configure(AppDb(url, pg.engine), backend)

            result = email_sync("run")
    finally:
        pg.execute(f"DROP ROLE IF EXISTS {role}")

    message = result.assert_one_clear_error(EXIT_CONFIG, "database.url", "password", "28P01")
    assert wrong not in result.stdout + result.stderr and wrong not in message


def test_a_startup_parameter_pgbouncer_refuses_is_a_configuration_error(
    pooled: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    email_sync.configure(AppDb(pooled.url + "?options=-c%20work_mem%3D4MB", pooled.engine), backend)

    result = email_sync("run")

    result.assert_one_clear_error(EXIT_CONFIG, "database.url", "startup parameter")
