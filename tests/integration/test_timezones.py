"""Who is due, and what last_sync becomes, whatever the database's time zone: a timestamptz column needs nothing,
a naive timestamp column holds the app's convention (users.last_sync_timezone, UTC by default). Proven directly and
through PgBouncer in both pool modes, which hands a transaction whichever server connection is free."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.pool import NullPool

from emailsync.config.settings import DatabaseConfig, SyncConfig, UsersConfig
from emailsync.errors import EXIT_CONFIG, EXIT_OK
from emailsync.store import db, schema
from emailsync.store.leases import Leases
from emailsync.sync.backend import idempotency_key
from harness.backend import Backend
from tests.conftest import OUR_TABLES, AppDb, EmailSync
from tests.pgbouncer import PgBouncer
from tests.unit.store.test_users import called

ZONES = ("UTC", "America/New_York", "Asia/Kolkata")
HOUR = 3600


@pytest.fixture(scope="module")
def zone_databases(pg_admin_url: str) -> Iterator[dict[str, str]]:
    """A database per server time zone (ALTER DATABASE ... SET timezone), as an app's DBA may have set it: its URL."""
    admin = create_engine(pg_admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    names = {zone: f"email_sync_tz_{uuid.uuid4().hex[:10]}" for zone in ZONES}
    with admin.connect() as connection:
        for zone, name in names.items():
            connection.execute(text(f'CREATE DATABASE "{name}"'))
            connection.execute(text(f"ALTER DATABASE \"{name}\" SET timezone TO '{zone}'"))
    yield {
        zone: make_url(pg_admin_url).set(database=name).render_as_string(hide_password=False)
        for zone, name in names.items()
    }
    with admin.connect() as connection:
        for name in names.values():
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


ROUTES = ("direct", "transaction", "session")  # straight to PostgreSQL, or through PgBouncer in that pool mode


@pytest.fixture(scope="module")
def poolers(pg_server_url: str) -> Iterator[dict[str, PgBouncer]]:
    with (
        PgBouncer(pg_server_url, pool_mode="transaction") as transaction,
        PgBouncer(pg_server_url, pool_mode="session") as session,
    ):
        yield {"transaction": transaction, "session": session}


def app_in_zone(
    zone_databases: dict[str, str], poolers: dict[str, PgBouncer], zone: str, column: str, route: str
) -> AppDb:
    """The app's users table with a ``column``-typed last_sync in the database whose time zone is ``zone``;
    email-sync reaches it by ``route`` (direct or through PgBouncer), the test always directly."""
    direct = zone_databases[zone]
    name = make_url(direct).database or ""
    engine = create_engine(direct, poolclass=NullPool)
    with engine.begin() as connection:
        for table in ("users", *OUR_TABLES):
            connection.execute(text(f"DROP TABLE IF EXISTS {table}"))
        connection.execute(text(f"CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL, last_sync {column})"))
    schema.migrate(db.connect(DatabaseConfig(url=direct, connect_timeout=5, statement_timeout=30)))
    url = direct if route == "direct" else poolers[route].url(name)
    return AppDb(url, engine)


def database_now(app: AppDb) -> datetime:
    return app.scalar("SELECT now()").astimezone(UTC)


def as_written_by_the_app(moment: datetime, column: str, convention: str) -> datetime:
    """What an app stores for ``moment``: itself in a timestamptz column; its wall-clock time in the convention's
    zone, without a zone, in a timestamp column (an app on datetime.utcnow() writes UTC)."""
    return moment if column == "timestamptz" else moment.astimezone(ZoneInfo(convention)).replace(tzinfo=None)


def add_users_synced_at(app: AppDb, moments: dict[int, datetime | None], column: str, convention: str) -> None:
    with app.engine.begin() as connection:
        connection.execute(
            text("INSERT INTO users (id, email, last_sync) VALUES (:id, :email, :last_sync)"),
            [
                {
                    "id": user,
                    "email": f"user{user}@example.com",
                    "last_sync": None if moment is None else as_written_by_the_app(moment, column, convention),
                }
                for user, moment in moments.items()
            ],
        )


def assert_written_in_the_convention(
    app: AppDb, users: set[int], column: str, convention: str, before: datetime, after: datetime
) -> None:
    """Each synced user's last_sync is the sync's moment, to the second, in the app's convention."""
    low = as_written_by_the_app(before, column, convention) - timedelta(seconds=1)
    high = as_written_by_the_app(after, column, convention) + timedelta(seconds=1)
    written = {user: moment for user, moment in app.last_syncs().items() if user in users}
    assert written and all(low <= moment <= high for moment in written.values()), (low, written, high)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("zone", ZONES)
@pytest.mark.parametrize("column", ["timestamp", "timestamptz"])
def test_due_users_are_picked_exactly_and_last_sync_is_written_in_the_apps_convention(
    column: str,
    zone: str,
    route: str,
    zone_databases: dict[str, str],
    poolers: dict[str, PgBouncer],
    backend: Backend,
    email_sync: EmailSync,
) -> None:
    app = app_in_zone(zone_databases, poolers, zone, column, route)
    now = database_now(app)
    ages = {1: None, 2: 2 * HOUR, 3: HOUR + 60, 4: HOUR - 60, 5: HOUR // 2, 6: 60}
    add_users_synced_at(
        app, {user: None if age is None else now - timedelta(seconds=age) for user, age in ages.items()}, column, "UTC"
    )
    email_sync.configure(app, backend)

    before = database_now(app)
    result = email_sync("run")
    after = database_now(app)

    assert result.code == EXIT_OK, result.stdout
    assert called(backend) == {1, 2, 3}
    assert_written_in_the_convention(app, {1, 2, 3}, column, "UTC", before, after)
    app.engine.dispose()


@pytest.mark.parametrize("route", ROUTES)
def test_a_naive_column_in_the_apps_own_zone_is_read_and_written_in_that_zone(
    route: str, zone_databases: dict[str, str], poolers: dict[str, PgBouncer], backend: Backend, email_sync: EmailSync
) -> None:
    app = app_in_zone(zone_databases, poolers, "Asia/Kolkata", "timestamp", route)
    now = database_now(app)
    convention = "America/New_York"
    add_users_synced_at(
        app, {1: now - timedelta(seconds=HOUR + 60), 2: now - timedelta(seconds=HOUR - 60)}, "timestamp", convention
    )
    email_sync.configure(app, backend, users={"last_sync_timezone": convention})

    before = database_now(app)
    result = email_sync("run")
    after = database_now(app)

    assert result.code == EXIT_OK, result.stdout
    assert called(backend) == {1}
    assert_written_in_the_convention(app, {1}, "timestamp", convention, before, after)
    app.engine.dispose()


@pytest.mark.parametrize("route", ROUTES)
def test_a_window_across_a_daylight_saving_change_is_measured_in_real_time(
    route: str, zone_databases: dict[str, str], poolers: dict[str, PgBouncer], backend: Backend, email_sync: EmailSync
) -> None:
    """New York left daylight saving time on 2026-11-01: a naive local time from before it is four hours behind
    UTC, one from after it five. An interval reaching back across the change must use each moment's own offset."""
    app = app_in_zone(zone_databases, poolers, "UTC", "timestamp", route)
    convention = "America/New_York"
    boundary = datetime(2026, 10, 31, 12, 0, tzinfo=UTC)
    now = database_now(app)
    assert now > datetime(2026, 11, 2, tzinfo=UTC), "this test needs today's date to be past the change"
    minutes = timedelta(minutes=20)
    add_users_synced_at(
        app,
        {1: boundary - minutes, 2: boundary + minutes, 3: datetime(2026, 11, 1, 6, 30, tzinfo=UTC)},
        "timestamp",
        convention,
    )
    interval = int((now - boundary).total_seconds())
    email_sync.configure(app, backend, users={"last_sync_timezone": convention}, sync={"interval": interval})

    result = email_sync("run")

    assert result.code == EXIT_OK, result.stdout
    assert called(backend) == {1}
    app.engine.dispose()


@pytest.mark.parametrize("column", ["timestamp", "timestamptz"])
def test_the_idempotency_key_is_the_same_whatever_the_zones_and_the_pooler(
    column: str, zone_databases: dict[str, str], poolers: dict[str, PgBouncer]
) -> None:
    """A re-sync after a crash may reach the database by another route or in another session time zone: the
    claim's last_sync, and so the key, must not change with them (a timestamptz is read in the session's zone)."""
    moment = datetime(2026, 11, 30, 8, 15, 30, 123456, tzinfo=UTC)
    keys, seen = set(), set()
    for zone in ZONES:
        app = app_in_zone(zone_databases, poolers, zone, column, "direct")
        add_users_synced_at(app, {1: moment}, column, "UTC")
        app.engine.dispose()
        for route in ROUTES:
            url = app.url if route == "direct" else poolers[route].url(zone_databases[zone])
            for convention in ("UTC", "Asia/Kolkata"):
                settings = DatabaseConfig(url=url, connect_timeout=5, statement_timeout=30, timezone=convention)
                with db.connected(settings) as engine:
                    claim = Leases(engine, UsersConfig(), SyncConfig(), "probe").find("1")
                assert claim is not None
                seen.add(claim.last_sync)
                keys.add(idempotency_key(claim, "{}"))

    assert len(seen) == 1 and len(keys) == 1, seen
    assert seen.pop().endswith(".123456")  # to the microsecond the database keeps


def test_a_zone_postgresql_does_not_know_is_a_configuration_error(
    pg: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    pg.add_users(3)
    email_sync.configure(pg, backend, users={"last_sync_timezone": "Mars/Olympus_Mons"})

    result = email_sync("run")

    result.assert_one_clear_error(EXIT_CONFIG, "users.last_sync_timezone", "time zone")
    assert not backend.sync_calls()
