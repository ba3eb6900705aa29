"""Every way a connection to the database fails is one of two things: the operator must fix the configuration
(exit 78, naming the key, no secret shown) or the next timer tick may succeed (exit 75). Real servers refuse where
they can be made to; see emailsync/store/db_failures.py for the table."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import make_url

from emailsync.errors import EXIT_CONFIG, EXIT_TEMPFAIL
from harness.backend import Backend
from tests.conftest import AppDb, EmailSync, write_config
from tests.pgbouncer import PgBouncer
from tests.pgrefuser import RefusingServer
from tests.unit.store.test_db_failures import SECRET, run_with_url


def url_of(app: AppDb, **parts: object) -> str:
    url = make_url(app.url).set(**parts)  # type: ignore[arg-type]
    return url.render_as_string(hide_password=False)


@pytest.fixture
def role(pg: AppDb) -> Iterator[str]:
    name = "email_sync_test_role"
    pg.execute(f"DROP ROLE IF EXISTS {name}")
    pg.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{SECRET}'")
    yield name
    pg.execute(f"DROP OWNED BY {name}")
    pg.execute(f"DROP ROLE {name}")


def test_unknown_database_is_a_configuration_error(pg: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    result = run_with_url(email_sync, pg, backend, url_of(pg, database="no_such_db", password=SECRET))

    result.assert_one_clear_error(EXIT_CONFIG, "database.url", "database does not exist", "3D000")


def test_unknown_database_behind_pgbouncer_is_a_configuration_error(
    pooled: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    result = run_with_url(email_sync, pooled, backend, url_of(pooled, database="no_such_db"))

    result.assert_one_clear_error(EXIT_CONFIG, "database.url", "database does not exist")


def test_unknown_role_is_a_configuration_error(pg: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    result = run_with_url(email_sync, pg, backend, url_of(pg, username="no_such_role", password=SECRET))

    result.assert_one_clear_error(EXIT_CONFIG, "database.url", "role does not exist", "28000")


def test_a_server_asking_for_a_password_the_url_lacks_is_a_configuration_error(
    pg: AppDb, pg_server_url: str, role: str, backend: Backend, email_sync: EmailSync
) -> None:
    with PgBouncer(pg_server_url, "transaction", passwords={role: SECRET}) as bouncer:
        result = run_with_url(email_sync, pg, backend, bouncer.url(pg.engine.url.database or "", user=role))

    result.assert_one_clear_error(EXIT_CONFIG, "database.url", "password")


def test_the_error_names_the_file_the_url_came_from(
    pg: AppDb, backend: Backend, email_sync: EmailSync, tmp_path: Path
) -> None:
    url_file = tmp_path / "database-url"
    url_file.write_text(url_of(pg, database="no_such_db", password=SECRET))
    url_file.chmod(0o600)
    email_sync.configure(pg, backend)
    email_sync.sections["database"] = {"url_file": str(url_file)}
    write_config(email_sync.config_path, email_sync.sections)

    result = email_sync("run")

    result.assert_one_clear_error(EXIT_CONFIG, f"database.url_file {url_file}", "3D000")


@pytest.mark.parametrize("port", ["notaport", "99999999"])
def test_an_unparseable_port_is_a_configuration_error_that_shows_no_password(
    port: str, pg: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    result = run_with_url(email_sync, pg, backend, f"postgresql://app:{SECRET}@127.0.0.1:{port}/app")

    result.assert_one_clear_error(EXIT_CONFIG, "database.url")


def test_too_many_connections_is_temporary(pg: AppDb, role: str, backend: Backend, email_sync: EmailSync) -> None:
    pg.execute(f"ALTER ROLE {role} CONNECTION LIMIT 0")

    result = run_with_url(email_sync, pg, backend, url_of(pg, username=role, password=SECRET))

    result.assert_one_clear_error(EXIT_TEMPFAIL, "database unavailable", "too many connections")


@pytest.mark.parametrize(
    ("sqlstate", "message"),
    [
        ("57P03", "the database system is starting up"),
        ("57P03", "the database system is shutting down"),
        ("57P03", "the database system is not yet accepting connections"),
        ("53300", "sorry, too many clients already"),
        ("57P01", "terminating connection due to administrator command"),
    ],
)
def test_a_server_refusing_while_it_starts_or_stops_is_temporary(
    sqlstate: str, message: str, pg: AppDb, backend: Backend, email_sync: EmailSync
) -> None:
    with RefusingServer(sqlstate, message) as server:
        result = run_with_url(email_sync, pg, backend, f"postgresql://app:{SECRET}@127.0.0.1:{server.port}/app")

    result.assert_one_clear_error(EXIT_TEMPFAIL, "database unavailable", message)


def test_a_connect_timeout_is_temporary(pg: AppDb, backend: Backend, email_sync: EmailSync) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts (in the kernel), never answers
        port = silent.getsockname()[1]
        result = run_with_url(email_sync, pg, backend, f"postgresql://app:{SECRET}@127.0.0.1:{port}/app")

    result.assert_one_clear_error(EXIT_TEMPFAIL, "database unavailable", "timeout")


def test_a_role_without_privileges_on_the_users_table_is_a_configuration_error(
    pg: AppDb, role: str, backend: Backend, email_sync: EmailSync
) -> None:
    pg.add_users(2)
    pg.execute(f"GRANT ALL ON email_sync_user_state, email_sync_runs, email_sync_schema TO {role}")

    result = run_with_url(email_sync, pg, backend, url_of(pg, username=role, password=SECRET))

    result.assert_one_clear_error(EXIT_CONFIG, "database.url", "privilege", "42501")
