"""What a refused database connection means: a configuration error naming where the URL came from, or a temporary
failure the next run may get past. The refusals are libpq's own words, wrapped as SQLAlchemy hands them over; the
SQLite file's own failures are real ones."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg2
import pytest
from sqlalchemy.exc import OperationalError, ProgrammingError

from emailsync.errors import EXIT_CONFIG, EXIT_TEMPFAIL, ConfigError, DatabaseUnavailable
from emailsync.store.db_failures import classify
from harness.backend import Backend
from tests.conftest import AppDb, CommandResult, EmailSync, _fresh_app_db


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


SECRET = "s3cr3t-Pa55word"


def run_with_url(email_sync: EmailSync, app: AppDb, backend: Backend, url: str, **database: object) -> CommandResult:
    email_sync.configure(AppDb(url, app.engine), backend, database={"connect_timeout": "2s", **database})
    result = email_sync("run")
    assert SECRET not in result.stdout + result.stderr
    assert not backend.sync_calls()
    return result


def test_a_sqlite_file_in_a_missing_directory_is_a_configuration_error(
    backend: Backend, email_sync: EmailSync, tmp_path: Path
) -> None:
    app = _fresh_app_db(f"sqlite:///{tmp_path / 'app.db'}", "sqlite")
    result = run_with_url(email_sync, app, backend, f"sqlite:///{tmp_path / 'no-such-dir' / 'app.db'}")

    result.assert_one_clear_error(EXIT_CONFIG, "database.url", "cannot be opened")


def test_a_locked_sqlite_database_is_temporary(backend: Backend, email_sync: EmailSync, tmp_path: Path) -> None:
    app = _fresh_app_db(f"sqlite:///{tmp_path / 'app.db'}", "sqlite")
    app.add_users(3)
    holder = sqlite3.connect(tmp_path / "app.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        result = run_with_url(email_sync, app, backend, app.url, statement_timeout="200ms")
    finally:
        holder.rollback()
        holder.close()

    result.assert_one_clear_error(EXIT_TEMPFAIL, "database unavailable", "locked")
