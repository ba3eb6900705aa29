"""The database: connecting, email-sync's own schema, and the checks a run makes before touching anyone.

email-sync keeps its state in its own tables (``email_sync_*``) beside the app's users table, and writes nothing to
the app's tables but the last-sync column. PostgreSQL is primary; SQLite is the embedded single-host variant. The
few places where their SQL differs go through ``Dialect``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, inspect, make_url, text
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError

from emailsync.config import DatabaseConfig, UsersConfig
from emailsync.db_failures import classify, describe
from emailsync.errors import ConfigError, DatabaseUnavailable, SchemaError

SCHEMA_VERSION = 1
STATE = "email_sync_user_state"
RUNS = "email_sync_runs"
VERSION_TABLE = "email_sync_schema"
URL_FROM = "email_sync_url_from"  # an execution option: where the URL came from, for errors that name it

T = TypeVar("T")


@dataclass(frozen=True)
class Dialect:
    """The SQL that differs between PostgreSQL and SQLite: clocks, timestamps and row locking."""

    name: str

    @property
    def postgres(self) -> bool:
        return self.name == "postgresql"

    @property
    def timestamp(self) -> str:
        return "timestamptz" if self.postgres else "text"

    @property
    def now(self) -> str:
        """The database's clock, which decides for every host: skewed host clocks do not matter."""
        return "now()" if self.postgres else "strftime('%Y-%m-%d %H:%M:%f', 'now')"

    def shifted(self, seconds: str) -> str:
        """now() moved by ``seconds``, an SQL expression (a parameter or a column; negative for the past)."""
        if self.postgres:
            return f"(now() + make_interval(secs => {seconds}))"
        return f"strftime('%Y-%m-%d %H:%M:%f', 'now', printf('%+.3f seconds', {seconds}))"

    def older_than(self, column: str, seconds_param: str) -> str:
        """``column`` is NULL or older than now() minus a parameter, for a column in the app's own format."""
        if self.postgres:
            return f"({column} IS NULL OR {column} < now() - make_interval(secs => :{seconds_param}))"
        # The app's SQLite column may hold any ISO 8601 form; julianday() reads them all.
        return (
            f"({column} IS NULL OR julianday({column}) < julianday('now', printf('-%.3f seconds', :{seconds_param})))"
        )

    def age(self, column: str) -> str:
        """Seconds from ``column`` to now, by the database clock."""
        if self.postgres:
            return f"extract(epoch FROM now() - {column})"
        return f"((julianday('now') - julianday({column})) * 86400.0)"

    def among(self, value: str, subquery: str) -> str:
        """``value`` IN an uncorrelated subquery that runs once. PostgreSQL would plan ``IN (subquery)`` as a join,
        and while our state table's statistics lag behind its growth (a first run) it chose a nested loop that
        scanned the users table once per row: 100 ms per batch. ARRAY(...) keeps it a one-off."""
        if self.postgres:
            return f"{value} = ANY(ARRAY({subquery}))"
        return f"{value} IN ({subquery})"

    def quote(self, name: str) -> str:
        """A configured table or column name (already validated as [schema.]identifier), quoted."""
        return ".".join(f'"{part}"' for part in name.split("."))


def driver_url(url: str) -> str:
    """The URL with our driver spelled out: SQLAlchemy 2.1 would pick psycopg 3 for a bare postgresql://."""
    scheme, separator, rest = url.partition("://")
    return f"postgresql+psycopg2://{rest}" if scheme in ("postgres", "postgresql") and separator else url


def connect(config: DatabaseConfig) -> Engine:
    """An engine that never waits forever on a statement.

    No pool pre-ping: a run is one short process, and with_retry already retries a transaction whose connection
    turns out to be dead; a ping would cost a round trip before every transaction.
    """
    try:
        url = make_url(driver_url(config.url))
    except (ArgumentError, ValueError):  # their messages quote the URL, password included
        raise ConfigError(
            f"{config.url_from}: not a valid database URL (not shown here); "
            "percent-encode @ : / % in the user name and password"
        ) from None
    options = {URL_FROM: config.url_from}
    if url.drivername.startswith("postgresql"):
        engine = create_engine(
            url,
            pool_size=2,
            max_overflow=2,
            executemany_mode="values_plus_batch",
            # Nothing in the startup packet but what every pooler passes on: PgBouncer refuses `options`.
            connect_args={
                "connect_timeout": max(1, math.ceil(config.connect_timeout)),
                "application_name": "email-sync",
            },
            execution_options=options,
        )
        _settings_in_every_transaction(engine, config)
        return engine
    engine = create_engine(url, connect_args={"timeout": config.statement_timeout}, execution_options=options)

    # pysqlite opens transactions lazily and only for writes; a claim must read and write in one write
    # transaction, so take the write lock at BEGIN.
    @event.listens_for(engine, "connect")
    def _autocommit_driver(dbapi_connection: Any, _: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _settings_in_every_transaction(engine: Engine, config: DatabaseConfig) -> None:
    """Timeouts and the time zone, set for each transaction rather than the session: a transaction pooler
    (PgBouncer) hands every transaction a server connection of its own, whose session settings are someone
    else's. The time zone decides how a naive last_sync column is read and written; timestamptz needs none."""
    settings = {"timeout": str(int(config.statement_timeout * 1000)), "zone": config.timezone}

    @event.listens_for(engine, "begin")
    def _set_local(connection: Connection) -> None:
        connection.exec_driver_sql(
            "SELECT set_config('statement_timeout', %(timeout)s, true), set_config('lock_timeout', %(timeout)s, true),"
            " set_config('TimeZone', %(zone)s, true)",
            settings,
        )


def dialect_of(engine: Engine) -> Dialect:
    return Dialect(engine.dialect.name)


@contextmanager
def transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction whose database failures become the error they mean: ConfigError (exit 78) for what the
    operator must fix, DatabaseUnavailable (75) for what the next tick may not meet. See db_failures."""
    try:
        with engine.begin() as connection:
            yield connection
    except DBAPIError as error:
        failure = classify(error, engine.get_execution_options().get(URL_FROM, "database.url"))
        if failure is None:
            raise
        raise failure from None


RETRY_DELAYS = (0.0, 0.5, 1.5, 3.0)  # seconds before each try: rides out a dropped connection or a quick restart


def with_retry(engine: Engine, work: Callable[[Connection], T]) -> T:
    """Run ``work`` in a transaction, again on a fresh connection (after a pause) while the database is away.

    Safe for every caller: a failed transaction changed nothing; result writes are guarded by the lease, so
    repeating one whose commit landed unseen changes nothing; a claim whose commit landed unseen leaves leases
    that simply expire. About 5 s in all, well inside the watchdog.
    """
    for delay in RETRY_DELAYS[:-1]:
        if delay:
            time.sleep(delay)
        try:
            with transaction(engine) as connection:
                return work(connection)
        except DatabaseUnavailable:
            continue
    time.sleep(RETRY_DELAYS[-1])
    with transaction(engine) as connection:
        return work(connection)


def _schema_statements(d: Dialect) -> list[str]:
    ts = d.timestamp
    return [
        f"""CREATE TABLE IF NOT EXISTS {STATE} (
            user_id text PRIMARY KEY,
            lease_owner text,
            lease_until {ts},
            failures integer NOT NULL DEFAULT 0,
            next_attempt_at {ts},
            last_error text,
            last_success_at {ts},
            last_duration_ms integer,
            updated_at {ts}
        )""",
        f"CREATE INDEX IF NOT EXISTS {STATE}_leased ON {STATE} (lease_until) WHERE lease_owner IS NOT NULL",
        f"CREATE INDEX IF NOT EXISTS {STATE}_failing ON {STATE} (next_attempt_at) WHERE failures > 0",
        f"""CREATE TABLE IF NOT EXISTS {RUNS} (
            id text PRIMARY KEY,
            host text NOT NULL,
            pid integer NOT NULL,
            started_at {ts} NOT NULL,
            finished_at {ts},
            due integer,
            synced integer NOT NULL DEFAULT 0,
            failed integer NOT NULL DEFAULT 0,
            skipped integer NOT NULL DEFAULT 0,
            outcome text NOT NULL,
            error text
        )""",
        f"CREATE INDEX IF NOT EXISTS {RUNS}_started ON {RUNS} (started_at)",
    ]


def schema_version(connection: Connection) -> int | None:
    """Our schema's version, or None when our tables do not exist."""
    if not inspect(connection).has_table(VERSION_TABLE):
        return None
    version = connection.execute(text(f"SELECT max(version) FROM {VERSION_TABLE}")).scalar()
    return int(version) if version is not None else None


def migrate(engine: Engine) -> tuple[int | None, int]:
    """Create or upgrade email-sync's own tables; safe to run again and from several hosts at once."""
    d = dialect_of(engine)
    with transaction(engine) as connection:
        if d.postgres:
            # Two hosts migrating at once must not both create tables.
            connection.execute(text("SELECT pg_advisory_xact_lock(hashtext('email-sync migrate'))"))
        before = schema_version(connection)
        if before is not None and before > SCHEMA_VERSION:
            raise SchemaError(_newer_schema(before))
        if before != SCHEMA_VERSION:
            connection.execute(
                text(f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version integer NOT NULL, applied_at {d.timestamp})")
            )
            for statement in _schema_statements(d):
                connection.execute(text(statement))
            connection.execute(
                text(f"INSERT INTO {VERSION_TABLE} (version, applied_at) VALUES (:v, {d.now})"), {"v": SCHEMA_VERSION}
            )
    return before, SCHEMA_VERSION


def _newer_schema(version: int) -> str:
    return f"the database has email-sync schema v{version}, newer than this email-sync (v{SCHEMA_VERSION}): upgrade"


def app_index_ddl(dialect: Dialect, users: UsersConfig) -> str:
    """The index that lets a run find due users without scanning the app's table. email-sync never creates it
    itself: the app's schema is the app's."""
    table = users.table.rpartition(".")[2]
    name = dialect.quote(f"{table}_{users.last_sync_column}_email_sync_idx")
    on = f"{dialect.quote(users.table)} ({dialect.quote(users.last_sync_column)}"
    if dialect.postgres:
        return f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {on} ASC NULLS FIRST);"
    return f"CREATE INDEX IF NOT EXISTS {name} ON {on});"


def check_ready(engine: Engine, users: UsersConfig) -> None:
    """Preflight: reachable, writable, our schema current, the app's table and columns where configured."""
    d = dialect_of(engine)
    with transaction(engine) as connection:
        version = schema_version(connection)
        if version is None:
            raise SchemaError("email-sync's tables do not exist in this database: run `email-sync migrate`")
        if version < SCHEMA_VERSION:
            raise SchemaError(f"email-sync schema v{version} is older than v{SCHEMA_VERSION}: run `email-sync migrate`")
        if version > SCHEMA_VERSION:
            raise SchemaError(_newer_schema(version))
        if d.postgres and connection.execute(text("SHOW transaction_read_only")).scalar() == "on":
            raise ConfigError("database.url points at a read-only database (a replica?): it must be the primary")
        _check_users_table(connection, users)
        if users.filter:
            try:
                with connection.begin_nested():
                    connection.execute(
                        text(f"SELECT 1 FROM {d.quote(users.table)} AS u WHERE ({users.filter}) LIMIT 0")
                    )
            except (OperationalError, DBAPIError) as error:
                if isinstance(error, OperationalError) and error.connection_invalidated:
                    raise
                raise ConfigError(
                    f"users.filter is not a valid condition on {users.table}: {describe(error)}"
                ) from None


def _check_users_table(connection: Connection, users: UsersConfig) -> None:
    schema, _, table = users.table.rpartition(".")
    inspector = inspect(connection)
    if not inspector.has_table(table, schema=schema or None):
        raise SchemaError(f"users.table: table {users.table} does not exist in the database")
    columns = {column["name"] for column in inspector.get_columns(table, schema=schema or None)}
    for key in ("id_column", "email_column", "last_sync_column"):
        column = getattr(users, key)
        if column not in columns:
            raise SchemaError(f"users.{key}: column {column} does not exist in table {users.table}")
