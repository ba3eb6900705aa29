"""The integration tier's fixtures: a PostgreSQL server of the session's own (a throwaway cluster, tests/postgres.py),
PgBouncer in front of it, a primary with its streaming standby, and the app's database on each. The tests of this
tier also start whole `email-sync` processes. tests/conftest.py holds what the tiers share."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from emailsync.store import db
from tests.conftest import AppDb, _fresh_app_db
from tests.pgbouncer import PgBouncer
from tests.postgres import Cluster
from tests.standby import Replicated

EXTERNAL_URL = os.environ.get("EMAIL_SYNC_TEST_DATABASE_URL")


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """The PostgreSQL server of this session: a throwaway cluster of its own (tests/postgres.py), or the server
    EMAIL_SYNC_TEST_DATABASE_URL names. It fails the run when it cannot be had: never a skip."""
    if EXTERNAL_URL:
        yield db.driver_url(EXTERNAL_URL)
        return
    try:
        cluster = Cluster().start()
    except RuntimeError as error:
        pytest.exit(f"no PostgreSQL for the tests (or set EMAIL_SYNC_TEST_DATABASE_URL): {error}", 3)
    try:
        yield db.driver_url(cluster.url())
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def pg_server_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database for this test session."""
    admin = create_engine(pg_admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    name = f"email_sync_test_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as error:
        pytest.exit(f"PostgreSQL is unreachable at {pg_admin_url} (set EMAIL_SYNC_TEST_DATABASE_URL): {error}", 3)
    yield make_url(pg_admin_url).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def pg(pg_server_url: str) -> Iterator[AppDb]:
    """The app's PostgreSQL database, emptied and migrated for this test."""
    app = _fresh_app_db(pg_server_url, "postgresql")
    yield app
    app.engine.dispose()


@pytest.fixture
def app_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AppDb]:
    """The app's database in this tier: PostgreSQL. The tests of tests/unit that take app_db (SQLite there) are
    imported by the modules here and run again on it. A test of whole processes that covers both databases asks for
    SQLite too, with ON_BOTH_DATABASES."""
    dialect = getattr(request, "param", "postgresql")
    url = f"sqlite:///{tmp_path / 'app.db'}" if dialect == "sqlite" else request.getfixturevalue("pg_server_url")
    app = _fresh_app_db(url, dialect)
    yield app
    app.engine.dispose()


ON_BOTH_DATABASES = pytest.mark.parametrize("app_db", ["postgresql", "sqlite"], indirect=True)


@pytest.fixture(scope="session", params=["transaction", "session"])
def pgbouncer(request: pytest.FixtureRequest, pg_server_url: str) -> Iterator[PgBouncer]:
    """Debian's PgBouncer with its default settings in front of the test PostgreSQL, in each pool mode."""
    with PgBouncer(pg_server_url, pool_mode=request.param) as bouncer:
        yield bouncer


@pytest.fixture
def pooled(pg: AppDb, pgbouncer: PgBouncer) -> AppDb:
    """The app's PostgreSQL database as email-sync reaches it through PgBouncer; the test itself goes direct."""
    return AppDb(pgbouncer.url(pg.engine.url.database or ""), pg.engine)


@pytest.fixture(scope="session")
def replicated() -> Iterator[Replicated]:
    """A primary and its streaming hot standby, built for this session (tests that kill one build their own)."""
    with Replicated() as pair:
        pair.primary.scalar("CREATE DATABASE app")
        yield pair


@pytest.fixture
def replicated_app(replicated: Replicated) -> Iterator[AppDb]:
    """The app's database on the primary, emptied and migrated, and replayed by the standby."""
    app = _fresh_app_db(replicated.primary.url("app"), "postgresql")
    replicated.caught_up()
    yield app
    app.engine.dispose()
