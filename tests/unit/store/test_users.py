"""Who is due, decided by the SQL that UsersTable builds: run here on an in-memory SQLite database with email-sync's
own schema, in milliseconds, without PostgreSQL (the integration suite runs the same SQL on both); and SQLite's text
timestamps, read and written in UTC."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import text

from emailsync.config.settings import UsersConfig
from emailsync.errors import EXIT_CONFIG, EXIT_OK
from emailsync.store.db import STATE, Dialect
from emailsync.store.schema import STEPS
from emailsync.store.users import UsersTable
from harness.backend import Backend
from tests.conftest import AppDb, EmailSync, _fresh_app_db

SQLITE = Dialect("sqlite")
HOUR = 3600.0


def users_table(filter: str = "", table: str = "users") -> UsersTable:
    return UsersTable(UsersConfig(table, "id", "email", "last_sync", "UTC", filter), SQLITE)


@pytest.fixture
def database() -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(":memory:")
    connection.execute("CREATE TABLE users (id integer PRIMARY KEY, email text, last_sync text, active integer)")
    for step in STEPS:
        for statement in step.statements(SQLITE):
            connection.execute(statement)
    yield connection
    connection.close()


def add(database: sqlite3.Connection, user: int, synced_ago: float | None, active: int = 1) -> None:
    at = None if synced_ago is None else database.execute(f"SELECT {SQLITE.shifted(str(-synced_ago))}").fetchone()[0]
    database.execute("INSERT INTO users VALUES (?, ?, ?, ?)", (user, f"u{user}@example.com", at, active))


def state(database: sqlite3.Connection, user: int, **columns: object) -> None:
    names = ", ".join(columns)
    values = ", ".join(str(value) for value in columns.values())
    database.execute(f"INSERT INTO {STATE} (user_id, {names}) VALUES ('{user}', {values})")


def due(database: sqlite3.Connection, users: UsersTable) -> list[int]:
    return [row[0] for row in database.execute(users.page_query, {"interval": HOUR, "limit": 100})]


def test_never_synced_and_stale_users_are_due_oldest_first(database: sqlite3.Connection) -> None:
    add(database, 1, 2 * HOUR)
    add(database, 2, None)
    add(database, 3, HOUR + 60)
    add(database, 4, HOUR - 60)

    assert due(database, users_table()) == [2, 1, 3]


def test_a_user_in_backoff_is_not_due(database: sqlite3.Connection) -> None:
    add(database, 1, None)
    add(database, 2, None)
    state(database, 1, failures=1, next_attempt_at=SQLITE.shifted("600"))
    state(database, 2, failures=1, next_attempt_at=SQLITE.shifted("-1"))

    assert due(database, users_table()) == [2]


def test_a_live_lease_hides_a_user_and_an_expired_one_does_not(database: sqlite3.Connection) -> None:
    add(database, 1, None)
    add(database, 2, None)
    state(database, 1, lease_owner="'run-a'", lease_until=SQLITE.shifted("600"))
    state(database, 2, lease_owner="'run-b'", lease_until=SQLITE.shifted("-1"))

    assert due(database, users_table()) == [2]


def test_the_filter_narrows_the_due_users(database: sqlite3.Connection) -> None:
    add(database, 1, None, active=1)
    add(database, 2, None, active=0)

    assert due(database, users_table(filter="u.active = 1")) == [1]


def test_configured_names_are_quoted_schema_and_table_apart() -> None:
    users = UsersTable(UsersConfig("app.Users", "Id", "Email", "LastSync", "UTC", ""), Dialect("postgresql"))

    assert users.table == '"app"."Users"'
    assert users.last_sync == 'u."LastSync"' and users.last_sync_target == '"LastSync"'
    assert 'ORDER BY u."LastSync" ASC NULLS FIRST' in users.page_query


def test_a_parked_user_is_not_due(database: sqlite3.Connection) -> None:
    add(database, 1, None)
    add(database, 2, None)
    state(database, 1, failures=0, parked_at="'2026-01-01 00:00:00'", parked_by="'quarantine'")

    assert due(database, users_table()) == [2]


def test_a_claim_reads_the_state_its_idempotency_key_is_made_of(database: sqlite3.Connection) -> None:
    database.execute("INSERT INTO users VALUES (1, 'u1@example.com', '2026-11-30 08:15:30.123', 1)")
    add(database, 2, None)
    state(database, 1, failures=2, results=5)

    seen = {row[0]: row[3:] for row in database.execute(users_table().find_query, {"who": "1"})}
    seen |= {row[0]: row[3:] for row in database.execute(users_table().find_query, {"who": "2"})}

    assert seen == {1: (2, "2026-11-30 08:15:30.123", 5), 2: (0, None, 0)}  # last_sync as stored; no state: zeros


@pytest.fixture
def sqlite_app(tmp_path: Path) -> Iterator[AppDb]:
    app = _fresh_app_db(f"sqlite:///{tmp_path / 'app.db'}", "sqlite")
    yield app
    app.engine.dispose()


def test_sqlite_text_timestamps_in_any_iso_form_are_read_as_utc_and_written_in_utc(
    sqlite_app: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    app = sqlite_app
    now = datetime.now(UTC)
    due, fresh = now - timedelta(seconds=HOUR + 120), now - timedelta(seconds=HOUR - 120)
    spellings = {
        1: due.strftime("%Y-%m-%d %H:%M:%S"),
        2: due.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        3: due.astimezone(ZoneInfo("Asia/Kolkata")).isoformat(),
        4: fresh.strftime("%Y-%m-%d %H:%M:%S"),
        5: fresh.strftime("%Y-%m-%dT%H:%M:%SZ"),
        6: fresh.astimezone(ZoneInfo("America/New_York")).isoformat(),
    }
    with app.engine.begin() as connection:
        connection.execute(
            text("INSERT INTO users (id, email, last_sync) VALUES (:id, :email, :at)"),
            [{"id": user, "email": f"user{user}@example.com", "at": at} for user, at in spellings.items()],
        )
    email_sync.configure(app, backend)

    before = datetime.now(UTC).replace(tzinfo=None)
    result = email_sync("run")
    after = datetime.now(UTC).replace(tzinfo=None)

    assert result.code == EXIT_OK, result.stdout
    assert called(backend) == {1, 2, 3}
    for user in (1, 2, 3):
        written = datetime.fromisoformat(app.last_syncs()[user])
        assert before - timedelta(seconds=1) <= written <= after + timedelta(seconds=1), written


def test_a_zone_other_than_utc_on_sqlite_is_a_configuration_error(
    sqlite_app: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    email_sync.configure(sqlite_app, backend, users={"last_sync_timezone": "Europe/Berlin"})

    result = email_sync("run")

    result.assert_one_clear_error(EXIT_CONFIG, "users.last_sync_timezone", "SQLite")


def called(backend: Backend) -> set[Any]:
    return {call.user_id for call in backend.sync_calls()}
